"""``opencode serve`` inside a disposable sandbox, and the runner's HTTP client for it.

Where the server runs: a Docker sandbox holding a copy of the repo, on the ``llm``
network (it reaches the model relay and nothing else; a remote API gets ordinary egress
instead, as stages do). The binary and our config are mounted read-only, HOME is fresh,
and a random ``OPENCODE_SERVER_PASSWORD`` guards the API. The agent's bash tool therefore
runs in the container, never on the host.

How we talk to it: the server listens on the container's loopback and every request is
one ``sandbox.exec`` of a tiny stdlib client (``python3``, present in the default image).
Reaching the container's address from the host is not possible by design: the ``llm``
network's host firewall drops everything the sandbox sends to the host except the relay
port, replies to our own connections included (measured: a host->container connect
times out). Transient failures (server starting, connection refused) are retried with
tenacity; every request and the whole run are bounded (``config.Bounds``).
"""

from __future__ import annotations

import json
import secrets
import shlex
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from runner.agent import _manifest, binary
from runner.agent.config import (
    ENV_API_KEY,
    ENV_BASE_URL,
    OFFLINE_ENV,
    PLUGIN_LOCK,
    Bounds,
    ModelRoute,
    config_text,
)
from runner.artifacts import RunDir
from runner.errors import AgentError
from runner.llm import host_endpoint, normalise_base_url
from sandbox import Limits, NetworkPolicy, Sandbox, SandboxError, SandboxSpec, open_sandbox

AGENT_ROOT = "/fsm-agent"
ETC = f"{AGENT_ROOT}/etc"
BIN = f"{AGENT_ROOT}/bin"
HOME = f"{AGENT_ROOT}/home"
REQ = f"{AGENT_ROOT}/req"
SERVE_LOG = f"{AGENT_ROOT}/serve.log"
MARKER = f"{AGENT_ROOT}/started.marker"
PRE_PIDS = f"{AGENT_ROOT}/pre.pids"
PID_FILE = f"{AGENT_ROOT}/serve.pid"
PORT = 4096
USERNAME = "opencode"
RESPONSE_LIMIT = 32 * 1024 * 1024
LOG_LIMIT = 4 * 1024 * 1024
POLL_S = 0.5
AGENT_LIMITS = Limits(memory="3g", cpus=2.0, pids=1024)
"""OpenCode alone takes ~610 MB RSS and starts in ~5 s on two cores (notes/opencode.md)."""

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


# Kills every process that did not exist before the server started (the server, the
# agent's shells, anything they daemonised, whatever environment they cleared), but not
# the container's init and main process. Builtins only in the loop: a child we spawned
# would be a new pid and kill itself.
KILL_NEW = r"""
keep=" "
while read -r p; do keep="$keep$p "; done < "$1"
self=$$
i=0
while [ $i -lt 20 ]; do
  found=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$self" ] && continue
    case "$keep" in *" $p "*) continue ;; esac
    kill -KILL "$p" 2>/dev/null && found=1
  done
  [ -z "$found" ] && exit 0
  i=$((i+1))
done
exit 1
"""


class _Transient(Exception):
    """The server did not answer (starting, restarting): worth another try."""


@dataclass
class Transcript:
    """What one prompt produced: the session's messages, and how it ended."""

    session_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    """The last assistant message's error (model error, abort), if any."""
    duration_s: float = 0.0

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every tool part: ``{tool, status, input, output}`` (output/error tail-capped)."""
        calls: list[dict[str, Any]] = []
        for msg in self.messages:
            for part in msg.get("parts") or []:
                if not isinstance(part, dict) or part.get("type") != "tool":
                    continue
                state = part.get("state") or {}
                out = state.get("output") if "output" in state else state.get("error")
                calls.append(
                    {
                        "tool": part.get("tool"),
                        "status": state.get("status"),
                        "input": state.get("input"),
                        "output": str(out or "")[-4000:],
                    }
                )
        return calls

    def text(self) -> str:
        """The assistant's text parts, joined (its final explanation)."""
        chunks = []
        for msg in self.messages:
            if (msg.get("info") or {}).get("role") != "assistant":
                continue
            for part in msg.get("parts") or []:
                if isinstance(part, dict) and part.get("type") == "text":
                    chunks.append(str(part.get("text") or ""))
        return "\n".join(c for c in chunks if c)


