"""Smoke tests of the benchmarks: each measurement runs (n=2 or --quick) and reports; no timing asserts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# ``benchmarks`` is not an installed package (only runner/ and sandbox/ are): import it
# from the repository root, which the ``pytest`` entry point does not put on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import common, samples_validation, sandbox_overhead  # noqa: E402
from runner.contract import validate_samples_jsonl  # noqa: E402


def _check(result: dict[str, object]) -> None:
    ours, baseline = result["ours"], result["baseline"]
    assert isinstance(ours, dict) and isinstance(baseline, dict)
    assert ours["n"] == 2 and baseline["n"] == 2
    assert ours["median_ms"] > 0
    assert baseline["median_ms"] > 0
    assert isinstance(result["ratio"], float) and result["ratio"] > 0
    assert isinstance(result["met"], bool)


def test_stats_and_interleaving() -> None:
    assert common.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert common.percentile([0.0, 10.0], 10) == pytest.approx(1.0)
    order: list[str] = []
    timings = common.run_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2, warmup=1
    )
    assert order == ["a", "b", "b", "a", "a", "b"]  # the first side alternates
    assert [len(v) for v in timings.values()] == [2, 2]


def test_make_repo_shape(tmp_path: Path) -> None:
    repo = sandbox_overhead.make_repo(tmp_path / "repo", total_bytes=200_000)
    files = [p for p in repo.rglob("*") if p.is_file()]
    assert len(files) == 200
    assert len({p.parent for p in files}) == 10
    assert sum(p.stat().st_size for p in files) == 200_000


@pytest.mark.docker
def test_exec_true_measures(default_image: str) -> None:
    comp = sandbox_overhead.measure_exec_true(2, warmup=0, image=default_image)
    _check(comp.to_dict())


@pytest.mark.docker
def test_open_close_measures(default_image: str, tmp_path: Path) -> None:
    repo = sandbox_overhead.make_repo(tmp_path / "repo", total_bytes=400_000)
    comp = sandbox_overhead.measure_open_close(2, warmup=0, image=default_image, repo=repo)
    result = comp.to_dict()
    _check(result)
    assert result["repo"] == {"files": 200, "bytes": 400_000}


@pytest.mark.docker
def test_cli_quick_run_saves_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--runs", "2", "--warmup", "0", "--json", "--profile", "always"]
    rc = sandbox_overhead.main([*argv, "--results-dir", str(tmp_path)])
    assert rc == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == tmp_path and path.name.startswith("sandbox_overhead-")
    payload = json.loads(path.read_text())
    assert [r["name"] for r in payload["results"]] == ["exec_true", "open_close"]
    for result in payload["results"]:
        _check(result)
    assert set(payload["profiles"]) == {"exec_true", "open_close"}
    assert payload["machine"]["nproc"] and payload["machine"]["kernel"]


def test_make_samples_is_valid_and_about_1kb_a_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    lines = samples_validation.make_samples(path, 2 * 1024 * 1024)
    size = path.stat().st_size
    assert size >= 2 * 1024 * 1024
    assert lines == path.read_bytes().count(b"\n") > 1000
    assert 800 < size / lines < 1400
    assert validate_samples_jsonl(path).samples == lines
    assert samples_validation.baseline(path) == lines


@pytest.mark.slow
def test_samples_validation_quick_run_saves_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--json", "--results-dir", str(tmp_path), "--tmp-dir", str(tmp_path)]
    assert samples_validation.main(argv) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == tmp_path and path.name.startswith("samples_validation-")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the samples were deleted
    payload = json.loads(path.read_text())
    assert payload["file"]["bytes"] >= samples_validation.QUICK_BYTES
    (result,) = payload["results"]
    assert result["ours"]["n"] == result["baseline"]["n"] == samples_validation.QUICK_RUNS
    assert result["ratio"] > 0 and isinstance(result["met"], bool)
    assert payload["throughput"]["ours"]["lines_per_s"] > 0
    assert set(payload["targets"]) == {"lines_per_s", "ratio", "rss_growth_bytes"}
    growth = payload["memory"]["rss_growth_bytes"]
    # The probe sees a reader that keeps the whole file (the control) ...
    assert growth["read_all"] > 30 * 1024 * 1024, growth
    # ... and ours does not grow with the file (no timing asserts: machines differ).
    assert growth["ours"] < samples_validation.TARGET_RSS_GROWTH, growth


# -- issue 17 benchmarks -------------------------------------------------------------


def test_predecessor_driver_runs_the_tiny_contract_on_the_host(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from benchmarks import predecessor_driver, run_process

    repo = tmp_path / "repo"
    shutil.copytree(run_process.EXAMPLE, repo)
    proc = subprocess.run(
        [sys.executable, predecessor_driver.__file__, str(repo)],
        capture_output=True,
        text=True,
        env=run_process._env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True, "score": 0.5}
    (run,) = (repo / ".aider_fsm" / "artifacts").iterdir()
    env_api = run / "env_api"
    # Bootstrap before every pass, as the predecessor did; teardown at the end.
    assert sorted(
        p.parent.parent.name for p in env_api.glob("*/bootstrap/bootstrap_summary.json")
    ) == [
        "deploy_attempt_01",
        "evaluation_attempt_01",
        "rollout_attempt_01",
    ]
    assert (env_api / "final_teardown" / "deploy_teardown").is_dir()


def test_startup_measures_each_side() -> None:
    from benchmarks import startup

    comps, extra = startup.measure(1, warmup=0)
    assert [c.name for c in comps] == ["import_runner_env", "fsm_runner_help"]
    for comp in comps:
        assert comp.ours.median > 0 and comp.baseline.median > 0
    assert set(extra["absolute"]) == {"help", "import"}
    assert all(v > 0 for v in extra["cpu_median_ms"].values())


def test_workspace_copy_tree_and_the_old_copy_agree(tmp_path: Path) -> None:
    from benchmarks import workspace_copy
    from sandbox.volume_fill import copy_tree

    tree = workspace_copy.make_tree(tmp_path / "tree", n_files=300)
    files = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    assert len(files) == 300 and len({p.parent for p in files}) > 20
    for name, copy in (("new", copy_tree), ("old", workspace_copy.legacy_copy_tree)):
        dest = tmp_path / name
        dest.mkdir()
        copy(tree, dest)
        assert sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) == files
        assert all((dest / f).read_bytes() == (tree / f).read_bytes() for f in files)
