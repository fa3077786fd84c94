"""RunDir: unique run ids under concurrency, the predecessor's layout, redaction everywhere."""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import runner.runs.run_dir as artifacts
from runner.runs.report import load_run, render_markdown, run_status, summary_json
from runner.runs.run_dir import (
    MAX_TEXT_CHARS,
    RUN_ID_RE,
    CommandRecord,
    RunDir,
    cap_text,
    list_runs,
)

SECRET = "sk-abc123xyz"


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [
        (p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    ]


def record(stdout: str = "out", **kw: object) -> CommandRecord:
    fields: dict[str, object] = {
        "exit_code": 0,
        "stdout": stdout,
        "stderr": "err",
        "timed_out": False,
        "duration_s": 1.23456,
    }
    fields.update(kw)
    return CommandRecord(**fields)  # type: ignore[arg-type]


def test_fifty_concurrent_creates_on_one_repo_get_distinct_dirs(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda _: RunDir.create(tmp_path), range(50)))
    assert len({r.run_id for r in runs}) == 50
    assert len({r.path for r in runs}) == 50
    base = (tmp_path / ".aider_fsm" / "artifacts").resolve()
    for r in runs:
        assert RUN_ID_RE.fullmatch(r.run_id), r.run_id
        assert r.path == base / r.run_id and r.path.is_dir()


def test_create_retries_when_the_id_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = iter(["20250101_000000_aaaaaa", "20250101_000000_aaaaaa", "20250101_000000_bbbbbb"])
    monkeypatch.setattr(artifacts, "new_run_id", lambda now=None: next(ids))
    first = RunDir.create(tmp_path, base=tmp_path / "runs")
    second = RunDir.create(tmp_path, base=tmp_path / "runs")
    assert (first.run_id, second.run_id) == ("20250101_000000_aaaaaa", "20250101_000000_bbbbbb")


def test_base_overrides_the_repo_location(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "repo", base=tmp_path / "elsewhere")
    assert run.path.parent == (tmp_path / "elsewhere").resolve()
    assert not (tmp_path / "repo").exists()


