"""The runner's HTTP client for ``opencode serve``, one ``sandbox.exec`` per request.

The server listens on the agent container's loopback; a tiny stdlib client
(:data:`HTTP_CLIENT`, run with ``python3``, which the default image has) makes each
request from inside. Reaching the container's address from the host is not possible by
design: the ``llm`` network's host firewall drops everything the sandbox sends to the
host except the relay port, replies to our own connections included (measured: a
host->container connect times out). Request bodies are pushed as files (no argv or
environment size limits). Transient failures (server starting, connection refused, 5xx
from a proxy) are retried with tenacity; each request and the retries are bounded.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from runner.agent.config import ETC, REQ
from runner.errors import AgentError
from sandbox import Sandbox, SandboxError

PORT = 4096
USERNAME = "opencode"
RESPONSE_LIMIT = 32 * 1024 * 1024
EXEC_SLACK_S = 15.0
"""Extra time the exec gets over the request's own timeout (process start, output)."""

# The client runs inside the sandbox. No proxy: the server is on the container's loopback.
HTTP_CLIENT = r"""
import base64, json, os, sys, urllib.error, urllib.request
method, path, body_file, timeout = sys.argv[1:5]
data = open(body_file, "rb").read() if body_file != "-" else None
url = "http://127.0.0.1:%s%s" % (os.environ["FSM_OC_PORT"], path)
req = urllib.request.Request(url, data=data, method=method)
req.add_header("Content-Type", "application/json")
cred = ("%s:%s" % (os.environ["FSM_OC_USER"], os.environ["FSM_OC_PASSWORD"])).encode()
req.add_header("Authorization", "Basic " + base64.b64encode(cred).decode())
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(req, timeout=float(timeout)) as resp:
        out = {"status": resp.status, "body": resp.read().decode("utf-8", "replace")}
except urllib.error.HTTPError as exc:
    out = {"status": exc.code, "body": exc.read().decode("utf-8", "replace")}
except Exception as exc:
    out = {"status": 0, "error": "%s: %s" % (type(exc).__name__, exc)}
sys.stdout.write(json.dumps(out))
"""


class _Transient(Exception):
    """The server did not answer (starting, restarting): worth another try."""


class ExecHttpClient:
    """JSON requests to the server inside ``sandbox``, with Basic auth and bounded retries.

    ``remaining`` returns the seconds left of the caller's overall budget: no request
    (retries included) outlives it by more than one per-request timeout.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        password: str,
        *,
        request_s: float,
        remaining: Callable[[], float],
    ) -> None:
        self.sandbox = sandbox
        self.password = password
        self.request_s = request_s
        self.remaining = remaining
        self._seq = 0

    def _exec(self, command: str, *, timeout: float, env: dict[str, str]) -> Any:
        try:
            return self.sandbox.exec(command, env=env, timeout=timeout, output_limit=RESPONSE_LIMIT)
        except SandboxError as exc:
            raise AgentError(f"agent sandbox failed: {exc}") from exc

    def raw(self, method: str, path: str, body: Any = None, *, timeout: float) -> dict[str, Any]:
        """One try: ``{status, body}``, or ``{status: 0, error}`` when nothing answered.

        Raises:
            AgentError: the sandbox itself failed.
        """
        body_arg = "-"
        if body is not None:
            self._seq += 1
            body_arg = f"{REQ}/{self._seq}.json"
            with tempfile.TemporaryDirectory(prefix="fsm-agent-req-") as tmp:
                host = Path(tmp) / "body.json"
                host.write_text(json.dumps(body))
                try:
                    self.sandbox.push(host, body_arg)
                except SandboxError as exc:
                    raise AgentError(f"agent sandbox failed: {exc}") from exc
        cmd = (
            f"python3 {ETC}/http_client.py {shlex.quote(method)} {shlex.quote(path)} "
            f"{shlex.quote(body_arg)} {timeout:.1f}"
        )
        env = {"FSM_OC_PORT": str(PORT), "FSM_OC_USER": USERNAME, "FSM_OC_PASSWORD": self.password}
        res = self._exec(cmd, timeout=timeout + EXEC_SLACK_S, env=env)
        if res.timed_out:
            return {"status": 0, "error": f"request {method} {path} timed out"}
        try:
            out: dict[str, Any] = json.loads(res.stdout)
        except ValueError:
            return {
                "status": 0,
                "error": f"client failed (rc={res.exit_code}): {res.stderr[-500:]}",
            }
        return out

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """The decoded JSON answer (None for an empty body), retrying transient failures.

        Raises:
            AgentError: an HTTP error status, or no answer within ``request_s``.
        """
        per_try = min(timeout or self.request_s, max(self.remaining(), 1.0))

        def once() -> Any:
            out = self.raw(method, path, body, timeout=per_try)
            status = int(out.get("status") or 0)
            if status == 0 or status in (502, 503, 504):
                raise _Transient(str(out.get("error") or out.get("body") or status))
            text = str(out.get("body") or "")
            if status >= 400:
                raise AgentError(f"opencode {method} {path} -> HTTP {status}: {text[:500]}")
            try:
                return json.loads(text) if text.strip() else None
            except ValueError as exc:
                raise AgentError(f"opencode {method} {path}: not JSON: {text[:200]!r}") from exc

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_delay(max(min(self.request_s, self.remaining()), 1.0)),
                wait=wait_exponential(multiplier=0.25, max=2.0),
                reraise=True,
            ):
                with attempt:
                    return once()
        except _Transient as exc:
            raise AgentError(f"opencode server did not answer {method} {path}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover
