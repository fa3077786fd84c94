"""Stage outputs built to hang or exhaust the runner: FIFOs, 2 GB sparse files, a very deep
folder. Reading them must be bounded (time, memory, disk) and end in a reported reason."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.session.machine import EnvSession
from runner.session.results import EvaluationResult
from tests.contract_repos import DEPLOY_SETUP, make_repo
from tests.hostile import HostWatch, docker_setup, labelled_containers, largest_file

pytestmark = pytest.mark.docker

MB = 1 << 20
RUN_DIR_FILE_CAP = 64 * MB
"""No single file the runner writes for these outputs should be bigger than this."""
RSS_GROWTH_CAP = 512 * MB


def _events(sess: EnvSession) -> list[dict[str, object]]:
    lines = (sess.artifacts_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_fifo_outputs_neither_hang_nor_pass(tmp_path: Path, default_image: str) -> None:
    deploy_setup = (
        DEPLOY_SETUP + "rm -f .aider_fsm/runtime_env.json\nmkfifo .aider_fsm/runtime_env.json\n"
    )
    evaluation = (
        "mkfifo .aider_fsm/metrics.json .aider_fsm/hints_used.json\n"
        'mkfifo "$AIDER_FSM_ARTIFACTS_DIR/pipe"\n'
        'echo kept > "$AIDER_FSM_ARTIFACTS_DIR/note.txt"\n'
    )
    repo = make_repo(tmp_path / "repo", deploy_setup=deploy_setup, evaluation=evaluation)
    started = time.monotonic()
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(repair_iters=0)
    assert time.monotonic() - started < 60
    assert not res.ok
    assert res.failed_stage == "metrics"
    assert "metrics_file_missing" in res.reason, res.reason
    aider = repo / ".aider_fsm"
    for name in ("runtime_env.json", "metrics.json", "hints_used.json"):
        assert not (aider / name).exists() or (aider / name).is_file(), name
    refused = [e for e in _events(sess) if e["kind"] == "stage_files_refused"]
    assert refused and "fifo" in str(refused[0]["reason"]), refused
    assert labelled_containers(sess.run_id) == []


@dataclass
class SparseMetricsRun:
    sess: EnvSession
    repo: Path
    res: EvaluationResult
    seconds: float
    watch: HostWatch


@pytest.fixture(scope="module")
def sparse_metrics(
    tmp_path_factory: pytest.TempPathFactory, default_image: str
) -> Iterator[SparseMetricsRun]:
    repo = make_repo(
        tmp_path_factory.mktemp("sparse") / "repo",
        evaluation="truncate -s 2G .aider_fsm/metrics.json\n",
    )
    sess = docker_setup(repo)
    try:
        roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
        started = time.monotonic()
        with HostWatch() as watch:
            res = sess.evaluate(repair_iters=0)
        run = SparseMetricsRun(sess, repo, res, time.monotonic() - started, watch)
        yield run
    finally:
        sess.close()
        shutil.rmtree(repo, ignore_errors=True)


def test_2gb_sparse_metrics_fails_fast_with_bounded_memory_and_disk(
    sparse_metrics: SparseMetricsRun,
) -> None:
    run = sparse_metrics
    assert run.seconds < 60
    assert not run.res.ok
    assert run.res.failed_stage == "metrics"
    assert "metrics.json" in run.res.reason, run.res.reason
    assert run.watch.rss_growth < RSS_GROWTH_CAP, run.watch.rss_growth
    size, path = largest_file(run.sess.artifacts_dir)
    assert size < RUN_DIR_FILE_CAP, path
    host_copy = run.repo / ".aider_fsm" / "metrics.json"
    assert not host_copy.exists() or host_copy.stat().st_size < RUN_DIR_FILE_CAP


def test_2gb_sparse_metrics_is_read_in_bounded_io(sparse_metrics: SparseMetricsRun) -> None:
    # The runner's own reads and writes for this evaluation stay far below the file's size.
    assert sparse_metrics.watch.io_bytes < 256 * MB, sparse_metrics.watch.io_bytes


def test_256mb_sparse_samples_and_artifact_are_read_bounded(
    tmp_path: Path, default_image: str
) -> None:
    rollout = (
        'truncate -s 256M samples.jsonl "$AIDER_FSM_ARTIFACTS_DIR/big.bin"\n'
        """echo '{"ok": true, "paths": {"samples_jsonl": "samples.jsonl"}}' > .aider_fsm/rollout.json\n"""
    )
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    try:
        started = time.monotonic()
        with HostWatch() as watch, docker_setup(repo) as sess:
            roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
        assert time.monotonic() - started < 120
        assert not roll.ok
        assert roll.failed_stage == "rollout"
        # Streamed from the sandbox and refused at the first over-long line.
        assert "samples_jsonl_invalid_line: line is longer than" in roll.reason, roll.reason
        size, path = largest_file(sess.artifacts_dir)
        assert size < RUN_DIR_FILE_CAP, f"{path}: {size} bytes copied into the run dir"
        assert watch.rss_growth < 128 * MB, watch.rss_growth
        notes = sorted(p.name for p in sess.artifacts_dir.rglob("*.omitted"))
        assert notes == ["big.bin.omitted", "samples.jsonl.omitted"], notes
        assert any(e["kind"] == "stage_files_omitted" for e in _events(sess))
    finally:
        shutil.rmtree(repo, ignore_errors=True)  # gigabytes of zeros, if the runner wrote them


def test_samples_over_the_copy_cap_are_validated_in_the_sandbox(
    tmp_path: Path, default_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too big to copy is not a pass: each line is still checked, streamed out."""
    monkeypatch.setenv("FSM_RUNNER_MAX_COPY_BYTES", "1024")
    line = '{"prompt": "p", "completion": "c", "reward": 1}'
    good = f"for i in $(seq 100); do echo '{line}'; done > samples.jsonl\n"
    manifest = """echo '{"ok": true, "paths": {"samples_jsonl": "samples.jsonl"}}' > .aider_fsm/rollout.json\n"""
    repo = make_repo(tmp_path / "good", rollout=good + manifest)
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    assert roll.ok, roll.reason
    assert roll.samples == 100
    assert roll.samples_path is None  # left in the sandbox: nothing on the host to point at
    assert [p.name for p in sess.artifacts_dir.rglob("samples.jsonl*")] == ["samples.jsonl.omitted"]

    bad = good + 'echo \'{"prompt": "p", "completion": 3, "reward": 1}\' >> samples.jsonl\n'
    repo = make_repo(tmp_path / "bad", rollout=bad + manifest)
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    assert not roll.ok
    # Named by its path in the sandbox, with the line and field.
    assert roll.reason.startswith(
        "/workspace/samples.jsonl:101: completion: samples_jsonl_invalid_line"
    ), roll.reason


