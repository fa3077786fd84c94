"""Issue 15 item 5 without an engine: contract limits only tighten the caller's, and
zero, absurd or non-finite values are errors with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli.main import main
from runner.contract import PipelineSpec, load_pipeline
from runner.errors import ContractError
from runner.session.sandbox_open import sandbox_limits
from runner.session.stage_env import limit_override
from sandbox import Limits


def _pipe(security: dict[str, object]) -> PipelineSpec:
    return PipelineSpec.model_validate({"security": security})


def test_contract_limits_only_tighten() -> None:
    caller = Limits(memory="512m", cpus=0.5, pids=200)
    assert sandbox_limits(_pipe({"memory": "4g", "cpus": 2, "pids": 9999}), caller) == caller
    tight = sandbox_limits(_pipe({"memory": "256m", "cpus": 0.25, "pids": 64}), caller)
    assert (tight.memory, tight.cpus, tight.pids) == ("256m", 0.25, 64)
    assert sandbox_limits(_pipe({"memory": "1048576k"}), Limits(memory="2g")).memory == "1048576k"


def test_every_security_limit_field_is_a_limits_field() -> None:
    # The tightening is generic by field name: a security field that is also a Limits
    # field (a future `disk`) is covered with no code change.
    shared = set(PipelineSpec.model_fields["security"].annotation.model_fields)  # type: ignore[union-attr]
    assert {"memory", "cpus", "pids"} <= shared & set(Limits.__dataclass_fields__)


def test_caps_from_caller_and_contract_both_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDER_FSM_MAX_CMD_SECONDS", "600")
    assert limit_override("AIDER_FSM_MAX_CMD_SECONDS", {"AIDER_FSM_MAX_CMD_SECONDS": "60"}) == 60
    assert limit_override("AIDER_FSM_MAX_CMD_SECONDS", {"AIDER_FSM_MAX_CMD_SECONDS": "9999"}) == 600


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("  memory: 0", "security.memory"),
        ("  memory: 99999999g", "security.memory"),
        ("  cpus: .inf", "security.cpus"),
        ("  cpus: .nan", "security.cpus"),
        ("  pids: 0", "security.pids"),
        ("  max_cmd_seconds: 1000000000000000000", "security.max_cmd_seconds"),
        ("  max_total_seconds: 1e29", "security.max_total_seconds"),
    ],
)
def test_zero_absurd_or_non_finite_limits_are_located_errors(
    tmp_path: Path, line: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(f"version: 1\nevaluation:\n  run_cmd: echo\nsecurity:\n{line}\n")
    with pytest.raises(ContractError) as err:
        load_pipeline(path)
    assert err.value.line == 5 and field in str(err.value), str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(tmp_path)])
    out = capsys.readouterr()
    assert exit_info.value.code == 1 and f"{path}:5" in out.out + out.err


@pytest.mark.parametrize("value", ["1e29", "1000000000000000000", ".inf"])
@pytest.mark.parametrize("key", ["timeout_seconds", "retries"])
def test_stage_timeouts_and_retries_are_bounded(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(f"version: 1\nrollout:\n  run_cmd: echo\n  {key}: {value}\n")
    with pytest.raises(ContractError) as err:
        load_pipeline(path)
    assert err.value.line == 4 and f"rollout.{key}" in str(err.value), str(err.value)
