"""A full trivial session in the sandbox vs the same contract's scripts run on the host.

Run: ``python -m benchmarks.session_trivial`` (part of ``make bench``); ``--quick`` for
n=3. Ours: ``runner_env.setup(tiny) -> rollout(require_samples=True) -> evaluate()``
with the Docker backend (container open, bootstrap, deploy, rollout, evaluation,
teardown, output checks, run dir). Baseline: what the predecessor did without any
isolation: the bootstrap commands and the five stage scripts of ``examples/tiny`` run
with ``bash`` directly on the host, in a copy of the repo. Target ratio <= 1.5.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import runner_env
from benchmarks.common import Comparison, Stats, parse_runs, report_comparison, run_interleaved
from runner.contract import load_bootstrap

NAME = "session_trivial"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny"
STAGES = ("deploy_setup", "deploy_health", "rollout", "evaluation", "deploy_teardown")


def _fresh_copy(base: Path) -> Path:
    work = Path(tempfile.mkdtemp(prefix="tiny-", dir=base))
    shutil.copytree(EXAMPLE, work / "repo")
    return work / "repo"


def ours(base: Path) -> None:
    repo = _fresh_copy(base)
    sess = runner_env.setup(repo)
    roll = sess.rollout(llm="bench-model", require_samples=True, repair_iters=0)
    res = sess.evaluate(repair_iters=0)
    if not (roll.ok and res.ok):
        raise RuntimeError(f"session failed: {roll.reason or res.reason}")


def host(base: Path) -> None:
    repo = _fresh_copy(base)
    art = repo / ".aider_fsm" / "artifacts" / "host"
    art.mkdir(parents=True)
    env = {
        **os.environ,
        "AIDER_FSM_REPO_ROOT": str(repo),
        "AIDER_FSM_ARTIFACTS_DIR": str(art),
        "AIDER_EVAL_MODE": "smoke",
        "AIDER_FSM_PYTHON": "python3",
    }
    spec = load_bootstrap(repo / ".aider_fsm" / "bootstrap.yml")
    for cmd in spec.cmds if spec else ():
        subprocess.run(cmd, shell=True, cwd=repo, env=env, check=True, capture_output=True)
    for stage in STAGES:
        subprocess.run(
            ["bash", f".aider_fsm/stages/{stage}.sh"],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    _, n = parse_runs(NAME, argv, quick=3, full=10)
    with tempfile.TemporaryDirectory(prefix="fsm-bench-") as tmp:
        base = Path(tmp)
        timings = run_interleaved(
            {"ours": lambda: ours(base), "host": lambda: host(base)}, n, warmup=1
        )
    comp = Comparison(
        name="trivial_session",
        ours_label="setup + rollout + evaluate of examples/tiny in a Docker sandbox",
        baseline_label="the same bootstrap + 5 stage scripts run with bash on the host (no isolation)",
        ours=Stats(tuple(timings["ours"])),
        baseline=Stats(tuple(timings["host"])),
        target=1.5,
        notes=("ours includes container start/stop, network switches, output validation, run dir",),
    )
    report_comparison(NAME, f"session overhead (median of {n}, interleaved)", comp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