def test_very_deep_artifact_folder_is_refused_not_raised(
    tmp_path: Path, default_image: str
) -> None:
    evaluation = (
        "python3 -c 'import os\n"
        'os.chdir(os.environ["AIDER_FSM_ARTIFACTS_DIR"])\n'
        "for _ in range(1500):\n"
        '    os.mkdir("d")\n'
        '    os.chdir("d")\n'
        "'\n"
        """echo '{"ok": true, "score": 1}' > .aider_fsm/metrics.json\n"""
    )
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    sess = docker_setup(repo)
    try:
        assert sess.rollout(llm="m", repair_iters=0).ok
        try:
            res = sess.evaluate(repair_iters=0)
        except RecursionError as exc:
            raise AssertionError(f"evaluate() raised instead of reporting: {exc!r}") from exc
    finally:
        sess.close()
    assert res.metrics == {"ok": True, "score": 1}
    assert labelled_containers(sess.run_id) == []


def test_an_exception_in_the_final_copy_out_still_tears_down_and_closes(
    tmp_path: Path, default_image: str
) -> None:
    # Issue 15 item 14. The final copy-out of the evaluation pass raises: a plain file
    # stands where its stage files must land, as a host fault would (disk, permissions).
    # The stage itself leaves artifacts to copy, so the pull has work to do.
    evaluation = (
        'echo evidence > "$AIDER_FSM_ARTIFACTS_DIR/log.txt"\n'
        """echo '{"ok": true, "score": 1}' > .aider_fsm/metrics.json\n"""
    )
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    holder: list[EnvSession] = []

    def progress(msg: str) -> None:
        if msg.startswith("stage evaluation "):
            sess = holder[0]
            blocker = sess.artifacts_dir / "env_api" / "evaluation_attempt_01" / "stage_files"
            blocker.write_text("not a folder\n")

    sess = docker_setup(repo, progress=progress)
    holder.append(sess)
    try:
        with pytest.raises(OSError):
            sess.evaluate(llm="m", repair_iters=0)
        # Checked while the session object is alive: no finalizer has cleaned up for it.
        assert labelled_containers(sess.run_id) == [], "the sandbox was left running"
        kinds = [(e["kind"], e.get("stage"), e.get("to_state")) for e in _events(sess)]
        assert ("stage_end", "deploy_teardown", None) in kinds, "teardown was skipped"
        assert kinds[-1] == ("transition", None, "CLOSED"), kinds[-3:]
        assert (sess.artifacts_dir / "manifest.json").is_file()
        assert str(sess.state) in ("CLOSED", "State.CLOSED")
    finally:
        sess.close()


