"""The hostile suite (issue 5 acceptance): target repos whose contracts attack the host or cheat.

Each test builds a target repo in ``tmp_path``, runs it through ``runner_env`` like a user
(``setup -> rollout -> evaluate``) on the Docker backend, and asserts what the host, the
network and the run dir look like afterwards. The helpers here never run target code on
the host: :func:`docker_setup` pins the Docker backend and the copied workspace, and every
destructive command runs only after :func:`assert_in_docker` has seen a canary stay inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import runner_env
from runner.session.machine import EnvSession
from sandbox.engine import get_client
from sandbox.network import ensure_egress_network

RUN_ID_LABEL = "fsm-runner.run-id"


def docker_setup(repo: Path, **kwargs: Any) -> EnvSession:
    """``runner_env.setup`` on the Docker backend with a copied workspace: never local, never bind."""
    pinned = sorted(k for k in ("sandbox", "workspace") if k in kwargs)
    if pinned:
        raise AssertionError(f"hostile tests never choose {pinned}: they run in docker, copied")
    # These contracts write fixed scores on purpose while attacking something else; the
    # audit that flags fixed scores is exercised by test_audit.py, which turns it on.
    kwargs.setdefault("audit", "off")
    return runner_env.setup(repo, sandbox="docker", workspace="copy", **kwargs)


def sandbox_json(sess: EnvSession) -> dict[str, Any]:
    data = json.loads((sess.artifacts_dir / "sandbox.json").read_text())
    assert isinstance(data, dict)
    return data


def assert_in_docker(sess: EnvSession, *host_canaries: Path) -> None:
    """The session ran in a Docker container, and canaries written inside are absent on the host."""
    info = sandbox_json(sess)
    assert info["backend"] == "docker", info
    assert info["container_id"], info
    for canary in host_canaries:
        assert not canary.exists(), f"{canary} was written on the host: NOT isolated"


def labelled_containers(run_id: str) -> list[Any]:
    return list(
        get_client().containers.list(
            all=True, ignore_removed=True, filters={"label": f"{RUN_ID_LABEL}={run_id}"}
        )
    )


def files_containing(root: Path, needle: str | bytes) -> list[Path]:
    """Regular files under ``root`` whose bytes contain ``needle`` (links are not followed)."""
    raw = needle.encode() if isinstance(needle, str) else needle
    found: list[Path] = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if raw in path.read_bytes():
                found.append(path)
    return found


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> content hash (or link target) of everything under ``root``, links not followed."""
    out: dict[str, str] = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def file_digest(path: Path) -> str | None:
    """Hash of a host file, or None when it does not exist (absent must stay absent)."""
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_processes_with(token: str) -> list[int]:
    """Host pids whose command line holds ``token`` (container processes are visible here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def git_init(repo: Path) -> None:
    """Make ``repo`` a git checkout with one commit (hooks left as git created them)."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "target"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


# -- network ------------------------------------------------------------------------


class HostListener:
    """A TCP listener on the host's 0.0.0.0 that records every connection it accepts."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("0.0.0.0", 0))
        self._sock.listen(32)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.accepted: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append((str(addr[0]), int(addr[1])))
            conn.close()

    def __enter__(self) -> HostListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def host_addresses() -> dict[str, str]:
    """Addresses of THIS machine a container could try: bridge gateways and the host's own IPv4s.

    Keys name where an address comes from (``egress_gateway``, ``docker0``, ``eth0``...);
    each address appears once.
    """
    found: list[tuple[str, str]] = []
    egress = ensure_egress_network(get_client())
    egress.reload()
    for cfg in (egress.attrs.get("IPAM") or {}).get("Config") or []:
        if cfg.get("Gateway") and ":" not in cfg["Gateway"]:
            found.append(("egress_gateway", cfg["Gateway"]))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(
            ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
        ).stdout
        for iface, ip in re.findall(r"^\d+:\s+(\S+)\s+inet (\d+\.\d+\.\d+\.\d+)/", text, re.M):
            if not ip.startswith("127."):
                found.append((iface, ip))
    out: dict[str, str] = {}
    for label, ip in found:
        if ip not in out.values():
            out[label] = ip
    out["host.docker.internal"] = "host.docker.internal"
    return out


PROBE_PY = r"""
# Runs inside the sandbox: tries every target at once, prints what happened as one JSON line.
import json, os, socket, sys, threading, urllib.parse, urllib.request

