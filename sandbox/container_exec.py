"""Running a command in a DockerSandbox's container: ``docker exec`` over the engine API.

No CLI subprocess on the hot path. Output is read from the exec's hijacked socket with
a deadline, so a timeout is enforced by us, not by hoping the client times out, and
the command's whole process tree is killed (see ``procs.py``). OOM is told from a
timeout by the cgroup's oom_kill counter, not by guessing from exit code 137.
"""

from __future__ import annotations

import selectors
import struct
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from . import disk, procs
from .base import ExecOptions, ExecResult
from .engine import engine_errors
from .output import OutputSink

KILL_GRACE_S = 10.0
"""After a timeout kill, how long we still drain output before giving up on the stream."""


class ContainerExec:
    """The exec half of ``DockerSandbox`` (a mixin): it owns the container's lifecycle,
    this runs commands in it."""

    workspace: str
    _client: Any
    _container: Any
    _base_env: dict[str, str]
    _disk: disk.DiskWatch | None
    _init_pid: int
    _procs_file: Path | None
    _host_kill: bool
    _oom_file: Path | None
    _oom_baseline: int | None

    def _watch_processes(self) -> None:
        """Find the started container's cgroup from the host: for kills and the OOM counter."""
        with engine_errors("inspect container"):
            self._container.reload()
        self._init_pid = int(self._container.attrs["State"]["Pid"])
        self._procs_file = procs.host_cgroup_procs(self._init_pid)
        self._host_kill = procs.host_can_inspect(self._procs_file)
        self._oom_file = procs.host_memory_oom_file(self._init_pid)
        self._oom_baseline = procs.read_oom_kills(self._oom_file)

    def _exec(self, command: str, opts: ExecOptions) -> ExecResult:
        if self._disk is not None and self._disk.over:
            return _disk_refused(self._disk)
        marker = uuid.uuid4().hex
        full_env = {**self._base_env, **opts.env, procs.MARKER_VAR: marker}
        workdir = self._resolve_cwd(opts.cwd)
        api = self._client.api
        started = time.monotonic()
        with engine_errors("exec create"):
            exec_id = api.exec_create(
                str(self._container.id),
                ["sh", "-c", command],
                environment=[f"{k}={v}" for k, v in full_env.items()],
                workdir=workdir,
            )["Id"]
        sink = opts.sink()
        timed_out = False
        try:
            with engine_errors("exec start"):
                sock = api.exec_start(exec_id, socket=True)
            try:
                deadline = None if opts.timeout is None else started + opts.timeout
                finished = self._pump(sock, sink, deadline)
                if not finished:
                    timed_out = True
                    self._kill_marked(marker)
                    self._pump(sock, sink, time.monotonic() + KILL_GRACE_S)
            finally:
                _close_socket(sock)
        finally:
            sink.close()
        exit_code = self._exit_code(exec_id, timed_out)
        oom = self._oom_happened(exit_code)
        # Checked once more at the end: a fast writer can finish between two polls.
        over = self._disk is not None and self._disk.check()
        stderr = sink.text(2)
        if over and self._disk is not None:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + _disk_line(self._disk)
        return ExecResult(
            exit_code=exit_code,
            stdout=sink.text(1),
            stderr=stderr,
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            oom_killed=oom,
            truncated=sink.truncated,
            disk_exceeded=over,
        )

    def _resolve_cwd(self, cwd: str | None) -> str:
        if not cwd:
            return self.workspace
        path = PurePosixPath(cwd)
        return str(path if path.is_absolute() else PurePosixPath(self.workspace) / path)

    def _pump(self, sock: Any, sink: OutputSink, deadline: float | None) -> bool:
        """Read multiplexed frames until EOF (True) or the deadline passes (False)."""
        # A selector, never select.select(): that raises ValueError for a descriptor
        # >= 1024, which a busy runner reaches (issue 15 item 9).
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            return self._pump_frames(sock, sel, sink, deadline)

    def _pump_frames(
        self, sock: Any, sel: selectors.BaseSelector, sink: OutputSink, deadline: float | None
    ) -> bool:
        header = b""
        want = 8
        stream_id = 0
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not sel.select(wait):
                return False
            chunk = _recv(sock, want)
            if not chunk:
                return True
            if stream_id == 0:
                header += chunk
                if len(header) < 8:
                    want = 8 - len(header)
                    continue
                stream_id, size = struct.unpack(">BxxxL", header)
                header = b""
                want = size
                if size == 0:
                    stream_id, want = 0, 8
                continue
            sink.write(stream_id, chunk)
            want -= len(chunk)
            if want <= 0:
                stream_id, want = 0, 8

    def _kill_marked(self, marker: str) -> None:
        host_ok = self._host_kill and self._procs_file is not None
        if host_ok and procs.host_kill_marked(self._procs_file, marker) >= 0:  # type: ignore[arg-type]
            return
        with engine_errors("kill process tree"):
            self._container.exec_run(procs.in_container_killer(marker), privileged=True)

    def _exit_code(self, exec_id: str, timed_out: bool) -> int:
        with engine_errors("exec inspect"):
            for _ in range(50):
                info = self._client.api.exec_inspect(exec_id)
                if not info.get("Running"):
                    code = info.get("ExitCode")
                    return (
                        124
                        if timed_out and code in (None, 0)
                        else int(code if code is not None else -1)
                    )
                time.sleep(0.02)
        return 124 if timed_out else -1

    def _oom_happened(self, exit_code: int) -> bool:
        """Diff the cgroup's oom_kill counter; read inside only when the host cannot see it."""
        if self._oom_file is not None:
            now = procs.read_oom_kills(self._oom_file)
            before, self._oom_baseline = self._oom_baseline, now
            return now is not None and before is not None and now > before
        if exit_code != 137:
            return False
        with engine_errors("read oom counter"):
            out = self._container.exec_run(
                [
                    "sh",
                    "-c",
                    "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null",
                ]
            ).output.decode(errors="replace")
        now = procs.parse_oom_kills(out)
        before, self._oom_baseline = self._oom_baseline, now
        return now is not None and now > (before or 0)


def _disk_line(watch: disk.DiskWatch) -> str:
    return f"fsm-runner: {watch.message()}; the sandbox's processes were killed\n"


def _disk_refused(watch: disk.DiskWatch) -> ExecResult:
    """What an exec gets once the sandbox is over its disk budget: not run at all."""
    return ExecResult(
        exit_code=126,
        stdout="",
        stderr=f"fsm-runner: {watch.message()}; nothing more runs in this sandbox\n",
        duration_s=0.0,
        disk_exceeded=True,
    )


def _recv(sock: Any, n: int) -> bytes:
    n = min(n, 65536)
    if hasattr(sock, "recv"):
        return bytes(sock.recv(n))
    return bytes(sock.read(n) or b"")


def _close_socket(sock: Any) -> None:
    try:
        inner = getattr(sock, "_sock", None)
        if inner is not None:
            inner.close()
        sock.close()
    except OSError:
        pass