PARSER_PIPELINE = """\
version: 1
rollout:
  run_cmds: [python3 .aider_fsm/write.py rollout]
evaluation:
  run_cmds: [python3 .aider_fsm/write.py evaluation]
  metrics_path: .aider_fsm/metrics.json
"""
# Writes well-formed outputs except the one the case names, which is 100000 levels deep
# or holds a 5001-digit integer (beyond Python's int_max_str_digits).
PARSER_WRITER = r"""
import json, sys
case = open(".aider_fsm/case").read().strip()
target, _, attack = case.partition(":")
bad = "[" * 100000 + "]" * 100000 if attack == "deep" else "9" * 5001
sample = {"prompt": "p", "completion": "c", "reward": 1.0}
if sys.argv[1] == "rollout":
    with open("samples.jsonl", "w") as fh:
        if target == "samples":
            fh.write('{"prompt": "p", "completion": "c", "reward": ' + (bad if attack == "digits" else '1.0, "meta": ' + bad) + "}\n")
        else:
            fh.write(json.dumps(sample) + "\n")
    text = json.dumps({"ok": True, "paths": {"samples_jsonl": "samples.jsonl"}})
    if target == "rollout":
        text = text[:-1] + ', "extra": ' + bad + "}"
    open(".aider_fsm/rollout.json", "w").write(text)
else:
    text = '{"ok": true, "score": 1' + (', "extra": ' + bad if target == "metrics" else "") + "}"
    open(".aider_fsm/metrics.json", "w").write(text)
"""


@pytest.mark.parametrize(
    ("case", "file", "why"),
    [
        ("metrics:deep", "metrics.json", "nested deeper than"),
        ("metrics:digits", "metrics.json", "too many digits"),
        ("rollout:deep", "rollout.json", "nested deeper than"),
        ("rollout:digits", "rollout.json", "too many digits"),
        ("samples:deep", "samples.jsonl:1", "recursion limit"),
        ("samples:digits", "samples.jsonl:1", "number out of range"),
    ],
)
def test_deep_or_long_numbers_in_outputs_are_a_reason_naming_the_file(
    tmp_path: Path, default_image: str, case: str, file: str, why: str
) -> None:
    # Issue 15 item 12: these raised RecursionError or exited 2 without naming the file.
    repo = make_repo(tmp_path / "repo", pipeline=PARSER_PIPELINE)
    (repo / ".aider_fsm" / "write.py").write_text(PARSER_WRITER)
    (repo / ".aider_fsm" / "case").write_text(case + "\n")
    with docker_setup(repo) as sess:
        if case.startswith("metrics"):
            res = sess.evaluate(llm="m", repair_iters=0)
            assert res.failed_stage == "metrics", res.reason
        else:
            res = sess.rollout(llm="m", require_samples=True, repair_iters=0)  # type: ignore[assignment]
            assert res.failed_stage == "rollout", res.reason
    assert not res.ok
    assert file in res.reason and why in res.reason, res.reason
    assert labelled_containers(sess.run_id) == []


def test_metrics_over_the_read_cap_say_so(sparse_metrics: SparseMetricsRun) -> None:
    # Issue 15 item 12: a 2 GB metrics.json read as its first 16 MiB was "invalid_json".
    reason = sparse_metrics.res.reason
    assert "output_too_large" in reason and "invalid_json" not in reason, reason
    notes = list(sparse_metrics.sess.artifacts_dir.rglob("metrics.json.omitted"))
    assert len(notes) == 1 and "cap" in notes[0].read_text()