def test_secrets_from_env_never_reach_any_file(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    quoted = 'pa"ss\\word-42'
    run.add_secrets_from_env(
        {
            "OPENAI_API_KEY": SECRET,
            "DB_PASSWORD": quoted,
            "SOME_URL_NOT_NAMED_SECRET": "hf_tokenvalue12345",
            "PWD": str(tmp_path),
            "TOKENIZERS_PARALLELISM": "false",
            "AIDER_FSM_MAX_TOKENS": "4096",
        }
    )
    line = f"key={SECRET} pw={quoted} hf=hf_tokenvalue12345"
    run.event("stage_start", stage="tests", env={"OPENAI_API_KEY": SECRET}, note=line)
    run.write_text("notes.txt", line)
    run.write_json("env.json", {"OPENAI_API_KEY": SECRET, "list": [quoted], SECRET: 1})
    run.write_bytes("outputs/raw.bin", line.encode() + b"\xff\x00")
    d = run.subdir("env_api", "rollout_attempt_01")
    rec = record(stdout=line, stderr=f"Authorization: Bearer {SECRET}", blocked_reason=line)
    run.record_command(d, "rollout", 0, 0, f"curl -H 'Authorization: Bearer {SECRET}' x", rec)
    run.write_stage_summary(d, "rollout", ok=False, failed_index=0, total_results=1)
    pulled = d / "stage_files"
    pulled.mkdir()
    (pulled / "trace.log").write_text(line)  # written by the sandbox pull, then scrubbed
    assert run.scrub_tree(pulled) == 1

    files = all_bytes(run.path)
    assert len(files) >= 12
    escaped = json.dumps(quoted)[1:-1].encode()
    for path, data in files:
        for needle in (SECRET.encode(), quoted.encode(), escaped, b"hf_tokenvalue12345"):
            assert needle not in data, f"{needle!r} leaked into {path}"
    text = (run.path / "notes.txt").read_text()
    assert text == "key=*** pw=*** hf=***"
    # Values that are not secrets stay readable: paths, booleans, numbers.
    assert run.redact(f"{tmp_path} false 4096") == f"{tmp_path} false 4096"


def test_redaction_longest_first_and_short_values_ignored(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    run.add_secret("abcd")
    run.add_secret("abcdefgh")
    run.add_secret("xyz")  # too short: masking it would garble logs
    run.add_secret("EMPTY")  # the vLLM placeholder key
    assert run.redact("abcdefgh abcd xyz EMPTY") == "*** *** xyz EMPTY"


def test_unregistered_token_shapes_are_masked_but_lookalikes_kept(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    token = "sk-proj-" + "A1b2C3d4" * 4
    assert run.redact(f"found {token} in .env") == "found *** in .env"
    assert run.redact("pip install scikit-learn sk-learn hf_hub_download") == (
        "pip install scikit-learn sk-learn hf_hub_download"
    )


def test_record_command_uses_the_predecessor_file_names(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    d = run.subdir("env_api", "evaluation_attempt_01")
    run.record_command(d, "evaluation", 0, 0, "echo 1", record(stdout="first"))
    run.record_command(
        d, "evaluation", 1, 1, "echo 2", record(stdout="second", exit_code=3, oom_killed=True)
    )
    run.write_stage_summary(d, "evaluation", ok=False, failed_index=1, total_results=2)
    names = {p.name for p in d.iterdir()}
    expected = {
        f"evaluation_cmd{c}_try{t}_{s}"
        for c, t in (("01", "01"), ("02", "02"))
        for s in ("cmd.txt", "stdout.txt", "stderr.txt", "result.json")
    }
    expected |= {f"evaluation_{s}" for s in ("cmd.txt", "stdout.txt", "stderr.txt", "result.json")}
    assert names == expected | {"evaluation_summary.json"}
    assert (d / "evaluation_stdout.txt").read_text() == "second"  # the last command's copy
    assert (d / "evaluation_cmd01_try01_stdout.txt").read_text() == "first"
    result = json.loads((d / "evaluation_result.json").read_text())
    assert result == {
        "rc": 3,
        "timed_out": False,
        "duration_s": 1.235,
        "oom_killed": True,
        "truncated": False,
        "blocked_reason": None,
        "disk_exceeded": False,
    }
    assert list(result) == [
        "rc",
        "timed_out",
        "duration_s",
        "oom_killed",
        "truncated",
        "blocked_reason",
        "disk_exceeded",
    ]
    summary = json.loads((d / "evaluation_summary.json").read_text())
    assert summary == {"ok": False, "failed_index": 1, "total_results": 2}
    events = [json.loads(x) for x in (run.path / "events.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["index"], e["rc"]) for e in events] == [
        ("command", 0, 0),
        ("command", 1, 3),
    ]
    assert events[0]["dir"] == "env_api/evaluation_attempt_01"


@pytest.mark.parametrize("stage", ["../x", "a/b", "", ".hidden"])
def test_record_command_refuses_stage_names_that_are_paths(tmp_path: Path, stage: str) -> None:
    run = RunDir.create(tmp_path)
    with pytest.raises(ValueError):
        run.record_command(run.path, stage, 0, 0, "x", record())


def test_three_megabyte_text_is_capped_with_a_visible_marker(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    text = "H" * 1_500_000 + "T" * 1_500_000
    path = run.write_text("big.txt", text)
    written = path.read_text()
    assert "[truncated 1000000 chars]" in written
    assert len(written) < MAX_TEXT_CHARS + 100
    assert written.startswith("H" * 1000) and written.endswith("T" * 1000)
    assert cap_text("small") == "small"


def test_cap_never_leaves_half_a_secret(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    secret = "s3cr3t-" + "x" * 50
    run.add_secret(secret)
    text = "a" * (MAX_TEXT_CHARS // 2 - 10) + secret + "b" * MAX_TEXT_CHARS
    written = run.write_text("cut.txt", text).read_text()
    assert "s3cr3t" not in written


def test_events_from_many_threads_are_whole_json_lines(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)

    def emit(n: int) -> None:
        for i in range(40):
            run.event("tick", thread=n, i=i, path=tmp_path, blob="x" * 5000)

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (run.path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 320
    ts_re = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
    for line in lines:
        rec = json.loads(line)
        assert list(rec)[:2] == ["ts", "kind"] and ts_re.fullmatch(rec["ts"])
        assert rec["path"] == str(tmp_path) and "[truncated" in rec["blob"]
    with pytest.raises(ValueError):
        run.event("bad", ts="mine")


@pytest.mark.parametrize("rel", ["../escape.txt", "/etc/passwd", "a/../../b.txt", ""])
def test_writes_outside_the_run_dir_are_refused(tmp_path: Path, rel: str) -> None:
    run = RunDir.create(tmp_path)
    with pytest.raises(ValueError):
        run.write_text(rel, "x")
    assert not (tmp_path / ".aider_fsm" / "artifacts" / "escape.txt").exists()


def test_subdir_refuses_escapes_and_symlinked_dirs(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    for parts in (("..",), ("/tmp",), ("a", "../../x")):
        with pytest.raises(ValueError):
            run.subdir(*parts)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, run.path / "link")
    with pytest.raises(ValueError):
        run.write_text("link/x.txt", "x")
    assert not (outside / "x.txt").exists()
    assert run.subdir("env_api", "tests") == run.path / "env_api" / "tests"


def test_scrub_tree_does_not_follow_symlinks(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    run.add_secret(SECRET)
    victim = tmp_path / "victim.txt"
    victim.write_text(SECRET)
    pulled = run.subdir("stage_files")
    os.symlink(victim, pulled / "link.txt")
    assert run.scrub_tree(pulled) == 0
    assert victim.read_text() == SECRET
    with pytest.raises(ValueError):
        run.scrub_tree(tmp_path)


def test_list_runs_newest_first_with_status_tolerating_bad_lines(tmp_path: Path) -> None:
    base = tmp_path / "runs"
    ended = RunDir("20250103_120000_cccccc", base / "20250103_120000_cccccc")
    crashed = RunDir("20250102_120000_bbbbbb", base / "20250102_120000_bbbbbb")
    for r in (ended, crashed):
        r.path.mkdir(parents=True)
    ended.event("evaluation_end", ok=True)
    ended.event("transition", from_state="EVALUATED", to_state="CLOSED")
    crashed.event("rollout_end", ok=False)
    crashed.event("stage_start", stage="evaluation")
    with open(crashed.path / "events.jsonl", "a") as fh:
        fh.write('{"ts": "2025-01-02T12:00:01.000Z", "kind": "stage_e')  # cut off mid-line
    (base / "20241231_235959").mkdir()  # the predecessor's id: no events
    (base / "scaffold").mkdir()  # not a run dir
    (base / "20250104_000000_dddddd").write_text("a file, not a dir")

    runs = list_runs(tmp_path, base=base)
    assert [r.run_id for r in runs] == [
        "20250103_120000_cccccc",
        "20250102_120000_bbbbbb",
        "20241231_235959",
    ]
    assert [(r.status, r.ok, r.events) for r in runs] == [
        ("CLOSED", True, 2),
        ("incomplete", False, 2),  # no final event: killed (issue 15 item 8)
        ("no events", None, 0),
    ]
    assert runs[0].started_at.year == 2025 and runs[0].last_ts is not None


def test_killed_or_interrupted_runs_never_read_as_ok(tmp_path: Path) -> None:
    """Issue 15 item 8: a SIGKILLed run whose rollout passed, and a run stopped by SIGTERM
    during evaluation, are "incomplete" and "interrupted", never ok."""
    base = tmp_path / "runs"
    killed = RunDir("20250105_120000_aaaaaa", base / "20250105_120000_aaaaaa")
    stopped = RunDir("20250106_120000_bbbbbb", base / "20250106_120000_bbbbbb")
    for r in (killed, stopped):
        r.path.mkdir(parents=True)
        r.event("rollout_end", ok=True)
        r.event("evaluation_start")
    stopped.event("interrupted", signal="SIGTERM")
    stopped.event("transition", from_state="ROLLED_OUT", to_state="CLOSED")
    runs = {r.run_id: r for r in list_runs(tmp_path, base=base)}
    assert (runs[killed.run_id].status, runs[killed.run_id].ok) == ("incomplete", None)
    assert (runs[stopped.run_id].status, runs[stopped.run_id].ok) == ("interrupted", False)
    for r, status in ((killed, "incomplete"), (stopped, "interrupted")):
        summary = load_run(r.path)
        assert summary.ok is not True and run_status(summary) == status
        assert summary_json(summary)["ok"] is False
        assert status in render_markdown(summary)
    assert "interrupted by SIGTERM" in load_run(stopped.path).reason


def test_list_runs_default_location_and_missing_dir(tmp_path: Path) -> None:
    assert list_runs(tmp_path) == []
    run = RunDir.create(tmp_path)
    run.event("session_created")
    assert [r.run_id for r in list_runs(tmp_path)] == [run.run_id]
