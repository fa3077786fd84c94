"""The CLI's one door to the sandbox layer: engine checks, images, snapshots, gc.

Every other CLI module goes through :mod:`runner_env` and the runner; what they need of
``sandbox/`` itself (its error type, limits, the image and cleanup commands) comes from
here, so the CLI's reach into the engine is one page to read. Heavy imports (the docker
SDK) wait until a command needs them: ``fsm-runner --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.base import Limits
from sandbox.errors import ENGINE_FIX_COMMAND
from sandbox.errors import SandboxError as SandboxLayerError

if TYPE_CHECKING:
    from sandbox.firewall import FirewallStatus
    from sandbox.images import BaseImage, PruneOutcome
    from sandbox.kept import KeptSandbox
    from sandbox.reaper import GcReport
    from sandbox.snapshots import PrunedSnapshot, Snapshot

ALLOW_HOST_ENV = "FSM_RUNNER_ALLOW_HOST_ACCESS"
"""Mirrors ``sandbox.firewall.ALLOW_ENV`` (checked by tests), without importing it eagerly."""

__all__ = [
    "ALLOW_HOST_ENV",
    "ENGINE_FIX_COMMAND",
    "Limits",
    "SandboxLayerError",
    "base_images",
    "cache_dir",
    "cleanup_pending",
    "default_image_tag",
    "engine_info",
    "ensure_image",
    "exec_in_kept",
    "finish_sandboxes",
    "firewall_status",
    "gc",
    "gc_summary",
    "image_exists",
    "kept_sandboxes",
    "prune_base_images",
    "prune_snapshots",
    "remove_sandboxes_in_background",
    "snapshots",
]


def remove_sandboxes_in_background() -> None:
    """Sandboxes closed from now on are removed while the command finishes (issue 17).

    ``finish_sandboxes()`` joins the removals when the command ends.
    """
    from sandbox.lifecycle import remove_in_background

    remove_in_background()


def cleanup_pending() -> bool:
    """A sandbox of this process is still open or being removed in the background."""
    import sys

    if "sandbox.lifecycle" not in sys.modules:  # nothing was ever opened
        return False
    from sandbox.docker import open_sandbox_count
    from sandbox.lifecycle import removals_pending

    return removals_pending() or open_sandbox_count() > 0


def hold_stop_signal(signum: int) -> bool:
    """An engine create call is in flight: ``signum`` is delivered again when it returns."""
    import sys

    if "sandbox.atomic" not in sys.modules:  # nothing was ever created
        return False
    from sandbox.atomic import hold_stop_signal as hold

    return hold(signum)


def finish_sandboxes() -> None:
    """End of a command: remove a head start nobody took, join the background removals.

    Also turns background removal off again, so a caller that runs commands in-process
    (tests, scripts) gets ``close()`` that waits once the command is over.
    """
    import sys

    if "sandbox.lifecycle" not in sys.modules:  # nothing was started: --help stays light
        return
    from sandbox.lifecycle import remove_in_background, wait_for_removals

    if "sandbox.pool" in sys.modules:
        from sandbox.pool import install

        unused = install(None)
        if unused is not None:
            unused.close(wait=False)
    wait_for_removals()
    remove_in_background(False)


def ensure_image(image: str | None, progress: Callable[[str], None] | None) -> str:
    from sandbox.images import ensure_image as ensure

    return ensure(image, progress=progress)


def default_image_tag() -> str:
    from sandbox.images import default_image_tag as tag

    return tag()


def image_exists(tag: str) -> bool:
    from sandbox.images import image_exists as exists

    return exists(tag)


def cache_dir() -> str:
    from sandbox.images import cache_dir as where

    return str(where())


def base_images() -> list[BaseImage]:
    from sandbox.images import base_images as listed

    return listed()


def prune_base_images(keep: int, *, dry_run: bool, label: str | None) -> list[PruneOutcome]:
    from sandbox.images import prune_base_images as prune

    return prune(keep, dry_run=dry_run, label=label)


def snapshots() -> list[Snapshot]:
    from sandbox.snapshots import list_snapshots

    return list_snapshots()


def prune_snapshots(
    *, keep: int | None, max_bytes: int | None, label: str | None, dry_run: bool
) -> list[PrunedSnapshot]:
    from sandbox.snapshots import prune_snapshots as prune

    return prune(keep=keep, max_bytes=max_bytes, label=label, dry_run=dry_run)


def gc(
    *, include_live: bool, include_kept: bool = False, creator_pids: list[int] | None = None
) -> GcReport:
    from sandbox.reaper import gc as run_gc

    return run_gc(include_live=include_live, include_kept=include_kept, creator_pids=creator_pids)


def kept_sandboxes(run_id: str) -> list[KeptSandbox]:
    """Sandboxes left running by ``run --keep`` for this run id (or prefix)."""
    from sandbox.kept import find_kept

    return find_kept(run_id)


def exec_in_kept(name: str, argv: list[str], workdir: str) -> int:
    """Run a command in a kept sandbox without a terminal; its exit code."""
    from sandbox.kept import exec_in

    return exec_in(name, argv, workdir)


def gc_summary(report: GcReport) -> str:
    """One line: what ``gc`` removed, kept and could not remove."""
    removed = (
        f"removed {len(report.containers)} container(s), {len(report.networks)} network(s), "
        f"{len(report.volumes)} volume(s), {len(report.rules)} firewall rule(s)"
    )
    busy = len(report.in_progress)
    busy_text = f"; {busy} being removed by another process" if busy else ""
    failed = f"; {len(report.failed)} could not be removed" if report.failed else ""
    kept = f"; {report.kept_on_purpose} kept by run --keep" if report.kept_on_purpose else ""
    return f"{removed}; kept {report.kept_live} live{kept}{busy_text}{failed}"


def firewall_status() -> FirewallStatus:
    """Whether llm/egress stages get host firewall rules here (``doctor``)."""
    from sandbox.firewall import status

    return status()


def engine_info() -> dict[str, Any]:
    """``docker info`` as a dict.

    Raises:
        SandboxLayerError: the engine does not answer (``EngineUnavailable``).
    """
    from sandbox.engine import engine_errors, get_client

    client = get_client()
    with engine_errors("engine info"):
        info: dict[str, Any] = client.info()
    return info
