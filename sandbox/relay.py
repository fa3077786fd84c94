"""A TCP relay the runner owns: the one door from an ``llm``-policy sandbox to the model.

The sandbox sits on an internal network with no route off the host; the host firewall
on that bridge only admits the relay's port. The relay listens on the network's gateway
address and forwards each connection to the real model endpoint (often a server bound
to the host's 127.0.0.1, which a container could never reach directly).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

BUFFER = 65536


class TcpRelay:
    """Forward ``listen_host:<random port>`` to ``target`` until ``close()``."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server((listen_host, 0), reuse_port=False)
        self._server.settimeout(0.2)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="fsm-relay", daemon=True
        )
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._pipe, args=(client,), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        socks = [client, upstream]
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.5)
                for src in ready:
                    data = src.recv(BUFFER)
                    if not data:
                        return
                    (upstream if src is client else client).sendall(data)
        except OSError:
            return
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        self._accept_thread.join(timeout=2)
        for t in self._threads:
            t.join(timeout=2)
