"""The runner's error hierarchy: one root, shallow.

    RunnerError
    ├── ContractError      pipeline.yml / .aider_fsm/* is invalid (file, line, field, found, allowed)
    ├── TargetError        the target cannot be resolved, cloned or downloaded
    ├── SandboxError       the sandbox infrastructure failed (also a sandbox.errors.SandboxError)
    ├── AgentError         the OpenCode agent failed or overstepped its scope
    └── PolicyViolation    a command was refused by the command policy (names the rule)

Stage failures are results (``RolloutResult.ok is False``), not exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from sandbox.errors import SandboxError as _SandboxLayerError


class RunnerError(Exception):
    """Root of every error fsm-runner raises on purpose."""


class ContractError(RunnerError, ValueError):
    """The contract is invalid. Carries where and what, builds its message once."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        found: object = None,
        allowed: Sequence[str] | str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.found = found
        self.allowed = allowed
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<contract>"
        if self.line is not None:
            where += f":{self.line}"
        head = f"{where}: "
        if self.field:
            head += f"{self.field}: "
        parts = [head + self.message]
        if self.found is not None:
            parts.append(f"  found: {self.found!r}")
        if self.allowed:
            allowed = self.allowed if isinstance(self.allowed, str) else ", ".join(self.allowed)
            parts.append(f"  allowed: {allowed}")
            if isinstance(self.found, str) and not isinstance(self.allowed, str):
                close = difflib.get_close_matches(self.found, list(self.allowed), n=1)
                if close:
                    parts.append(f"  did you mean {close[0]!r}?")
        return "\n".join(parts)


class TargetError(RunnerError):
    """The target repository could not be resolved or fetched."""


class SandboxError(RunnerError, _SandboxLayerError):
    """Sandbox infrastructure failure, as seen by the runner (wraps sandbox.errors)."""


class AgentError(RunnerError):
    """The OpenCode agent failed, timed out, or wrote outside the contract."""


class PolicyViolation(RunnerError):
    """The command policy refused a command; ``rule`` names the rule that matched."""

    def __init__(self, command: str, rule: str, reason: str) -> None:
        self.command = command
        self.rule = rule
        self.reason = reason
        super().__init__(f"command refused by policy rule {rule!r}: {reason}\n  command: {command}")
