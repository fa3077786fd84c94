"""LocalSandbox: host processes, NO isolation. Only used when asked for by name.

For trusted repositories and fast runner-logic tests. It keeps the protocol's
promises that do not need a container (fresh workspace copy, process-tree kill on
timeout, capped output, safe pull); it does not limit memory, pids or network, and
``set_network`` only records the request.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from . import procs
from .archive import extract_single, pack_path, safe_extract
from .base import DEFAULT_OUTPUT_LIMIT, ExecOptions, ExecResult, NetworkPolicy, Sandbox, SandboxSpec
from .copyout import CopyLimits
from .errors import SandboxError


class LocalSandbox(Sandbox):
    """Runs commands as host processes in a private copy of the workspace."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.sandbox_id = uuid.uuid4().hex[:12]
        self._root = Path(tempfile.mkdtemp(prefix=f"fsm-local-{self.sandbox_id}-"))
        self._closed = False
        if spec.workspace_src is not None and spec.workspace_mode == "bind":
            self.workspace = str(spec.workspace_src.resolve())
        else:
            ws = self._root / "workspace"
            if spec.workspace_src is not None:
                shutil.copytree(
                    spec.workspace_src,
                    ws,
                    symlinks=True,
                    ignore=shutil.ignore_patterns(*[p for p in spec.exclude if "/" not in p]),
                )
            else:
                ws.mkdir()
            self.workspace = str(ws)
        self.network = spec.network

    @property
    def llm_address(self) -> tuple[str, int] | None:
        """No network isolation here: stages reach the endpoint directly."""
        return self.spec.llm_endpoint

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "local",
            "sandbox_id": self.sandbox_id,
            "workspace": self.workspace,
            "isolation": "none",
            "network": self.network.value,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self._root, ignore_errors=True)

    def _path(self, path: str) -> Path:
        p = PurePosixPath(path)
        return Path(p) if p.is_absolute() else Path(self.workspace) / p

    def set_network(self, policy: NetworkPolicy) -> None:
        self._check_open()
        self.network = NetworkPolicy(policy)

    def _exec(self, command: str, opts: ExecOptions) -> ExecResult:
        marker = uuid.uuid4().hex
        full_env = {**os.environ, **dict(self.spec.env), **opts.env, procs.MARKER_VAR: marker}
        workdir = self._path(opts.cwd) if opts.cwd else Path(self.workspace)
        sink = opts.sink()
        lock = threading.Lock()
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                ["sh", "-c", command],
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            sink.close()
            raise SandboxError(f"cannot start local process: {exc}") from exc

        def pump(stream: IO[bytes], sid: int) -> None:
            for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
                with lock:
                    sink.write(sid, chunk)

        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True),
        ]
        for t in readers:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill_tree(proc.pid, marker)
            proc.wait()
        for t in readers:
            t.join(timeout=2)
        proc.stdout.close()
        proc.stderr.close()
        sink.close()
        code = proc.returncode
        exit_code = 128 - code if code < 0 else code  # signal N -> 128+N, like a shell
        return ExecResult(
            exit_code=exit_code,
            stdout=sink.text(1),
            stderr=sink.text(2),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            truncated=sink.truncated,
        )

    @staticmethod
    def _kill_tree(pgid: int, marker: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        # setsid escapes: anything of ours still carrying the exec's marker.
        needle = f"{procs.MARKER_VAR}={marker}".encode()
        for _ in range(20):
            found = False
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                try:
                    with open(f"/proc/{pid}/environ", "rb") as fh:
                        if needle not in fh.read().split(b"\0"):
                            continue
                    found = True
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    continue
            if not found:
                return

    def read_file(self, path: str, limit: int = DEFAULT_OUTPUT_LIMIT) -> bytes:
        self._check_open()
        p = self._path(path)
        if p.is_symlink() or not p.is_file():
            raise FileNotFoundError(str(p))
        with open(p, "rb") as fh:
            return fh.read(limit)

    @contextlib.contextmanager
    def open_file(self, path: str) -> Iterator[IO[bytes]]:
        self._check_open()
        p = self._path(path)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise FileNotFoundError(str(p)) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(str(p))
        with os.fdopen(fd, "rb") as fh:
            yield fh

    def push(self, host_path: Path, sandbox_path: str) -> None:
        self._check_open()
        dest = self._path(sandbox_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = Path(host_path)
        # Host files the runner chose, into this sandbox's own copy: links kept as links.
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest, follow_symlinks=False)

    def _pull(self, sandbox_path: str, host_path: Path, limits: CopyLimits) -> list[str]:
        src = self._path(sandbox_path)
        if not src.exists() and not src.is_symlink():
            raise FileNotFoundError(str(src))
        with pack_path(src, src.name, keep_special=True) as archive:
            if src.is_dir() and not src.is_symlink():
                return safe_extract(archive, host_path, strip_top=True, limits=limits)
            return extract_single(archive, host_path, limits)
