"""Stage outputs: samples JSONL (streamed, every line checked), rollout, metrics, hints."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pydantic
import pytest

from runner.contract import (
    RuntimeEnv,
    Sample,
    load_runtime_env,
    validate_hints_run,
    validate_hints_used,
    validate_metrics,
    validate_rollout,
    validate_samples_jsonl,
)
from runner.errors import ContractError

GOOD = {"prompt": "2+2?", "completion": "4", "reward": 1}


def jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def samples_error(path: Path, **kw: Any) -> ContractError:
    with pytest.raises(ContractError) as info:
        validate_samples_jsonl(path, **kw)
    return info.value


# --- samples ---------------------------------------------------------------------------


def test_valid_samples_report(tmp_path: Path) -> None:
    rows = [GOOD, {**GOOD, "reward": -0.5, "id": 7}, {**GOOD, "completion": " ", "reward": 2.5}]
    report = validate_samples_jsonl(jsonl(tmp_path / "s.jsonl", rows))
    assert report.samples == 3 and report.blank_completions == 1
    assert (report.reward_min, report.reward_max) == (-0.5, 2.5)
    assert report.reward_mean == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("bad", "field", "needle"),
    [
        ('{"prompt": "p", "completion": "c", "reward": NaN}', "reward", "finite"),
        ('{"prompt": "p", "completion": "c", "reward": Infinity}', "reward", "finite"),
        ('{"prompt": "p", "completion": "c", "reward": 1e400}', "reward", "finite"),
        ('{"prompt": "p", "completion": "c", "reward": true}', "reward", "number"),
        ('{"prompt": "p", "completion": "c", "reward": "1"}', "reward", "number"),
        ('{"prompt": "p", "completion": "c"}', "reward", "required"),
        ('{"prompt": 3, "completion": "c", "reward": 0}', "prompt", "string"),
        ('{"prompt": "p", "completion": null, "reward": 0}', "completion", "string"),
        ('["p", "c", 0]', None, "object"),
        ('{"prompt": "p", "completion": "c", "reward": 0', None, "Invalid JSON"),
        ('{"prompt": "p"} trailing', None, "Invalid JSON"),
        ("", None, "blank line"),
        ("   ", None, "blank line"),
    ],
)
def test_first_bad_line_is_reported_with_its_number(
    tmp_path: Path, bad: str, field: str | None, needle: str
) -> None:
    path = jsonl(tmp_path / "s.jsonl", [GOOD, GOOD, bad, GOOD, "garbage"])
    err = samples_error(path)
    assert err.line == 3
    assert err.field == field
    assert needle in str(err)
    assert "s.jsonl:3:" in str(err)


def test_invalid_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode() + b'\n{"prompt": "\xff", "completion": "c", "reward": 0}\n'
    )
    assert samples_error(path).line == 2


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(GOOD).encode()
    )
    assert validate_samples_jsonl(path).samples == 2


def test_all_blank_completions_is_an_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", [{**GOOD, "completion": ""}, {**GOOD, "completion": " \n"}])
    assert "samples_jsonl_all_empty_completions" in str(samples_error(path))


def test_missing_empty_and_too_few(tmp_path: Path) -> None:
    assert "samples_jsonl_not_found" in str(samples_error(tmp_path / "none.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "samples_jsonl_empty" in str(samples_error(empty))
    assert validate_samples_jsonl(empty, min_samples=0).samples == 0
    two = jsonl(tmp_path / "two.jsonl", [GOOD, GOOD])
    assert "samples_jsonl_too_few: expected>=3 got=2" in str(samples_error(two, min_samples=3))


def test_overlong_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", [GOOD, {**GOOD, "completion": "x" * 5000}])
    err = samples_error(path, max_line_bytes=1000)
    assert err.line == 2 and "longer than 1000 bytes" in str(err)


@pytest.mark.slow
def test_200k_lines_validate(tmp_path: Path) -> None:
    line = json.dumps({"prompt": "q" * 40, "completion": "a" * 40, "reward": 0.25}) + "\n"
    path = tmp_path / "big.jsonl"
    path.write_text(line * 200_000, encoding="utf-8")
    report = validate_samples_jsonl(path)
    assert report.samples == 200_000 and report.reward_mean == pytest.approx(0.25)


@pytest.mark.slow
def test_memory_stays_flat_on_a_50mb_file(tmp_path: Path) -> None:
    line = (
        json.dumps({"prompt": "p" * 2000, "completion": "c" * 2900, "reward": 1}) + "\n"
    ).encode()
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        for _ in range(50 * 1024 * 1024 // len(line) + 1):
            fh.write(line)
    assert path.stat().st_size > 50 * 1024 * 1024
    tracemalloc.start()
    try:
        report = validate_samples_jsonl(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.samples > 10_000
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


def test_sample_model_rejects_bool_and_nan() -> None:
    assert Sample.model_validate(GOOD).reward == 1.0
    for reward in (True, float("nan"), float("inf")):
        with pytest.raises(pydantic.ValidationError):
            Sample.model_validate({**GOOD, "reward": reward})


# --- rollout ---------------------------------------------------------------------------


def rollout(repo: Path, data: Any) -> Path:
    path = repo / ".aider_fsm" / "rollout.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def rollout_error(repo: Path, data: Any, **kw: Any) -> ContractError:
    with pytest.raises(ContractError) as info:
        validate_rollout(repo, rollout(repo, data), **kw)
    return info.value


def test_rollout_happy_path(tmp_path: Path) -> None:
    jsonl(tmp_path / "out.jsonl", [GOOD])
    data = {"ok": True, "mode": "smoke", "counts": {"samples": 1, "errors": 0}, "extra": [1]}
    data["paths"] = {"samples_jsonl": "out.jsonl"}
    assert validate_rollout(tmp_path, rollout(tmp_path, data)).samples == 1


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("[1]", "rollout_json_not_object"),
        ("{bad", "invalid_json"),
        (
            {"counts": {"samples": 3, "errors": 3}, "paths": {"samples_jsonl": "s"}},
            "rollout_counts_all_errors: errors=3 samples=3",
        ),
        ({"ok": True}, "rollout_json_missing_paths"),
        ({"paths": {"samples_jsonl": "  "}}, "rollout_json_missing_paths.samples_jsonl"),
        ({"paths": {"samples_jsonl": "missing.jsonl"}}, "samples_jsonl_not_found"),
        ({"paths": {"samples_jsonl": "../outside.jsonl"}}, "samples_jsonl_outside_repo"),
        ({"paths": {"samples_jsonl": "s"}, "counts": {"samples": "many"}}, "rollout_json_invalid"),
    ],
)
def test_rollout_errors(tmp_path: Path, data: Any, code: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    jsonl(tmp_path / "outside.jsonl", [GOOD])
    assert code in str(rollout_error(repo, data))


def test_missing_rollout_json(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="missing_rollout_json"):
        validate_rollout(tmp_path, tmp_path / ".aider_fsm" / "rollout.json")


def test_rollout_invalid_json_names_line(tmp_path: Path) -> None:
    err = rollout_error(tmp_path, '{\n  "ok": true,\n  oops\n}')
    assert err.line == 3


def test_rollout_paths_from_the_sandbox_are_mapped(tmp_path: Path) -> None:
    jsonl(tmp_path / ".aider_fsm" / "s.jsonl", [GOOD])
    data = {"paths": {"samples_jsonl": "/workspace/.aider_fsm/s.jsonl"}}
    report = validate_rollout(tmp_path, rollout(tmp_path, data), workspace="/workspace")
    assert report.path == str((tmp_path / ".aider_fsm" / "s.jsonl").resolve())
    data = {"paths": {"samples_jsonl": "/etc/passwd"}}
    assert "samples_jsonl_outside_repo" in str(
        rollout_error(tmp_path, data, workspace="/workspace")
    )
    absolute = jsonl(tmp_path / "abs.jsonl", [GOOD])
    data = {"paths": {"samples_jsonl": str(absolute)}}
    assert validate_rollout(tmp_path, rollout(tmp_path, data)).samples == 1


def test_rollout_symlink_out_of_repo_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "link.jsonl").symlink_to(jsonl(tmp_path / "secret.jsonl", [GOOD]))
    err = rollout_error(repo, {"paths": {"samples_jsonl": "link.jsonl"}})
    assert "samples_jsonl_outside_repo" in str(err)


# --- metrics ---------------------------------------------------------------------------


def metrics(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "metrics.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_metrics_ok(tmp_path: Path) -> None:
    data = {"ok": True, "score": 0.5, "ts": "now"}
    assert validate_metrics(metrics(tmp_path, data), ["ok", "score"]) == data
    assert validate_metrics(metrics(tmp_path, {"ok": False}), ["score"] * 0) == {"ok": False}


@pytest.mark.parametrize(
    ("data", "required", "needle"),
    [
        ("not json", [], "invalid_json"),
        ("[]", [], "metrics_json_not_object"),
        ({"ok": True}, ["ok", "score", "n"], "missing_keys: score, n"),
        ({"ok": False, "score": 1}, ["ok"], "ok_not_true"),
        ({"ok": "true", "score": 1}, ["ok"], "ok_not_true"),
        ({"ok": 1}, ["ok"], "ok_not_true"),
        ({"ok": True, "score": "0.9"}, ["ok"], "score_invalid"),
        ({"ok": True, "score": True}, ["ok"], "score_invalid"),
        ('{"ok": true, "score": NaN}', ["ok"], "score_invalid"),
        ({"score": None}, [], "score_invalid"),
    ],
)
def test_metrics_errors(tmp_path: Path, data: Any, required: list[str], needle: str) -> None:
    with pytest.raises(ContractError) as info:
        validate_metrics(metrics(tmp_path, data), required)
    assert needle in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "metrics.json"))


def test_metrics_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="metrics_file_missing"):
        validate_metrics(tmp_path / "metrics.json", ["ok"])


# --- hints -----------------------------------------------------------------------------

USED = {"ok": True, "used_anchors": ["pytest -q"], "commands": ["pytest -q"], "reason": ""}
RUN = {"ok": True, "score": 0.75, "chosen_command": "pytest -q", "executed_attempts": 2}


def test_hints_valid(tmp_path: Path) -> None:
    assert validate_hints_used(metrics(tmp_path, USED), [" pytest -q ", "make test"]) == USED
    assert validate_hints_used(metrics(tmp_path, USED), []) == USED
    assert validate_hints_run(metrics(tmp_path, RUN)) == RUN


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({**USED, "ok": "yes"}, "hints_used.ok_not_true"),
        ({**USED, "used_anchors": []}, "hints_used.used_anchors_missing_or_empty"),
        ({**USED, "used_anchors": "pytest"}, "hints_used.used_anchors_missing_or_empty"),
        ({**USED, "used_anchors": ["  ", 3]}, "hints_used.used_anchors_invalid"),
        ({**USED, "used_anchors": ["Pytest -q"]}, "hints_used.no_expected_anchor"),
        ({**USED, "commands": [""]}, "hints_used.commands_invalid"),
        ({**USED, "commands": "pytest"}, "hints_used.commands_invalid"),
        ("[]", "hints_used_json_not_object"),
        ("{", "hints_used_json_invalid"),
    ],
)
def test_hints_used_errors(tmp_path: Path, data: Any, code: str) -> None:
    with pytest.raises(ContractError) as info:
        validate_hints_used(metrics(tmp_path, data), ["pytest -q"])
    assert code in str(info.value)


def test_hints_used_suggests_the_expected_anchor(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="did you mean 'pytest -q'"):
        validate_hints_used(
            metrics(tmp_path, {**USED, "used_anchors": ["pytest -qq"]}), ["pytest -q"]
        )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({**RUN, "ok": False}, "hints_run.ok_not_true"),
        ({**RUN, "chosen_command": " "}, "hints_run.chosen_command_missing"),
        ({**RUN, "executed_attempts": 0}, "hints_run.executed_attempts_invalid"),
        ({**RUN, "executed_attempts": True}, "hints_run.executed_attempts_invalid"),
        ({**RUN, "score": "0.5"}, "hints_run.score_invalid"),
        ({**RUN, "score": 1.5}, "hints_run.score_out_of_range"),
        ({**RUN, "score": -0.1}, "hints_run.score_out_of_range"),
    ],
)
def test_hints_run_errors(tmp_path: Path, data: Any, code: str) -> None:
    with pytest.raises(ContractError) as info:
        validate_hints_run(metrics(tmp_path, data))
    assert code in str(info.value)


def test_missing_hints_files(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="missing_hints_used_json"):
        validate_hints_used(tmp_path / "hints_used.json", [])
    with pytest.raises(ContractError, match="missing_hints_run_json"):
        validate_hints_run(tmp_path / "hints_run.json")


# --- runtime_env.json ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "url"),
    [
        (
            {"inference": {"openai_base_url": "http://h:8000/v1/", "base_url": "x"}},
            "http://h:8000/v1",
        ),
        ({"inference": {"base_url": " http://h:8000 "}}, "http://h:8000/v1"),
        ({"inference": {"base_url": ""}, "service": {"base_url": "http://svc/"}}, "http://svc/v1"),
        ({"service": {"health_url": "http://svc/health"}}, None),
        ({}, None),
    ],
)
def test_runtime_env_base_url(data: dict[str, Any], url: str | None) -> None:
    assert RuntimeEnv.model_validate(data).openai_base_url() == url


def test_runtime_env_is_lenient_and_reads_model(tmp_path: Path) -> None:
    path = metrics(tmp_path, {"ts": 1, "run_id": "r", "inference": {"model": " m "}, "custom": [1]})
    env = load_runtime_env(path)
    assert env is not None and env.openai_model() == "m"
    assert load_runtime_env(tmp_path / "absent.json") is None
    with pytest.raises(ContractError, match="runtime_env_json_not_object"):
        load_runtime_env(metrics(tmp_path, "[]"))
    with pytest.raises(ContractError, match="runtime_env_json_invalid") as info:
        load_runtime_env(metrics(tmp_path, {"service": "http://x"}))
    assert info.value.field == "service"