def preflight(route: ModelRoute, timeout_s: float = 3.0) -> tuple[str, int] | None:
    """Fail fast when a host-local model endpoint does not accept connections.

    Returns the host endpoint the ``llm`` relay must forward to (None for a remote API).

    Raises:
        AgentError: nothing listens on the loopback endpoint.
    """
    endpoint = host_endpoint(route.base_url)
    if endpoint is None:
        return None
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            pass
    except OSError as exc:
        raise AgentError(
            f"model endpoint {route.base_url} is not reachable ({exc}); is the model server running?"
        ) from exc
    return endpoint


class AgentServer:
    """One sandbox with ``opencode serve`` in it. Use as a context manager; close is idempotent."""

    def __init__(
        self,
        repo_root: Path,
        route: ModelRoute,
        *,
        run_dir: RunDir,
        log_rel: str,
        bounds: Bounds,
        image: str | None = None,
        opencode_bin: Path | None = None,
    ) -> None:
        self.repo_root = repo_root
        self.route = route
        self.run_dir = run_dir
        self.log_rel = log_rel
        self.bounds = bounds
        self.image = image
        self.opencode_bin = opencode_bin or binary.require_opencode()
        self.password = secrets.token_urlsafe(24)
        self.run_dir.add_secret(self.password)
        if route.api_key:
            self.run_dir.add_secret(route.api_key)
        self.sandbox: Sandbox | None = None
        self.deadline = time.monotonic() + bounds.total_s
        self._etc = tempfile.TemporaryDirectory(prefix="fsm-agent-etc-")
        self._seq = 0
        self._stopped = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> AgentServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> None:
        """Open the sandbox, start the server, wait until it answers.

        Raises:
            AgentError: the model endpoint is down, the sandbox cannot start, or the
                server does not answer within ``bounds.startup_s``.
        """
        endpoint = preflight(self.route)
        etc = Path(self._etc.name)
        (etc / "opencode.json").write_text(config_text(self.route, self.bounds))
        (etc / "http_client.py").write_text(HTTP_CLIENT)
        (etc / "manifest.py").write_text(Path(_manifest.__file__).read_text())
        (etc / "kill_new.sh").write_text(KILL_NEW)
        self.run_dir.write_text(
            f"{self.log_rel}/opencode.json", config_text(self.route, self.bounds)
        )
        mounts = {str(self.opencode_bin): f"{BIN}/opencode", str(etc): ETC}
        rg = binary.find_ripgrep()
        if rg is not None:
            mounts[str(rg)] = f"{BIN}/rg"
        spec = SandboxSpec(
            workspace_src=self.repo_root,
            image=self.image,
            network=NetworkPolicy.LLM if endpoint else NetworkPolicy.EGRESS,
            llm_endpoint=endpoint,
            limits=AGENT_LIMITS,
            readonly_mounts=mounts,
            labels={"fsm-runner.run-id": self.run_dir.run_id, "fsm-runner.role": "agent"},
        )
        try:
            self.sandbox = open_sandbox(spec)
        except SandboxError as exc:
            raise AgentError(f"cannot open the agent sandbox: {exc}") from exc
        base_url = self._sandbox_base_url()
        self._prepare_home()
        self._launch(base_url)
        self._wait_healthy()

    def _sandbox_base_url(self) -> str:
        from urllib.parse import urlsplit, urlunsplit

        assert self.sandbox is not None
        base = normalise_base_url(self.route.base_url)
        address = self.sandbox.llm_address
        if address is None:
            return base
        parts = urlsplit(base)
        netloc = f"{address[0]}:{address[1]}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def _exec(self, command: str, *, timeout: float, env: dict[str, str] | None = None) -> Any:
        assert self.sandbox is not None
        try:
            return self.sandbox.exec(command, env=env, timeout=timeout, output_limit=RESPONSE_LIMIT)
        except SandboxError as exc:
            raise AgentError(f"agent sandbox failed: {exc}") from exc

    def _prepare_home(self) -> None:
        lock = shlex.quote(json.dumps(PLUGIN_LOCK))
        res = self._exec(
            f"mkdir -p {HOME}/.config/opencode/node_modules {REQ} && "
            f"printf '%s' {lock} > {HOME}/.config/opencode/package-lock.json && "
            f"sleep 0.01 && touch {MARKER} && "
            f"for d in /proc/[0-9]*; do echo ${{d#/proc/}}; done > {PRE_PIDS}",
            timeout=30,
        )
        if not res.ok:
            raise AgentError(f"cannot prepare the agent's HOME: {res.stderr[-500:]}")

    def server_env(self, base_url: str) -> dict[str, str]:
        gateway = self.sandbox.llm_address[0] if self.sandbox and self.sandbox.llm_address else ""
        no_proxy = ",".join(x for x in ("127.0.0.1", "localhost", gateway) if x)
        return {
            **OFFLINE_ENV,
            "HOME": HOME,
            "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "OPENCODE_CONFIG": f"{ETC}/opencode.json",
            "OPENCODE_SERVER_USERNAME": USERNAME,
            "OPENCODE_SERVER_PASSWORD": self.password,
            ENV_BASE_URL: base_url,
            ENV_API_KEY: self.route.api_key or "not-needed",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def _launch(self, base_url: str) -> None:
        assert self.sandbox is not None
        cmd = (
            f"cd {shlex.quote(self.sandbox.workspace)} && "
            f"nohup {BIN}/opencode serve --hostname 127.0.0.1 --port {PORT} "
            f"> {SERVE_LOG} 2>&1 < /dev/null & echo $! > {PID_FILE}"
        )
        res = self._exec(cmd, timeout=30, env=self.server_env(base_url))
        if not res.ok:
            raise AgentError(f"cannot start opencode serve: {res.stderr[-500:]}")

    def _wait_healthy(self) -> None:
        limit = time.monotonic() + min(self.bounds.startup_s, max(self.remaining(), 1.0))
        last = ""
        while time.monotonic() < limit:
            out = self._raw("GET", "/global/health", None, timeout=2.0)
            if out.get("status") == 200:
                return
            last = str(out.get("error") or out.get("body") or "")
            alive = self._exec(f"kill -0 $(cat {PID_FILE}) 2>/dev/null", timeout=10)
            if not alive.ok:
                raise AgentError(f"opencode serve exited at start-up: {self.server_log()[-2000:]}")
            time.sleep(0.25)
        raise AgentError(
            f"opencode serve did not answer within {self.bounds.startup_s:.0f}s ({last[:300]})"
        )

    def server_log(self) -> str:
        if self.sandbox is None:
            return ""
        try:
            return self.sandbox.read_file(SERVE_LOG, limit=LOG_LIMIT).decode(errors="replace")
        except (FileNotFoundError, SandboxError):
            return ""

    def stop_processes(self) -> None:
        """End the server and everything the agent started (before anything is taken back)."""
        if self.sandbox is None or self._stopped:
            return
        self._stopped = True
        # SIGTERM lets OpenCode flush its logs (~0.3 s); then nothing may keep writing
        # while the workspace is listed and pulled.
        self._exec(f"kill -TERM $(cat {PID_FILE}) 2>/dev/null; sleep 0.5", timeout=15)
        res = self._exec(f"sh {ETC}/kill_new.sh {PRE_PIDS}", timeout=30)
        if not res.ok:
            raise AgentError(f"could not stop the agent's processes: {res.stderr[-300:]}")

    def workspace_manifest(self, exclude: tuple[str, ...]) -> dict[str, list[Any]]:
        """The workspace's files now (see ``_manifest.py``).

        Raises:
            AgentError: the manifest script failed.
        """
        assert self.sandbox is not None
        args = " ".join(shlex.quote(x) for x in (self.sandbox.workspace, *exclude))
        res = self._exec(f"python3 {ETC}/manifest.py tree {args}", timeout=120)
        try:
            out: dict[str, list[Any]] = json.loads(res.stdout)
        except ValueError as exc:
            raise AgentError(f"cannot list the agent's workspace: {res.stderr[-500:]}") from exc
        return out

    def outside_changes(self) -> list[str]:
        """Files the agent changed outside the workspace (they go away with the sandbox)."""
        assert self.sandbox is not None
        prune = ("/proc", "/sys", "/dev", AGENT_ROOT, self.sandbox.workspace)
        args = " ".join(shlex.quote(x) for x in (MARKER, *prune))
        res = self._exec(f"python3 {ETC}/manifest.py newer {args}", timeout=120)
        try:
            found = json.loads(res.stdout)
        except ValueError:
            return []
        return [str(p) for p in found] if isinstance(found, list) else []

    def check_scripts(self, rels: list[str]) -> list[str]:
        """``bash -n`` (parse only) of stage scripts, in the sandbox: the errors found."""
        errors = []
        for rel in rels:
            res = self._exec(f"bash -n {shlex.quote(rel)}", timeout=10)
            if not res.ok:
                errors.append(f"{rel}: bash -n failed: {(res.stderr or res.stdout).strip()[-500:]}")
        return errors

    def close(self) -> None:
        """Save the server's log into the run dir, then remove the sandbox. Never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.sandbox is not None:
                try:
                    self.stop_processes()
                except AgentError:
                    pass
                log = self.server_log()
                if log:
                    self.run_dir.write_text(f"{self.log_rel}/opencode_server.log", log)
        finally:
            if self.sandbox is not None:
                self.sandbox.close()
            self._etc.cleanup()

    # -- HTTP --------------------------------------------------------------------------

    def _raw(self, method: str, path: str, body: Any, *, timeout: float) -> dict[str, Any]:
        """One request through the in-sandbox client: ``{status, body}`` or ``{status: 0, error}``."""
        assert self.sandbox is not None
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
        res = self._exec(cmd, timeout=timeout + 15, env=env)
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
        """JSON request with retries on transient failures, bounded by ``request_s``.

        Raises:
            AgentError: an HTTP error status, or no answer within the bound.
        """
        per_try = min(timeout or self.bounds.request_s, max(self.remaining(), 1.0))

        def once() -> Any:
            out = self._raw(method, path, body, timeout=per_try)
            status = int(out.get("status") or 0)
            if status == 0 or status in (502, 503, 504):
                raise _Transient(str(out.get("error") or out.get("body") or status))
            text = str(out.get("body") or "")
            if status >= 400:
                raise AgentError(f"opencode {method} {path} -> HTTP {status}: {text[:500]}")
            return json.loads(text) if text.strip() else None

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_delay(max(min(self.bounds.request_s, self.remaining()), 1.0)),
                wait=wait_exponential(multiplier=0.25, max=2.0),
                reraise=True,
            ):
                with attempt:
                    return once()
        except _Transient as exc:
            raise AgentError(f"opencode server did not answer {method} {path}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- prompts -------------------------------------------------------------------------

    def run_prompt(self, title: str, text: str) -> Transcript:
        """Send ``text`` to a new session and wait until the agent loop ends.

        Raises:
            AgentError: the model endpoint stays unreachable for ``model_down_s`` (OpenCode
                is retrying), or the run exceeds ``total_s``; the session is aborted first.
        """
        started = time.monotonic()
        session = self.request("POST", "/session", {"title": title})
        sid = str(session.get("id") or session.get("sessionID") or "")
        if not sid:
            raise AgentError(f"opencode returned no session id: {str(session)[:300]}")
        body = {
            "agent": "build",
            "model": self.route.body_model,
            "parts": [{"type": "text", "text": text}],
            "tools": {"question": False, "task": False, "webfetch": False},
        }
        self.request("POST", f"/session/{sid}/prompt_async", body)
        retry_since: float | None = None
        while True:
            time.sleep(POLL_S)
            if self.remaining() <= 0:
                self._abort(sid)
                raise AgentError(f"the agent did not finish within {self.bounds.total_s:.0f}s")
            status = (self.request("GET", "/session/status") or {}).get(sid) or {"type": "idle"}
            kind = status.get("type")
            if kind == "retry":
                retry_since = retry_since or time.monotonic()
                if time.monotonic() - retry_since > self.bounds.model_down_s:
                    self._abort(sid)
                    raise AgentError(
                        "model endpoint unreachable: OpenCode kept retrying for "
                        f"{self.bounds.model_down_s:.0f}s ({status.get('message', '')[:300]})"
                    )
                continue
            retry_since = None
            if kind == "idle":
                messages = self.request("GET", f"/session/{sid}/message") or []
                if _finished(messages):
                    break
        transcript = Transcript(sid, messages, duration_s=time.monotonic() - started)
        transcript.error = _last_error(messages)
        return transcript

    def _abort(self, sid: str) -> None:
        try:
            self.request("POST", f"/session/{sid}/abort", {}, timeout=5.0)
        except AgentError:
            pass


def _finished(messages: list[dict[str, Any]]) -> bool:
    if not messages:
        return False
    info = messages[-1].get("info") or {}
    if info.get("role") != "assistant":
        return False
    return bool((info.get("time") or {}).get("completed") or info.get("error"))


def _last_error(messages: list[dict[str, Any]]) -> str | None:
    for msg in reversed(messages):
        info = msg.get("info") or {}
        if info.get("role") == "assistant":
            err = info.get("error")
            if not err:
                return None
            data = err.get("data") or {}
            return f"{err.get('name', 'error')}: {data.get('message', '')}".strip()
    return None
