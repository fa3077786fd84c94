"""DockerSandbox: one hardened container per sandbox, reused by every exec.

The container runs an init (tini, ``init=True``: no zombies, a 0.1 s stop) and a no-op
``sleep infinity``. This module is the sandbox's lifecycle (open, the warm pool's
prepare/adopt, close, release); what runs in it is elsewhere, as SWE-ReX keeps its
deployment apart from its runtime: ``container_create.py`` (how the container is
made), ``container_exec.py`` (commands), ``container_files.py`` (files).
"""

from __future__ import annotations

import atexit
import contextlib
import uuid
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import IO, Any

import docker
import docker.errors

from . import disk, firewall
from .archive import pack_dir
from .base import DEFAULT_OUTPUT_LIMIT, NetworkPolicy, Sandbox, SandboxSpec
from .container_create import CA_ENV as CA_ENV
from .container_create import CAPS as CAPS
from .container_create import HOST_CA_BUNDLE as HOST_CA_BUNDLE
from .container_create import container_env, create_container, workspace_volume_source
from .container_exec import ContainerExec
from .container_files import ContainerFiles
from .copyout import CopyLimits
from .engine import LABEL_SANDBOX, creator_labels, engine_errors, get_client
from .errors import SandboxError
from .images import ensure_image
from .lifecycle import (
    Background,
    can_fill_volumes,
    can_prepare,
    create_key,
    removing_in_background,
    start_removal,
    wait_for_removals,
)
from .network import NetworkSwitch
from .volume_fill import copy_tree

_open_sandboxes: set[DockerSandbox] = set()
"""Every sandbox of this process not yet removed, held strongly: one its owner dropped
without closing (a stop signal landing between a warm pool handing it out and the session
taking it) is still removed at exit. A weak set let the garbage collector forget it and
the container outlived the process (the chaos test caught it)."""


def _close_leftovers() -> None:
    for sandbox in list(_open_sandboxes):
        sandbox.close(wait=True)
    wait_for_removals()


atexit.register(_close_leftovers)


def open_sandbox_count() -> int:
    """Sandboxes of this process not yet removed (the CLI defers stop signals meanwhile)."""
    return len(_open_sandboxes)


class DockerSandbox(ContainerExec, Sandbox):
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
        self._base_env = container_env(spec)
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
                self._volume_path = workspace_volume_source(self._container, self.workspace)
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
            self._volume_path = workspace_volume_source(self._container, self.workspace)
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
        self._watch_processes()
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

    def _create(self, labels: dict[str, str], *, workspace_volume: bool = False) -> Any:
        return create_container(
            self._client,
            self.spec,
            image=self.image,
            name=f"fsm-{self.sandbox_id}",
            labels=labels,
            env=self._base_env,
            volume_labels=self._volume_labels if workspace_volume else None,
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

    def read_file(self, path: str, limit: int = DEFAULT_OUTPUT_LIMIT) -> bytes:
        self._check_open()
        return self._files.read_file(self._resolve_cwd(path), limit)

    def open_file(self, path: str) -> AbstractContextManager[IO[bytes]]:
        self._check_open()
        return self._files.open_file(self._resolve_cwd(path))

    def push(self, host_path: Path, sandbox_path: str) -> None:
        self._check_open()
        self._files.push(Path(host_path), self._resolve_cwd(sandbox_path))

    def _pull(self, sandbox_path: str, host_path: Path, limits: CopyLimits) -> list[str]:
        return self._files.pull(self._resolve_cwd(sandbox_path), host_path, limits)


def find_sandbox_containers(sandbox_id: str) -> list[Any]:
    """Containers labelled with ``sandbox_id`` (tests and the reaper use this)."""
    with engine_errors("list containers"):
        return list(
            # ignore_removed: one being removed (a background close) may vanish mid-listing.
            get_client().containers.list(
                all=True, filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"}, ignore_removed=True
            )
        )
