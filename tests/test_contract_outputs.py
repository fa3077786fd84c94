"""Stage outputs: samples JSONL (streamed, every line checked), rollout, metrics, hints."""

from __future__ import annotations

import json
import random
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
from runner.contract import samples as sample_checks
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


# --- the fast path must agree with the model, line for line ------------------------------
#
# validate_samples_jsonl checks most lines without building a Sample (samples.py fast
# path) and reads in blocks. The reference below is the previous implementation: a Sample
# per line, read with readline. Both must give the same report, or the same error
# (message, line, field), on every file.


def reference_validate(
    path: Path, *, max_line_bytes: int = sample_checks.MAX_SAMPLE_LINE_BYTES
) -> Any:
    count = blank = 0
    total = 0.0
    low = high = None
    with path.open("rb") as fh:
        while raw := fh.readline(max_line_bytes + 1):
            count += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise sample_checks._bad_line(
                    path, count, f"line is longer than {max_line_bytes} bytes"
                )
            if count == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                raise sample_checks._bad_line(
                    path, count, "blank line (every line must be a sample)"
                )
            try:
                sample = Sample.model_validate_json(raw)
            except pydantic.ValidationError as exc:
                field, msg = sample_checks.first_error(exc)
                raise sample_checks._bad_line(path, count, msg, field or None) from exc
            total += sample.reward
            low = sample.reward if low is None else min(low, sample.reward)
            high = sample.reward if high is None else max(high, sample.reward)
            blank += not sample.completion.strip()
    if count == 0:
        raise ContractError("samples_jsonl_empty: the file has no samples", file=path)
    if blank == count:
        raise ContractError(
            "samples_jsonl_all_empty_completions: every completion is blank", file=path
        )
    return sample_checks.SamplesReport(
        path=str(path),
        samples=count,
        blank_completions=blank,
        reward_min=low,
        reward_max=high,
        reward_mean=total / count,
    )


def outcome(fn: Any, path: Path, **kw: Any) -> tuple[Any, ...]:
    try:
        report = fn(path, **kw)
    except ContractError as exc:
        return ("error", str(exc), exc.line, exc.field)
    return ("ok", repr(report.model_dump()))  # repr: tells -0.0 from 0.0


def assert_same_as_reference(path: Path, **kw: Any) -> tuple[Any, ...]:
    ours = outcome(validate_samples_jsonl, path, **kw)
    assert ours == outcome(reference_validate, path, **kw)
    return ours


