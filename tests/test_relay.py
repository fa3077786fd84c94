"""The llm relay under a connection flood (issue 15 item 9).

It used to run one thread per connection and ``select()`` each pair: past fd 1024 that
raises ``ValueError: filedescriptor out of range`` and ~700 connections took the runner
down. Now: one thread, a selector, at most ``max_connections`` relayed at once (the rest
wait in the listen backlog), and it keeps serving afterwards.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from sandbox.relay import TcpRelay

FLOOD = 1100


class EchoServer:
    """A selector echo server on 127.0.0.1 (the relay's target in these tests)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._server.setblocking(False)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._server, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._server:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self._server.accept()
                        conn.setblocking(True)
                        self._sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        sock.sendall(data)
                        continue
                except OSError:
                    pass
                self._sel.unregister(sock)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()


@pytest.fixture
def echo_relay() -> Iterator[tuple[TcpRelay, EchoServer]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 4 * FLOOD:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is too low to flood the relay")
    server = EchoServer()
    relay = TcpRelay("127.0.0.1", server.address, max_connections=64)
    try:
        yield relay, server
    finally:
        relay.close()
        server.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _echo(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=20) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # half-close: the reply must still come back whole
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_relay_survives_a_flood_with_one_thread_and_bounded_connections(
    echo_relay: tuple[TcpRelay, EchoServer],
) -> None:
    relay, _server = echo_relay
    threads_before = threading.active_count()
    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD):  # non-blocking: past the backlog the kernel just retries SYNs
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(relay.address)
            flood.append(sock)
        # Descriptors past 1024 are in play: select() would raise for them.
        assert max(s.fileno() for s in flood) > 1024
        # The relay keeps working while flooded: the first accepted connections echo.
        assert _wait(lambda: relay.active == relay.max_connections)
        assert threading.active_count() <= threads_before + 1, "a thread per connection"
    finally:
        for sock in flood:
            sock.close()
    assert relay.peak == relay.max_connections  # never more at once
    # Queued and dropped connections drain; afterwards a big payload goes through whole.
    payload = bytes(range(256)) * 4096  # 1 MiB
    assert _echo(relay.address, payload) == payload
    assert _wait(lambda: relay.active == 0)


def test_queued_connections_are_served_when_others_close(
    echo_relay: tuple[TcpRelay, EchoServer],
) -> None:
    relay, _server = echo_relay
    held = [
        socket.create_connection(relay.address, timeout=10) for _ in range(relay.max_connections)
    ]
    try:
        assert _wait(lambda: relay.active == relay.max_connections)
        results: list[bytes] = []
        waiter = threading.Thread(target=lambda: results.append(_echo(relay.address, b"queued")))
        waiter.start()  # over the cap: waits in the backlog
        waiter.join(1.0)
        assert results == [] and relay.active == relay.max_connections
        held.pop().close()  # one slot frees up: the queued connection is relayed
        waiter.join(30)
        assert results == [b"queued"]
    finally:
        for sock in held:
            sock.close()


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
