"""Writing a contract: ``fsm-runner init`` (a starter), ``validate`` (no run), ``schema``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from runner.cli.common import RepoDir, err, fail, out
from runner.cli.options import ContractOptions, takes_contract_options
from runner.cli.progress import planned_stages
from runner.cli.starter import STARTER_FILES
from runner.errors import ContractError, RunnerError


def schema() -> None:
    """Print the JSON Schema of pipeline.yml (generated from the models)."""
    from runner.contract import pipeline_json_schema

    print(json.dumps(pipeline_json_schema(), indent=2))


def check_contract(path: Path, pipeline_rel: str = "pipeline.yml") -> list[str]:
    """Load every contract file; return the stages that would run.

    Raises:
        ContractError: a file is missing or invalid (file:line: field: message).
    """
    from runner.contract import load_actions, load_bootstrap, load_pipeline

    pipeline_path = path / pipeline_rel
    if not pipeline_path.is_file():
        raise ContractError(f"no {pipeline_rel} here; write one with `fsm-runner init`", file=path)
    pipeline = load_pipeline(pipeline_path)
    boot = load_bootstrap(path / ".aider_fsm" / "bootstrap.yml")
    actions = load_actions(path / ".aider_fsm" / "actions.yml")
    return planned_stages(pipeline, boot, actions)


@takes_contract_options
def validate(path: RepoDir = Path("."), *, contract: ContractOptions) -> None:
    """Check pipeline.yml and .aider_fsm/*.yml without running anything."""
    from runner.cli.options import contract_facts

    try:
        stages = check_contract(path, contract.pipeline)
        facts = contract_facts(path, contract)
    except RunnerError as exc:
        raise fail(exc) from exc
    out.print(f"{path}: contract OK; stages: {', '.join(stages) or 'none'}", markup=False)
    out.print(facts.hints.describe(), markup=False)
    cap = f"; every command at most {contract.timeout}s" if contract.timeout else ""
    out.print(f"limits: {facts.limits}{cap}", markup=False)


def init(
    path: Annotated[Path, typer.Argument(help="Repository root (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing contract files.")] = False,
    tests: Annotated[
        bool,
        typer.Option(
            "--tests",
            help="A contract whose evaluation is the project's own test suite (pytest, JUnit counts).",
        ),
    ] = False,
    pip: Annotated[
        list[str] | None,
        typer.Option(
            "--pip", metavar="PACKAGE", help="With --tests: a package the tests need (repeatable)."
        ),
    ] = None,
) -> None:
    """Write a commented starter contract that runs as is; then fill in the TODOs."""
    from runner.cli.starter import starter_for_tests

    files = starter_for_tests(path, pip or []) if tests else STARTER_FILES
    existing = [rel for rel in files if (path / rel).exists()]
    if existing and not force:
        err.print(f"error: {path} already has {', '.join(existing)}; --force overwrites them")
        raise typer.Exit(1)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    stages = check_contract(path)  # valid by construction; a failure here is our bug
    out.print(f"wrote {len(files)} files in {path}; stages: {', '.join(stages)}")
    out.print(f"next: fsm-runner validate {path} && fsm-runner run {path}", markup=False)
