"""``pipeline.yml``'s ``security`` section: the command policy and container limits.

Regexes are compiled at load (the predecessor quietly fell back to a literal match on a
bad one), and limits only ever tighten the caller's: a memory of ``0`` ("no limit" to
Docker) is refused (issue 15 item 5).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PositiveFloat, PositiveInt

from runner.contract.fields import (
    ContractModel,
    Seconds,
    lower_or_default,
    no_bool,
    none_to_empty_tuple,
    size_bytes,
)
from runner.contract.stage_sections import NetworkPolicy

__all__ = ["MAX_CPUS", "MAX_MEMORY", "MAX_PIDS", "MIN_MEMORY", "SecuritySpec"]


def _regex(pattern: str) -> str:
    pattern = pattern.strip()
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    return pattern


Patterns = Annotated[
    tuple[Annotated[str, AfterValidator(_regex)], ...],
    BeforeValidator(none_to_empty_tuple),
    AfterValidator(lambda items: tuple(p for p in items if p)),
]


MIN_MEMORY = "6m"
"""Docker's own minimum for a memory limit."""
MAX_MEMORY = "1024g"
MAX_CPUS = 1024.0
MAX_PIDS = 4_194_304
"""The kernel's ceiling for pid_max."""

Cpus = Annotated[
    PositiveFloat | None, Field(allow_inf_nan=False, le=MAX_CPUS), BeforeValidator(no_bool)
]


def _memory(value: str | None) -> str | None:
    # 0 means "no limit" to Docker: a contract could only loosen with it (issue 15 item 5).
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+[bkmg]?", value.lower()):
        raise ValueError("memory must look like 512m or 2g (digits + optional b/k/m/g)")
    if not size_bytes(MIN_MEMORY) <= size_bytes(value) <= size_bytes(MAX_MEMORY):
        raise ValueError(f"memory must be between {MIN_MEMORY} and {MAX_MEMORY}")
    return value.lower()


class SecuritySpec(ContractModel):
    """Command policy and container limits."""

    mode: Annotated[Literal["safe", "system"], BeforeValidator(lower_or_default("safe"))] = "safe"
    """safe adds default deny rules (sudo, mkfs, ...); system drops them."""
    allowlist: Patterns = ()
    """Regexes (case-insensitive, re.search); if non-empty a command must match one."""
    denylist: Patterns = ()
    """Regexes (case-insensitive, re.search); a matching command is refused."""
    max_cmd_seconds: Seconds = None
    """Cap on every command's timeout (tightens the runner's, never loosens it)."""
    max_total_seconds: Seconds = None
    """Time budget of one stage, checked before each command."""
    memory: Annotated[
        str | None,
        BeforeValidator(lambda v: str(no_bool(v)) if isinstance(v, int) else v),
        AfterValidator(_memory),
    ] = None
    """Container memory limit (memory+swap), e.g. 2g; only lowers the caller's; null = the caller's."""
    cpus: Cpus = None
    """Container CPU limit; only lowers the caller's; null = the caller's."""
    pids: Annotated[PositiveInt | None, Field(ge=8, le=MAX_PIDS), BeforeValidator(no_bool)] = None
    """Container process-count limit; only lowers the caller's; null = the caller's."""
    network: NetworkPolicy | None = None
    """Most network any stage may get (none < llm < egress); null = runner default."""

    @property
    def allow_patterns(self) -> tuple[re.Pattern[str], ...]:
        """Compiled allowlist (validated at load, so this cannot fail)."""
        return tuple(re.compile(p, re.IGNORECASE) for p in self.allowlist)

    @property
    def deny_patterns(self) -> tuple[re.Pattern[str], ...]:
        """Compiled denylist."""
        return tuple(re.compile(p, re.IGNORECASE) for p in self.denylist)
