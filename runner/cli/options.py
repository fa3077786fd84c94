"""Options ``run`` and ``validate`` share (parity with ``setup()``; issue 16.8).

``--memory --cpus --pids`` become ``setup(limits=...)``, ``--timeout`` caps every
command (``AIDER_FSM_MAX_CMD_SECONDS``), ``--pipeline`` is ``setup(pipeline_rel=...)``,
``--require-hints`` is ``setup(hints="require")``. Both commands declare them once, as
a ``contract: ContractOptions`` parameter (``takes_contract_options``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from runner.cli.engine import Limits

if TYPE_CHECKING:
    from runner.trust.hint_check import HintsDecision


def _memory(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9]+[bkmg]?", value.strip().lower()):
        raise typer.BadParameter(f"{value!r}: give digits with an optional b, k, m or g (2g, 512m)")
    return value.strip().lower() if value is not None else None


Pipeline = Annotated[
    str,
    typer.Option(
        "--pipeline", metavar="FILE", help="The contract file, relative to the repository."
    ),
]
RequireHints = Annotated[
    bool,
    typer.Option(
        "--require-hints",
        help="Fail the evaluation unless it ran one of the repository's official commands.",
    ),
]
Memory = Annotated[
    str | None,
    typer.Option(metavar="SIZE", callback=_memory, help="Memory cap (memory+swap), e.g. 2g."),
]
Cpus = Annotated[float | None, typer.Option(min=0.01, help="CPUs the sandbox may use.")]
Pids = Annotated[int | None, typer.Option(min=1, help="Processes the sandbox may run at once.")]
Timeout = Annotated[
    int | None,
    typer.Option(metavar="SECONDS", min=1, help="Cap on every stage command's run time."),
]


R = TypeVar("R")


@dataclass(frozen=True)
class ContractOptions:
    """The options above, as the one value ``run`` and ``validate`` receive."""

    pipeline: str
    require_hints: bool
    memory: str | None
    cpus: float | None
    pids: int | None
    timeout: int | None

    @property
    def limits(self) -> Limits:
        return limits_of(self.memory, self.cpus, self.pids)


_CONTRACT_PARAMS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=default)
    for name, option, default in (
        ("pipeline", Pipeline, "pipeline.yml"),
        ("require_hints", RequireHints, False),
        ("memory", Memory, None),
        ("cpus", Cpus, None),
        ("pids", Pids, None),
        ("timeout", Timeout, None),
    )
]


def takes_contract_options(fn: Callable[..., R]) -> Callable[..., R]:
    """Show typer the six options where ``fn`` has ``contract``; pass them as one value.

    ``contract`` must be keyword-only (the options keep its place in ``--help``).
    """
    params: list[inspect.Parameter] = []
    for param in inspect.signature(fn, eval_str=True).parameters.values():
        params.extend(_CONTRACT_PARAMS if param.name == "contract" else [param])

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        values = {p.name: kwargs.pop(p.name) for p in _CONTRACT_PARAMS}
        return fn(*args, contract=ContractOptions(**values), **kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return wrapper


def limits_of(memory: str | None, cpus: float | None, pids: int | None) -> Limits:
    """The caller's limits: the defaults with what was given (the contract can only lower cpus/pids)."""
    base = Limits()
    return dataclasses.replace(
        base,
        memory=memory or base.memory,
        cpus=base.cpus if cpus is None else cpus,
        pids=base.pids if pids is None else pids,
    )


@dataclass(frozen=True)
class ContractFacts:
    """What ``validate`` says beyond "OK": the hints mode and why, the effective limits."""

    hints: HintsDecision
    limits: str


def contract_facts(path: Path, contract: ContractOptions) -> ContractFacts:
    """The official-commands mode a run of this contract gets, and its sandbox limits."""
    from runner.contract import load_pipeline
    from runner.session.sandbox_open import sandbox_limits
    from runner.trust.evidence import truthy
    from runner.trust.hint_check import decide
    from runner.trust.hints import hint_env

    pipeline = load_pipeline(path / contract.pipeline)
    found = json.loads(hint_env(path, python_version="3.11").get("AIDER_FSM_HINTS_JSON") or "[]")
    ev = pipeline.stage("evaluation")
    decision = decide(
        "require" if contract.require_hints else "auto",
        found,
        agent_wrote=False,
        contract_asks=truthy((ev.env if ev else {}).get("AIDER_FSM_REQUIRE_HINTS")),
    )
    lim = sandbox_limits(pipeline, contract.limits)
    return ContractFacts(decision, f"memory={lim.memory} cpus={lim.cpus:g} pids={lim.pids}")
