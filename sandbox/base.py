"""The sandbox base class: the one surface the runner uses to execute target code.

Small on purpose (inspect_ai keeps its base to four methods): ``exec`` returns data
for every exit code, and raises only when the infrastructure failed. An abstract class
rather than a protocol, so that ``exec`` and ``pull`` handle their arguments once for
every backend.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Self

from .copyout import CopyLimits
from .disk import parse_size
from .errors import SandboxClosed
from .output import OutputCallback, OutputSink

DEFAULT_OUTPUT_LIMIT = 1_000_000
"""Bytes of stdout (and of stderr) kept in memory per exec; the rest is counted, not kept."""


class NetworkPolicy(enum.StrEnum):
    """Where a sandbox may connect.

    ``none``: loopback only. ``egress``: the normal outside world (package mirrors, with
    the host CA bundle and proxy settings). ``llm``: only the model endpoint named in
    ``SandboxSpec.llm_endpoint`` (host port reached through the network gateway).
    """

    NONE = "none"
    EGRESS = "egress"
    LLM = "llm"


@dataclass(frozen=True)
class ExecResult:
    """What one command did. A non-zero ``exit_code`` is data, never an exception."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    disk_exceeded: bool = False
    """The sandbox went over ``Limits.disk``: the command was killed (or refused, once the
    sandbox is over), and the last line of ``stderr`` says by how much."""

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.oom_killed
            and not self.disk_exceeded
        )


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to the whole sandbox (defaults documented in docs/security.md)."""

    memory: str = "2g"
    """Memory cap; swap is set to the same value, so there is no swap on top."""
    cpus: float = 1.0
    pids: int = 512
    nofile: int = 4096
    tmp_size: str = "512m"
    """Size of the /tmp tmpfs."""
    shm_size: str = "64m"
    disk: str | None = "10g"
    """Disk the sandbox may fill (writable layer + workspace), written like ``memory``.
    Measured from the host (``sandbox/disk.py``); over it, the sandbox's processes are
    killed and it runs nothing more. None: no budget, chosen explicitly by the caller
    (a sandbox that cannot measure it refuses to open otherwise)."""

    def __post_init__(self) -> None:
        """Refuse a budget that is no budget (0, negative, absurd) at once, not at open.

        Raises:
            ValueError: ``disk`` is not like ``10g`` or outside 1m..1p.
        """
        if self.disk is not None:
            parse_size(self.disk)


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to open a sandbox. Frozen: a spec is never mutated after creation."""

    workspace_src: Path | None = None
    """Host folder copied (or bind-mounted) to ``workspace``; None = empty workspace."""
    workspace: str = "/workspace"
    workspace_mode: Literal["copy", "bind"] = "copy"
    """``copy``: host files are never written by container code. ``bind``: fast, trusted repos only."""
    workspace_in_image: bool = False
    """The image already holds files at ``workspace`` (a bootstrap snapshot): the copy then
    lands on top of them in the container's own filesystem instead of in a fresh volume,
    so they are visible without copying them (docker backend, ``copy`` mode)."""
    image: str | None = None
    """Image to run; None = the default image (built offline on demand)."""
    backend: Literal["docker", "local"] = "docker"
    network: NetworkPolicy = NetworkPolicy.NONE
    llm_endpoint: tuple[str, int] | None = None
    """(host, port) that the ``llm`` network policy may reach."""
    limits: Limits = field(default_factory=Limits)
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment set for every exec (per-exec env is layered on top)."""
    readonly_mounts: Mapping[str, str] = field(default_factory=dict)
    """host path -> container path, mounted read-only (model dirs, CA bundle)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels (e.g. run id) on every object we create."""
    exclude: tuple[str, ...] = (".venv", "__pycache__", ".aider_fsm/artifacts")
    """Path parts not copied into the workspace. ``.git`` is copied: installs such as
    setuptools-scm read it, and the container's copy can never write the host's."""


@dataclass(frozen=True)
class ExecOptions:
    """One ``Sandbox.exec`` call's settings, as a backend's ``_exec`` receives them."""

    env: Mapping[str, str]
    cwd: str | None
    timeout: float | None
    output_limit: int
    stream_to: Path | None
    on_output: OutputCallback | None

    def sink(self) -> OutputSink:
        """The capped (and, if asked, streamed) capture of this exec's output."""
        return OutputSink(self.output_limit, self.stream_to, self.on_output)