port = int(sys.argv[1])
targets = [t for t in sys.argv[2].split(",") if t]
base = os.environ.get("OPENAI_API_BASE")
if base:
    targets.append(urllib.parse.urlsplit(base).hostname)  # the relay's gateway, another port
results = {}


def attempt(key, fn):
    try:
        results[key] = fn()
    except Exception as exc:
        results[key] = f"{type(exc).__name__}: {exc}"


def connect(host):
    socket.create_connection((host, port), timeout=2.0).close()
    return "connected"


jobs = [(f"connect {h}", lambda h=h: connect(h)) for h in targets]
jobs += [(f"dns {n}", lambda n=n: str(socket.getaddrinfo(n, 80)[0][4]))
         for n in ("example.com", "pypi.org")]
threads = [threading.Thread(target=attempt, args=job, daemon=True) for job in jobs]
for t in threads:
    t.start()
for t in threads:
    t.join(6)
out = {"targets": {h: results.get(f"connect {h}", "timed out") for h in targets}}
for n in ("example.com", "pypi.org"):
    out[f"dns {n}"] = results.get(f"dns {n}", "timed out")

# Control: the probe can connect at all (to a listener of its own on loopback).
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen(1)
attempt("control", lambda: socket.create_connection(own.getsockname(), timeout=2.0).close() or "connected")
out["control"] = results["control"]
out["interfaces"] = sorted(os.listdir("/sys/class/net"))
if base:
    body = json.dumps({"model": os.environ.get("OPENAI_MODEL", "m"),
                       "messages": [{"role": "user", "content": "ping"}]}).encode()
    req = urllib.request.Request(base + "/chat/completions", body,
                                 {"Content-Type": "application/json"})
    attempt("model", lambda: json.load(urllib.request.urlopen(req, timeout=10))["choices"][0]["message"]["content"])
    out["model"] = results["model"]
print("PROBE " + json.dumps(out))
"""


def probe_result(stdout: str) -> dict[str, Any]:
    """The JSON the probe printed on its ``PROBE`` line."""
    for line in stdout.splitlines():
        if line.startswith("PROBE "):
            data = json.loads(line[len("PROBE ") :])
            assert isinstance(data, dict)
            return data
    raise AssertionError(f"the probe printed no result:\n{stdout[-2000:]}")


# -- the host while a stage misbehaves ---------------------------------------------------


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _io_bytes() -> int:
    """Bytes this process moved through read/write calls so far (rchar + wchar)."""
    fields = dict(
        line.split(": ", 1)
        for line in Path("/proc/self/io").read_text().splitlines()
        if ": " in line
    )
    return int(fields.get("rchar", 0)) + int(fields.get("wchar", 0))


def _host_pid_count() -> int:
    return sum(1 for entry in os.scandir("/proc") if entry.name.isdigit())


class HostWatch:
    """While open, samples every ``interval`` seconds: how long the host takes to start a
    process, how many processes it has, and this runner process's memory and I/O."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.latencies: list[float] = []
        self.base_pids = self.max_pids = 0
        self.base_rss = self.max_rss = 0
        self.io_bytes = 0
        self._io_start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        started = time.monotonic()
        subprocess.run(["true"], check=True)
        self.latencies.append(time.monotonic() - started)
        self.max_pids = max(self.max_pids, _host_pid_count())
        self.max_rss = max(self.max_rss, _rss_bytes())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> HostWatch:
        self.base_pids = self.max_pids = _host_pid_count()
        self.base_rss = self.max_rss = _rss_bytes()
        self._io_start = _io_bytes()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()
        self.io_bytes = _io_bytes() - self._io_start

    @property
    def max_latency(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def rss_growth(self) -> int:
        return self.max_rss - self.base_rss

    @property
    def pid_growth(self) -> int:
        return self.max_pids - self.base_pids


def largest_file(root: Path) -> tuple[int, Path | None]:
    """Size and path of the biggest regular file under ``root`` (links not followed)."""
    best: tuple[int, Path | None] = (0, None)
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if size > best[0]:
                best = (size, path)
    return best
