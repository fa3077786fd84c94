"""``opencode serve`` inside a disposable sandbox: start, health, stop, inspect.

Where the server runs: a Docker sandbox holding a copy of the repo, on the ``llm``
network (it reaches the model relay and nothing else; a remote API gets ordinary egress
instead, as stages do). The binary and our config are mounted read-only, HOME is fresh,
and a random ``OPENCODE_SERVER_PASSWORD`` guards the API. The agent's bash tool therefore
runs in the container, never on the host. Requests go through ``client.py`` (one
``sandbox.exec`` each: the host cannot connect into an ``llm`` sandbox, by design).

Bounded: the start (``Bounds.startup_s``), each request (``request_s``), the whole run
(``total_s``), and a model that stopped answering (``model_down_s``). ``close()`` ends
every process the agent started, saves the server log into the run dir and removes the
sandbox, whatever happened before.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runner.agent import _manifest, binary
from runner.agent.client import HTTP_CLIENT, PORT, USERNAME, ExecHttpClient
from runner.agent.config import (
    AGENT_ROOT,
    BIN,
    ENV_API_KEY,
    ENV_BASE_URL,
    ETC,
    HOME,
    OFFLINE_ENV,
    PLUGIN_LOCK,
    REQ,
    Bounds,
    ModelRoute,
    config_text,
)
from runner.agent.transcript import ModelUnreachable, SandboxUnavailable, Transcript, run_prompt
from runner.errors import AgentError
from runner.runs.run_dir import RunDir
from runner.session.llm import host_endpoint, normalise_base_url
from sandbox import Limits, NetworkPolicy, Sandbox, SandboxError, SandboxSpec, open_sandbox

SERVE_LOG = f"{AGENT_ROOT}/serve.log"
MARKER = f"{AGENT_ROOT}/started.marker"
PRE_PIDS = f"{AGENT_ROOT}/pre.pids"
PID_FILE = f"{AGENT_ROOT}/serve.pid"
LOG_LIMIT = 4 * 1024 * 1024
AGENT_LIMITS = Limits(memory="3g", cpus=2.0, pids=1024)
"""OpenCode alone takes ~610 MB RSS and starts in ~5 s on two cores (notes/opencode.md)."""

# Kills every process that did not exist before the server started (the server, the
# agent's shells, anything they daemonised, whatever environment they cleared), but not
# the container's init and main process. Builtins only in the loop: a child we spawned
# would be a new pid and kill itself; zombies (our own exec's parent) are skipped.
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
    read -r stat < "$d/stat" 2>/dev/null || continue
    state=${stat##*) }
    [ "${state%% *}" = Z ] && continue
    kill -KILL "$p" 2>/dev/null && found=1
  done
  [ -z "$found" ] && exit 0
  i=$((i+1))
done
exit 1
"""


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
        raise ModelUnreachable(
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
        self._client: ExecHttpClient | None = None
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
            raise SandboxUnavailable(f"cannot open the agent sandbox: {exc}") from exc
        self._client = ExecHttpClient(
            self.sandbox, self.password, request_s=self.bounds.request_s, remaining=self.remaining
        )
        base_url = self._sandbox_base_url()
        self._prepare_home()
        self._launch(base_url)
        self._wait_healthy()

    def _sandbox_base_url(self) -> str:
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
            return self.sandbox.exec(command, env=env, timeout=timeout)
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
            out = self.client.raw("GET", "/global/health", timeout=2.0)
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

    @property
    def client(self) -> ExecHttpClient:
        if self._client is None:
            raise AgentError("the agent server is not started")
        return self._client

    def run_prompt(self, title: str, text: str) -> Transcript:
        """One prompt in a new session (see ``transcript.run_prompt``).

        Raises:
            ModelUnreachable: the model stopped answering for ``bounds.model_down_s``.
            AgentError: out of time, or the server failed.
        """
        return run_prompt(
            self.client,
            self.route,
            self.bounds,
            title=title,
            text=text,
            remaining=self.remaining,
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
        res = self._exec(f"exec sh {ETC}/kill_new.sh {PRE_PIDS}", timeout=30)
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
                with contextlib.suppress(AgentError):
                    self.stop_processes()
                log = self.server_log()
                if log:
                    self.run_dir.write_text(f"{self.log_rel}/opencode_server.log", log)
        finally:
            if self.sandbox is not None:
                self.sandbox.close()
            self._etc.cleanup()