OK = b'{"prompt": "p", "completion": "c", "reward": 1}'
EDGE_LINES = [
    # rewards: bool, NaN and infinities, strings, null, big and exact-boundary integers
    *(
        b'{"prompt": "p", "completion": "c", "reward": %s}' % r
        for r in (
            *(b"true", b"false", b"null", b'"1"', b"[1]", b"{}"),
            *(b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400"),
            *(b"0", b"-0", b"-0.0", b"0.1", b"1.7976931348623157e308", b"5e-324"),
            *(b"9007199254740992", b"-9007199254740992", b"9007199254740993"),
            *(b"-9007199254740993", b"123456789012345678901234567890", b"1" + b"0" * 400),
            *(b"01", b"1.", b"-", b"+1", b".5", b"0x10"),
        )
    ),
    # missing and ill-typed fields, in every position
    b'{"completion": "c", "reward": 1}',
    b'{"prompt": "p", "reward": 1}',
    b'{"prompt": "p", "completion": "c"}',
    b"{}",
    b'{"prompt": null, "completion": "c", "reward": 1}',
    b'{"prompt": "p", "completion": 1, "reward": 1}',
    b'{"prompt": ["p"], "completion": "c", "reward": 1}',
    b'{"prompt": "p", "completion": {"c": 1}, "reward": 1}',
    b'{"prompt": 1, "completion": 2, "reward": "x"}',
    # not objects
    *(b"[]", b'["p", "c", 1]', b'"text"', b"1", b"null", b"true", b"NaN"),
    # duplicate keys (the last one wins, in both directions)
    b'{"prompt": 1, "prompt": "p", "completion": "c", "reward": 1}',
    b'{"prompt": "p", "prompt": 1, "completion": "c", "reward": 1}',
    b'{"prompt": "p", "completion": "c", "reward": true, "reward": 0.5}',
    b'{"prompt": "p", "completion": "c", "reward": 0.5, "reward": NaN}',
    # extra fields: anything valid JSON is allowed, including NaN and huge numbers
    b'{"prompt": "p", "completion": "c", "reward": 1, "id": 7, "x": [1, {"y": null}]}',
    b'{"prompt": "p", "completion": "c", "reward": 1, "x": NaN, "y": 1e400, "z": -Infinity}',
    b'{"prompt": "p", "completion": "c", "reward": 1, "x": ' + b"[" * 300 + b"]" * 300 + b"}",
    b'{"prompt": "p", "completion": "c", "reward": 1, "x": "\\ud800"}',
    b'{"prompt": "p", "completion": "c", "reward": 1, "x": "\xff"}',
    # strings: escapes, lone surrogates, control characters, invalid UTF-8, non-ASCII
    b'{"prompt": "\\ud83d\\ude00 caf\\u00e9 \\n\\t\\"", "completion": "\xc3\xa9", "reward": 1}',
    b'{"prompt": "\\ud800", "completion": "c", "reward": 1}',
    b'{"prompt": "p", "completion": "\\udc00", "reward": 1}',
    b'{"prompt": "p\x01", "completion": "c", "reward": 1}',
    b'{"prompt": "\xff", "completion": "c", "reward": 1}',
    b'{"prompt": "\xed\xa0\x80", "completion": "c", "reward": 1}',
    b'{"prompt": "p", "completion": "\\x41", "reward": 1}',
    # blank completions: empty, ASCII and Unicode whitespace, a non-breaking space
    *(
        b'{"prompt": "p", "completion": "%s", "reward": 1}' % c
        for c in (b"", b" ", b"\\t\\n", b"\\u00a0", b"\\u2003\\u3000", b"\\u200b", b" x ")
    ),
    # syntax and whitespace around the object
    b'{"prompt": "p", "completion": "c", "reward": 1',
    b'{"prompt": "p", "completion": "c", "reward": 1,}',
    OK + b" trailing",
    OK + b"\x00",
    OK + b"\xff",
    OK + OK,
    b"  " + OK + b" \t",
    b"\x0c" + OK,
    OK + b"\x0b",
    b'{"prompt": "p",\r"completion": "c", "reward": 1}',
    b"\xef\xbb\xbf" + OK,
    # blank lines
    *(b"", b" ", b"\t", b"\r", b"\x0c", b"\x0b", b"\xef\xbb\xbf"),
]


@pytest.mark.parametrize("line", EDGE_LINES, ids=range(len(EDGE_LINES)))
@pytest.mark.parametrize("where", ["first", "middle", "last", "last_without_newline"])
def test_fast_path_agrees_with_the_model(tmp_path: Path, line: bytes, where: str) -> None:
    before = {"first": [], "middle": [OK, OK], "last": [OK], "last_without_newline": [OK]}[where]
    after = [OK] if where in ("first", "middle") else []
    body = b"".join(x + b"\n" for x in [*before, line, *after])
    if where == "last_without_newline":
        body = body.removesuffix(b"\n")
    path = tmp_path / "s.jsonl"
    path.write_bytes(body)
    assert_same_as_reference(path)


def test_fast_path_accepts_what_the_model_accepts(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    ok_lines = (
        b'{"prompt": "p", "completion": "c", "reward": 9007199254740993}',  # via the model
        b'{"prompt": "p", "completion": "c", "reward": 123456789012345678901234567890}',
        b'{"prompt": 1, "prompt": "p", "completion": "c", "reward": 1}',
        b'{"prompt": "p", "completion": "c", "reward": 1, "x": NaN}',
    )
    for line in ok_lines:
        path.write_bytes(line + b"\n")
        assert assert_same_as_reference(path)[0] == "ok", line
    path.write_bytes(b'{"prompt": "p", "completion": "c", "reward": 9007199254740993}\n')
    assert validate_samples_jsonl(path).reward_max == 9007199254740992.0


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 4096])
def test_lines_across_read_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(sample_checks, "_BLOCK_BYTES", block)
    rows = [GOOD, {**GOOD, "reward": -2.5, "completion": ""}, {**GOOD, "prompt": "é" * 50}]
    path = jsonl(tmp_path / "s.jsonl", rows)
    assert assert_same_as_reference(path)[0] == "ok"
    path.write_bytes(path.read_bytes() + b"\n" + OK)
    assert "s.jsonl:4:" in assert_same_as_reference(path)[1]  # the blank line
    path.write_bytes(b"\xef\xbb\xbf" + OK + b"\r\n" + OK)
    assert assert_same_as_reference(path)[0] == "ok"


@pytest.mark.parametrize("block", [1, 5, 10, 11, 12, 64])
@pytest.mark.parametrize("extra", [-1, 0, 1, 2])
@pytest.mark.parametrize("ending", [b"\n", b"", b"\n" + OK + b"\n"])
def test_line_length_limit_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, extra: int, ending: bytes
) -> None:
    """A line of exactly the limit passes, one byte more fails, with or without newline."""
    monkeypatch.setattr(sample_checks, "_BLOCK_BYTES", block)
    limit = len(OK) + extra
    path = tmp_path / "s.jsonl"
    for first in (b"", OK + b"\n", b"\xef\xbb\xbf"):
        path.write_bytes(first + OK + ending)
        assert_same_as_reference(path, max_line_bytes=limit)


def test_random_files_agree_with_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1234)
    path = tmp_path / "s.jsonl"
    seps = [b"\n", b"\r\n", b"\n\n", b"\n \n", b"\r"]
    for round_no in range(300):
        monkeypatch.setattr(sample_checks, "_BLOCK_BYTES", rng.choice([1, 3, 16, 50, 1024]))
        lines = [rng.choice([OK] * 8 + EDGE_LINES) for _ in range(rng.randint(0, 6))]
        body = b"".join(line + rng.choice(seps) for line in lines)
        if rng.random() < 0.3:
            body = body.rstrip(b"\n")
        path.write_bytes(body)
        limit = rng.choice([10, 40, 60, 1000])
        kw = {"max_line_bytes": limit} if round_no % 2 else {}
        assert_same_as_reference(path, **kw)


def test_long_line_is_refused_after_reading_one_block_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(OK + b"\n" + b'{"prompt": "' + b"x" * (8 * 1024 * 1024) + b'"}\n' + OK)
    tracemalloc.start()
    try:
        err = samples_error(path, max_line_bytes=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.line == 2 and "longer than 100000 bytes" in str(err)
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


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
