"""The "model" this tiny repository ships: a deliberately buggy adder (stdlib only).

Asked "What is A + B?", it answers A + A: it is right exactly when A == B. It is served
over an OpenAI-compatible HTTP API, so the contract's rollout talks to it the way it
would talk to a real model server::

    python3 tiny_model.py --port 0 --port-file .aider_fsm/tiny_model.port

``--port 0`` picks a free port; the port is written to ``--port-file`` once the server
listens (that is how ``deploy_setup.sh`` knows it is up). Only 127.0.0.1 is served.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "tiny-adder"
QUESTION = re.compile(r"What is (-?\d+) \+ (-?\d+)\?")


def answer(question: str) -> str:
    """The model: the sum of the first number with itself (the second one is ignored)."""
    match = QUESTION.search(question)
    if match is None:
        return "I can only add two numbers."
    first = int(match.group(1))
    return str(first + first)


class Handler(BaseHTTPRequestHandler):
    served = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        if self.path == "/health":
            self.reply(200, {"ok": True, "model": MODEL_ID, "completions_served": Handler.served})
        elif self.path.rstrip("/") == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.reply(404, {"error": {"message": f"no route {self.path}"}})
            return
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
        try:
            body = json.loads(self.rfile.read(length))
            question = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            self.reply(400, {"error": {"message": "expected messages with a user message"}})
            return
        with Handler.lock:
            Handler.served += 1
        text = answer(str(question))
        self.reply(
            200,
            {
                "id": f"tiny-{Handler.served}",
                "object": "chat.completion",
                "model": body.get("model") or MODEL_ID,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    tmp = f"{args.port_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{server.server_address[1]}\n")
    os.replace(tmp, args.port_file)  # readers never see a half-written port
    print(f"tiny model listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
