"""Disposable places to run target code (DESIGN.md section 4).

``open_sandbox(spec)`` picks a backend by name: ``docker`` (the default, isolated) or
``local`` (host processes, no isolation; only when asked for by name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import DEFAULT_OUTPUT_LIMIT, ExecResult, Limits, NetworkPolicy, Sandbox, SandboxSpec
from .copyout import OMITTED_SUFFIX
from .errors import EngineUnavailable, ImageBuildError, SandboxClosed, SandboxError, UnsafeArchive


def _docker(spec: SandboxSpec, progress: Any) -> Sandbox:
    from .docker import DockerSandbox
    from .pool import take_prepared

    # A warm pool's sandbox, made ahead for this very spec (pool.py), else a fresh one.
    return take_prepared(spec) or DockerSandbox(spec, progress=progress)


def _local(spec: SandboxSpec, progress: Any) -> Sandbox:
    from .local import LocalSandbox

    return LocalSandbox(spec)


BACKENDS: dict[str, Callable[[SandboxSpec, Any], Sandbox]] = {"docker": _docker, "local": _local}


def open_sandbox(spec: SandboxSpec, *, progress: Callable[[str], None] | None = None) -> Sandbox:
    """Open a sandbox for ``spec``; use it as a context manager so it is always closed.

    Raises:
        SandboxError: unknown backend (the message lists the known ones), or the
            backend could not start (``EngineUnavailable`` says how to start the engine).
    """
    factory = BACKENDS.get(spec.backend)
    if factory is None:
        raise SandboxError(
            f"unknown sandbox backend {spec.backend!r}; known: {', '.join(sorted(BACKENDS))}"
        )
    return factory(spec, progress)


__all__ = [
    "BACKENDS",
    "DEFAULT_OUTPUT_LIMIT",
    "OMITTED_SUFFIX",
    "EngineUnavailable",
    "ExecResult",
    "ImageBuildError",
    "Limits",
    "NetworkPolicy",
    "Sandbox",
    "SandboxClosed",
    "SandboxError",
    "SandboxSpec",
    "UnsafeArchive",
    "open_sandbox",
]
