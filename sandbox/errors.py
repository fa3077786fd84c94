"""Errors raised by the sandbox layer.

A non-zero exit code is data (``ExecResult``); these exceptions mean the
infrastructure itself failed: the engine is missing, an image cannot be built,
the container died under us, or an archive tried to escape its destination.

    SandboxError
    ├── EngineUnavailable      the Docker engine does not answer (says how to start it)
    ├── ImageBuildError        the default image could not be built
    ├── SandboxClosed          an operation on a sandbox that was already closed
    └── UnsafeArchive          a pulled archive holds an absolute path, `..`, a device or an escaping link
"""

from __future__ import annotations

ENGINE_FIX_COMMAND = "make engine   # or: bash images/ensure-engine.sh (as root)"


class SandboxError(RuntimeError):
    """Root of every sandbox failure that is not the command's own exit code."""


class EngineUnavailable(SandboxError):
    """The Docker engine cannot be reached; carries the one command that fixes it."""

    def __init__(self, detail: str, fix: str = ENGINE_FIX_COMMAND) -> None:
        self.detail = detail
        self.fix = fix
        super().__init__(f"Docker engine unavailable: {detail}\n  fix: {fix}")


class ImageBuildError(SandboxError):
    """Building or importing an image failed; ``log_tail`` holds the last build lines."""

    def __init__(self, image: str, step: str, log_tail: str = "") -> None:
        self.image = image
        self.step = step
        self.log_tail = log_tail
        msg = f"could not build image {image} at step {step!r}"
        if log_tail:
            msg += f":\n{log_tail}"
        super().__init__(msg)


class SandboxClosed(SandboxError):
    """The sandbox was closed; open a new one."""


class UnsafeArchive(SandboxError):
    """A pulled entry would escape the copy, is not a plain file/dir/link, is a single
    path that is a link (links are never copied to the host), or would take a host name
    that already exists."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(f"refused archive member {member!r}: {reason}")
