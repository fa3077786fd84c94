"""DockerSandbox: one hardened container per sandbox, reused by every exec.

The container runs an init (tini, ``init=True``: no zombies, a 0.1 s stop) and a no-op
``sleep infinity``; each command is a ``docker exec`` through the engine API (no CLI
subprocess on the hot path). Output is read from the exec's hijacked socket with a
deadline, so a timeout is enforced by us, not by hoping the client times out, and the
command's whole process tree is killed (see ``procs.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import struct
import time
import uuid
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import IO, Any

import docker
import docker.errors
from docker.types import Mount, Ulimit

from . import disk, firewall, procs
from .archive import pack_dir
from .base import DEFAULT_OUTPUT_LIMIT, ExecResult, NetworkPolicy, SandboxSpec
from .container_files import ContainerFiles
from .copyout import CopyLimits
from .dns import resolv_conf_file
from .engine import LABEL_SANDBOX, creator_labels, engine_errors, get_client
from .errors import SandboxClosed, SandboxError
from .images import cache_dir, ensure_image
from .lifecycle import (
    Background,
    can_fill_volumes,
    can_prepare,
    create_key,
    engine_is_local,
    removing_in_background,
    start_removal,
    wait_for_removals,
)
from .network import NetworkSwitch
from .output import OutputCallback, OutputSink
from .volume_fill import copy_tree

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_ENV = (
    "PIP_CERT",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# The capabilities a root `apt-get install` needs (notes/docker.md §5); everything else dropped.
CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID"]

KILL_GRACE_S = 10.0
"""After a timeout kill, how long we still drain output before giving up on the stream."""

_open_sandboxes: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()


def _close_leftovers() -> None:
    for sandbox in list(_open_sandboxes):
        sandbox.close(wait=True)
    wait_for_removals()


atexit.register(_close_leftovers)


def open_sandbox_count() -> int:
    """Sandboxes of this process not yet removed (the CLI defers stop signals meanwhile)."""
    return len(_open_sandboxes)


class DockerSandbox:
    """A disposable hardened container. Open with ``open_sandbox(spec)``."""

    def __init__(self, spec: SandboxSpec, *, progress: Any = None, prepare: bool = False) -> None:
        """Open a sandbox for ``spec``.

        ``prepare=True`` (the warm pool, ``pool.py``): only create and start the container
        with an empty workspace volume; ``adopt()`` later gives it its workspace and
        network. The container is created by the same ``_create`` either way.
        """
        self.spec = spec
        self.workspace = spec.workspace
        self.sandbox_id = uuid.uuid4().hex[:12]
        self.prepared = prepare
        """Created ahead by a warm pool (recorded in ``describe()``)."""
        self._adopted = False
        self._client = get_client()
        self._closed = False
        self._container: Any = None
        self._volume_path: Path | None = None
        """Host mountpoint of the workspace volume: outputs are read there, link-safely."""
        self.image = ensure_image(spec.image, progress=progress)
        labels = {**creator_labels("container", self.sandbox_id), **dict(spec.labels)}
        # The workspace volume gets session labels too: gc finds it if its container is gone.
        self._volume_labels = {**labels, **creator_labels("volume", self.sandbox_id)}
        self._base_env = self._container_env()
        copy_src = spec.workspace_src if spec.workspace_mode == "copy" else None
        if copy_src is not None and not copy_src.is_dir():
            raise SandboxError(f"workspace source {copy_src} is not a directory")
        try:
            if prepare:
                if not can_prepare(spec):
                    raise SandboxError("only a copied workspace in a fillable volume is prepared")
                self._container = self._create(labels, workspace_volume=True)
                _open_sandboxes.add(self)
                with engine_errors("start container"):
                    self._container.start()
                self._volume_path = self._volume_source()
                return
            self._open(labels, copy_src)
            self._finish_open()
        except BaseException:
            self.close(wait=True)
            raise

    def adopt(self, spec: SandboxSpec) -> None:
        """Finish opening a prepared sandbox for ``spec``: copy the workspace, set the network.

        Raises:
            SandboxError: ``spec`` would create a different container (``create_key``),
                or the copy or the engine failed (the sandbox is then closed).
        """
        if not self.prepared or self._adopted or self._volume_path is None:
            raise SandboxError("only a prepared sandbox is adopted, and only once")
        if create_key(spec) != create_key(self.spec):
            raise SandboxError("a prepared sandbox only serves a spec with its own create key")
        self._check_open()
        self._adopted = True
        self.spec = spec
        try:
            if spec.workspace_src is not None:
                if not spec.workspace_src.is_dir():
                    raise SandboxError(f"workspace source {spec.workspace_src} is not a directory")
                copy_tree(spec.workspace_src, self._volume_path, spec.exclude)
            self._finish_open()
        except BaseException:
            self.close(wait=True)
            raise

    def _open(self, labels: dict[str, str], copy_src: Path | None) -> None:
        spec = self.spec
        # Fast path: the workspace is an anonymous volume of this container, filled by a
        # plain host copy into its mountpoint (under the engine's root-only data dir)
        # before start. Otherwise (not root, remote engine) the tar is packed while the
        # engine creates the container and copied in through the archive API.
        in_volume = copy_src is not None and not spec.workspace_in_image
        via_volume = in_volume and can_fill_volumes()
        packer = None
        if copy_src is not None and not via_volume:
            name = PurePosixPath(self.workspace).name
            packer = Background(lambda: pack_dir(copy_src, name, self.spec.exclude))
        # A copied workspace is a volume (filled either way): it is then never part of
        # the container's root filesystem, so a snapshot (``docker commit``) never
        # bakes one run's checkout into an image. Over a snapshot's own workspace
        # files it is the container's filesystem, so those need no copy.
        self._container = self._create(labels, workspace_volume=in_volume)
        _open_sandboxes.add(self)
        if via_volume and copy_src is not None:
            # The volume is mounted at start, so the host copy can overlap the start:
            # no exec can run before both are done.
            starter = Background(self._container.start)
            self._volume_path = self._volume_source()
            copy_tree(copy_src, self._volume_path, self.spec.exclude)
            with engine_errors("start container"):
                starter.result()
        else:
            if packer is not None:
                with packer.result() as archive, engine_errors("copy workspace in"):
                    parent = str(PurePosixPath(self.workspace).parent)
                    self._container.put_archive(parent, archive)
            with engine_errors("start container"):
                self._container.start()

    def _finish_open(self) -> None:
        """What a started container needs before the first exec: pids, OOM counter, network."""
        spec = self.spec
        self._files = ContainerFiles(self._container, self.workspace, self._volume_path)
        with engine_errors("inspect container"):
            self._container.reload()
        self._init_pid = int(self._container.attrs["State"]["Pid"])
        self._procs_file = procs.host_cgroup_procs(self._init_pid)
        self._host_kill = procs.host_can_inspect(self._procs_file)
        self._oom_file = procs.host_memory_oom_file(self._init_pid)
        self._oom_baseline: int | None = procs.read_oom_kills(self._oom_file)
        # Issue 15 item 4: the disk budget, measured from the host (or refused here).
        self._disk = disk.install(
            spec.limits.disk,
            self._container.attrs,
            self._volume_path or disk.volume_mountpoint(self._container.attrs, self.workspace),
            self._procs_file if self._host_kill else None,
            self._init_pid,
        )
        self._net = NetworkSwitch(self._client, self._container, self.sandbox_id, spec.llm_endpoint)
        self._net.prepare_llm()
        if spec.network != NetworkPolicy.NONE:
            self._net.apply(spec.network)

    # -- lifecycle -----------------------------------------------------------------

    def _container_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if os.path.isfile(HOST_CA_BUNDLE):
            env.update(dict.fromkeys(CA_ENV, HOST_CA_BUNDLE))
        for name in PROXY_ENV:
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.update(self.spec.env)
        return env

    def _volume_source(self) -> Path:
        # containers.create() already inspected the new container: Mounts are in attrs.
        for mount in self._container.attrs.get("Mounts") or []:
            if mount.get("Destination") == self.workspace and mount.get("Type") == "volume":
                return Path(mount["Source"])
        raise SandboxError("workspace volume not found on the new container")

    def _create(self, labels: dict[str, str], *, workspace_volume: bool = False) -> Any:
        spec, lim = self.spec, self.spec.limits
        # Mounts, never ``volumes=``: the latter also declares each path a VOLUME in the
        # container's config, which a snapshot (docker commit) would then carry along.
        mounts: list[Mount] = []
        if os.path.isfile(HOST_CA_BUNDLE):
            # Mounted over the image's own bundle: pip, git, curl and urllib then all trust
            # the host's (TLS-intercepting) proxy CA without per-tool settings.
            mounts.append(Mount(HOST_CA_BUNDLE, HOST_CA_BUNDLE, type="bind", read_only=True))
        if engine_is_local():
            # The same resolv.conf in every network and on every path (issue 16.4, dns.py).
            conf = str(resolv_conf_file(cache_dir()))
            mounts.append(Mount("/etc/resolv.conf", conf, type="bind", read_only=True))
        for host, inside in spec.readonly_mounts.items():
            mounts.append(Mount(inside, str(Path(host).resolve()), type="bind", read_only=True))
        if spec.workspace_src is not None and spec.workspace_mode == "bind":
            mounts.append(Mount(spec.workspace, str(spec.workspace_src.resolve()), type="bind"))
        if workspace_volume:
            mounts.append(
                Mount(target=spec.workspace, source="", type="volume", labels=self._volume_labels)
            )
        with engine_errors("create container"):
            return self._client.containers.create(
                self.image,
                ["sleep", "infinity"],
                name=f"fsm-{self.sandbox_id}",
                init=True,
                detach=True,
                labels=labels,
                environment=self._base_env,
                working_dir=spec.workspace,
                network_mode="none",
                mem_limit=lim.memory,
                memswap_limit=lim.memory,
                nano_cpus=int(lim.cpus * 1e9),
                pids_limit=lim.pids,
                ulimits=[Ulimit(name="nofile", soft=lim.nofile, hard=lim.nofile)],
                cap_drop=["ALL"],
                cap_add=CAPS,
                security_opt=["no-new-privileges"],
                tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={lim.tmp_size}"},
                shm_size=lim.shm_size,
                mounts=mounts,
                stop_signal="SIGKILL",
            )

    def close(self, *, wait: bool | None = None) -> None:
        """Remove the container and its own networks. Idempotent; never raises.

        ``wait=False`` (or ``remove_in_background()`` in effect and ``wait`` not given):
        the removal runs in a non-daemon thread, joined before the process exits. A close
        cut short (a stop signal landing in it) is finished by the next call: every step
        of the removal is safe to repeat, and only its last one marks the sandbox cleaned.
        """
        if getattr(self, "_cleaned", False) or getattr(self, "_removing", False):
            return
        self._closed = True
        watch = getattr(self, "_disk", None)
        if watch is not None:
            watch.stop()
        if wait is False or (wait is None and removing_in_background()):
            self._removing = True
            start_removal(f"fsm-remove-{self.sandbox_id}", self._remove_quietly)
            return
        self._remove()

    def _remove_quietly(self) -> None:
        # In a thread: an engine gone mid-removal leaves it to the reaper, no traceback.
        with contextlib.suppress(Exception):
            self._remove()

    def _remove(self) -> None:
        net = getattr(self, "_net", None)
        # Already gone, or the reaper removes it by label: close never raises. Without a
        # handle (create timed out or was interrupted after the engine made it), by name.
        with contextlib.suppress(docker.errors.DockerException):
            if self._container is not None:
                self._container.remove(force=True, v=True)
            elif getattr(self, "_client", None) is not None:
                self._client.api.remove_container(f"fsm-{self.sandbox_id}", force=True, v=True)
        if net is not None:
            net.close()
        self._cleaned = True
        _open_sandboxes.discard(self)

    def release(self) -> str:
        """Leave the container running for a human and let go of it; return its name.

        ``fsm-runner run --keep`` (issue 16.7): cut off from every network (the llm relay
        dies with this process), never removed at exit; ``fsm-runner gc --kept`` removes it.
        """
        self._check_open()
        self._net.apply(NetworkPolicy.NONE)
        self._net.close()
        watch = getattr(self, "_disk", None)
        if watch is not None:
            watch.stop()
        # Let go for good: a later close() (the finalizer, exit) must not remove it.
        self._closed = self._cleaned = True
        _open_sandboxes.discard(self)
        return str(self._container.name)

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed(f"sandbox {self.sandbox_id} is closed")

    @property
    def container_id(self) -> str:
        return str(self._container.id)

    @property
    def network_policy(self) -> NetworkPolicy:
        return self._net.policy

    @property
    def llm_address(self) -> tuple[str, int] | None:
        """(host, port) stages use to reach the model endpoint under the ``llm`` policy."""
        return self._net.llm_address

    def describe(self) -> dict[str, Any]:
        """What a run dir's ``sandbox.json`` records about this sandbox."""
        lim = self.spec.limits
        return {
            "backend": "docker",
            "sandbox_id": self.sandbox_id,
            "container_id": self.container_id if self._container is not None else None,
            "image": self.image,
            "workspace": self.workspace,
            "workspace_mode": self.spec.workspace_mode,
            "network": self._net.policy.value if hasattr(self, "_net") else None,
            # What keeps networked stages off the host's own services (issue 15 item 6).
            "host_firewall": firewall.status().describe(),
            "limits": {
                "memory": lim.memory,
                "memory_swap": lim.memory,
                "cpus": lim.cpus,
                "pids": lim.pids,
                "nofile": lim.nofile,
                "tmp": lim.tmp_size,
                "disk": lim.disk,
            },
            "disk": (
                watch.describe()
                if (watch := getattr(self, "_disk", None)) is not None
                else {"budget": None, "enforced": False, "why": "Limits(disk=None)"}
            ),
            "capabilities": CAPS,
            "security_opt": ["no-new-privileges"],
            "init": True,
            "prepared": self.prepared,
        }

    # -- operations ----------------------------------------------------------------

    def set_network(self, policy: NetworkPolicy) -> None:
        self._check_open()
        self._net.apply(NetworkPolicy(policy))

    def exec(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        stream_to: Path | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        self._check_open()
        if self._disk is not None and self._disk.over:
            return _disk_refused(self._disk)
        marker = uuid.uuid4().hex
        full_env = {**self._base_env, **(env or {}), procs.MARKER_VAR: marker}
        workdir = self._resolve_cwd(cwd)
        api = self._client.api
        started = time.monotonic()
        with engine_errors("exec create"):
            exec_id = api.exec_create(
                self.container_id,
                ["sh", "-c", command],
                environment=[f"{k}={v}" for k, v in full_env.items()],
                workdir=workdir,
            )["Id"]
        sink = OutputSink(output_limit, stream_to, on_output)
        timed_out = False
        try:
            with engine_errors("exec start"):
                sock = api.exec_start(exec_id, socket=True)
            try:
                deadline = None if timeout is None else started + timeout
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

    def read_file(self, path: str, limit: int = DEFAULT_OUTPUT_LIMIT) -> bytes:
        self._check_open()
        return self._files.read_file(self._resolve_cwd(path), limit)

    def open_file(self, path: str) -> AbstractContextManager[IO[bytes]]:
        self._check_open()
        return self._files.open_file(self._resolve_cwd(path))

    def push(self, host_path: Path, sandbox_path: str) -> None:
        self._check_open()
        self._files.push(Path(host_path), self._resolve_cwd(sandbox_path))

    def pull(
        self,
        sandbox_path: str,
        host_path: Path,
        *,
        max_file_bytes: int | None = None,
        max_total_bytes: int | None = None,
        max_entries: int | None = None,
    ) -> list[str]:
        self._check_open()
        full = self._resolve_cwd(sandbox_path)
        limits = CopyLimits(max_file_bytes, max_total_bytes, max_entries)
        return self._files.pull(full, Path(host_path), limits)


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


def find_sandbox_containers(sandbox_id: str) -> list[Any]:
    """Containers labelled with ``sandbox_id`` (tests and the reaper use this)."""
    with engine_errors("list containers"):
        return list(
            # ignore_removed: one being removed (a background close) may vanish mid-listing.
            get_client().containers.list(
                all=True, filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"}, ignore_removed=True
            )
        )