class Sandbox(abc.ABC):
    """A place where target commands run. Open with ``open_sandbox(spec)``; close is idempotent.

    ``exec`` and ``pull`` are template methods: the arguments and the closed check are
    handled here once, and a backend implements ``_exec`` and ``_pull``.
    """

    workspace: str
    sandbox_id: str
    _closed: bool = False

    @property
    @abc.abstractmethod
    def llm_address(self) -> tuple[str, int] | None:
        """Where stages reach the model endpoint under the ``llm`` policy (None: no endpoint)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the run dir's ``sandbox.json`` records (backend, image, limits, network)."""

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
        """Run ``command`` with ``sh -c`` semantics; kill the whole process tree on timeout.

        ``stream_to``: a host folder; full output is written to ``stdout.txt``/``stderr.txt``
        there while it runs (memory stays capped at ``output_limit``).
        ``on_output``: called with (1 or 2, bytes) as output arrives, for live progress;
        an exception there stops the calls, never the command.

        Raises:
            SandboxClosed: the sandbox is closed.
        """
        self._check_open()
        opts = ExecOptions(env or {}, cwd, timeout, output_limit, stream_to, on_output)
        return self._exec(command, opts)

    @abc.abstractmethod
    def _exec(self, command: str, opts: ExecOptions) -> ExecResult:
        """``exec`` on a sandbox known to be open."""

    @abc.abstractmethod
    def set_network(self, policy: NetworkPolicy) -> None: ...

    @abc.abstractmethod
    def read_file(self, path: str, limit: int = DEFAULT_OUTPUT_LIMIT) -> bytes:
        """Return at most ``limit`` bytes of ``path`` (relative to the workspace or absolute).

        Raises:
            FileNotFoundError: the file does not exist (or is not a regular file).
        """

    @abc.abstractmethod
    def open_file(self, path: str) -> AbstractContextManager[IO[bytes]]:
        """Open ``path`` for reading, streamed: for files too big to copy out or read whole.

        Links are never followed. Use as ``with sb.open_file(p) as fh: ...``.

        Raises:
            FileNotFoundError: the file does not exist (or is not a regular file).
        """

    @abc.abstractmethod
    def push(self, host_path: Path, sandbox_path: str) -> None: ...

    def pull(
        self,
        sandbox_path: str,
        host_path: Path,
        *,
        max_file_bytes: int | None = None,
        max_total_bytes: int | None = None,
        max_entries: int | None = None,
    ) -> list[str]:
        """Copy ``sandbox_path`` out to the host; return the names written.

        A folder's contents land in ``host_path``, which this call creates (it must not
        exist: a copy never writes into an earlier one); a single file lands in the
        folder ``host_path`` under its own name, never over an existing one. Links are
        never created on the host: a folder lists them in ``.links.json``.
        A file over ``max_file_bytes`` is not copied: ``<name>.omitted`` says its size
        instead (a 256 MB sparse "samples" file must not become 256 MB on the host).
        Past ``max_total_bytes`` (apparent sizes) or ``max_entries``, what is left
        behind is named in ``.omitted`` at the top of the folder.

        Raises:
            UnsafeArchive: a member is absolute, has ``..``, is a device or fifo, or a
                link escaping; a single path that is a link; a taken file name.
            FileNotFoundError: ``sandbox_path`` does not exist.
            FileExistsError: ``host_path`` exists and ``sandbox_path`` is a folder.
            SandboxClosed: the sandbox is closed.
        """
        self._check_open()
        limits = CopyLimits(max_file_bytes, max_total_bytes, max_entries)
        return self._pull(sandbox_path, Path(host_path), limits)

    @abc.abstractmethod
    def _pull(self, sandbox_path: str, host_path: Path, limits: CopyLimits) -> list[str]:
        """``pull`` from a sandbox known to be open."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed(f"sandbox {self.sandbox_id} is closed")
