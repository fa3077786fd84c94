"""A whole ``fsm-runner run --json`` process vs the predecessor's way of running the same contract.

Run: ``python -m benchmarks.run_process`` (part of ``make bench``); ``--quick`` for n=3;
``--before REF`` adds a third side: the same command from git ``REF`` (exported to a
temporary folder), to show what changed in the same run.

* ours: ``fsm-runner run --json <copy of examples/tiny>``, a fresh process: Python's
  start, imports, contract load, a Docker sandbox (open, bootstrap, deploy, rollout,
  evaluation, teardown, every output check), the run dir, the report, the container's
  removal, exit.
* baseline: ``python benchmarks/predecessor_driver.py <copy>``, a fresh process that
  runs the same bootstrap and stage scripts on the host with ``subprocess``, the way the
  predecessor did (bootstrap before every pass, per-command record files), no isolation.

Each side gets its own fresh copy of the repo, made before its timing starts; the
sides alternate round by round, the order flipping (as ``run_interleaved``). Target
(issue 17): ours / baseline <= 1.0.

The breakdown of ours comes from the median run's ``events.jsonl`` (wall-clock stamps)
against the moments the process was started and reaped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Comparison, Stats, machine_facts, parse_runs, save_comparisons

NAME = "run_process"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny"
DRIVER = Path(__file__).resolve().parent / "predecessor_driver.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CI"] = "true"  # plain progress lines, as in a CI job
    # The host's `python3` for the baseline's bootstrap: the real interpreter, not a
    # version-manager shim (a shim would slow the baseline down, flattering ours).
    real = str(Path(os.path.realpath(sys.executable)).parent)
    env["PATH"] = real + os.pathsep + env.get("PATH", "")
    return env


def export_ref(ref: str, dest: Path) -> Path:
    """The runner at git ``ref``, exported to ``dest`` (run with it first on PYTHONPATH)."""
    archive = subprocess.run(
        # images/: the default image's tag is a hash of its files (sandbox/image_files).
        ["git", "-C", str(ROOT), "archive", ref, "runner", "sandbox", "runner_env.py", "images"],
        capture_output=True,
        check=True,
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


class Side:
    """One way of running the contract; ``once()`` copies the repo, then times the process."""

    def __init__(self, name: str, base: Path, cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.base = base
        self.cmd = cmd
        self.env = env
        self.samples: list[float] = []
        self.runs: list[dict[str, Any]] = []

    def once(self, record: bool) -> None:
        work = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.base))
        repo = work / "repo"
        shutil.copytree(EXAMPLE, repo)
        started_wall = time.time()
        started = time.perf_counter()
        proc = subprocess.run(
            [*self.cmd, str(repo)], env=self.env, capture_output=True, text=True, check=False
        )
        elapsed = time.perf_counter() - started
        ended_wall = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if not result.get("ok") or result.get("score") != 0.5:
            raise RuntimeError(f"{self.name}: unexpected result {result}")
        if record:
            self.samples.append(elapsed)
            self.runs.append(
                {
                    "seconds": elapsed,
                    "started": started_wall,
                    "ended": ended_wall,
                    "artifacts_dir": result.get("artifacts_dir"),
                }
            )


def _stamp(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def breakdown(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Where one run of ours went: start-up, sandbox open, each stage, close and exit."""
    events = [
        json.loads(line)
        for line in (Path(run["artifacts_dir"]) / "events.jsonl").read_text().splitlines()
    ]
    at = {e["kind"]: _stamp(e["ts"]) for e in reversed(events)}  # first of each kind
    closed = next(_stamp(e["ts"]) for e in events if e.get("to_state") == "CLOSED")
    rows = [
        (
            "process start -> session created (Python, imports, contract, run dir)",
            run["started"],
            at["session_created"],
        ),
        (
            "session created -> sandbox opened (adopt or create, start, workspace copy)",
            at["session_created"],
            at["sandbox_opened"],
        ),
    ]
    previous_end = at["sandbox_opened"]
    for e in events:
        if e["kind"] == "stage_start":
            rows.append(
                (
                    f"  gap before {e['stage']} (network switch, records)",
                    previous_end,
                    _stamp(e["ts"]),
                )
            )
            start = _stamp(e["ts"])
        elif e["kind"] == "stage_end":
            rows.append((f"stage {e['stage']} (exec incl. engine)", start, _stamp(e["ts"])))
            previous_end = _stamp(e["ts"])
    rows.append(("last stage -> CLOSED (outputs, teardown record)", previous_end, closed))
    rows.append(
        (
            "CLOSED -> process reaped (manifest, report, result, removal joined)",
            closed,
            run["ended"],
        )
    )
    return [{"step": name, "ms": round((b - a) * 1000, 1)} for name, a, b in rows]


def measure(n: int, *, before: str | None, warmup: int = 1) -> dict[str, Any]:
    env = _env()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="fsm-bench-run-") as tmp:
        base = Path(tmp)
        sides = [
            Side("ours", base, [str(Path(py).parent / "fsm-runner"), "run", "--json"], env),
            Side("predecessor", base, [py, str(DRIVER)], env),
        ]
        if before:
            old = export_ref(before, base / "before-src")
            old_env = {**env, "PYTHONPATH": str(old)}
            main = (
                "import sys; from runner.cli.main import main; sys.argv[0] = 'fsm-runner'; main()"
            )
            # -P: no current directory first on sys.path (it would import this tree).
            where = subprocess.run(
                [py, "-P", "-c", "import runner; print(runner.__file__)"],
                env=old_env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if not where.startswith(str(old)):
                raise RuntimeError(f"--before would not run {before}: runner from {where}")
            sides.append(Side("before", base, [py, "-P", "-c", main, "run", "--json"], old_env))
        for round_no in range(warmup + n):
            shift = round_no % len(sides)
            for side in sides[shift:] + sides[:shift]:
                side.once(record=round_no >= warmup)
        by_name = {s.name: s for s in sides}
        ours = by_name["ours"]
        median_run = sorted(ours.runs, key=lambda r: r["seconds"])[len(ours.runs) // 2]
        rows = breakdown(median_run)
    comps = [
        Comparison(
            name="run_process",
            ours_label="fsm-runner run --json examples/tiny (fresh process, Docker sandbox)",
            baseline_label="python benchmarks/predecessor_driver.py (same scripts on the host)",
            ours=Stats(tuple(ours.samples)),
            baseline=Stats(tuple(by_name["predecessor"].samples)),
            target=1.0,
            notes=("each side on its own fresh copy of the repo, made outside the timing",),
        )
    ]
    if before:
        comps.append(
            Comparison(
                name=f"run_process_vs_{before}",
                ours_label="fsm-runner run --json (this tree)",
                baseline_label=f"the same command from git {before}",
                ours=Stats(tuple(ours.samples)),
                baseline=Stats(tuple(by_name["before"].samples)),
                target=1.0,
            )
        )
    return {"comparisons": comps, "breakdown": rows}


def main(argv: Sequence[str] | None = None) -> int:
    args, n = parse_runs(NAME, argv, quick=3, full=12, before="also time this git ref's fsm-runner")
    facts = machine_facts()
    measured = measure(n, before=args.before)
    comps: list[Comparison] = measured["comparisons"]
    path = save_comparisons(
        NAME,
        f"whole process (median of {n}, interleaved)",
        comps,
        argv=argv,
        facts=facts,
        breakdown_of_median_ours=measured["breakdown"],
    )
    print("where the median run of ours went (ms):")
    for row in measured["breakdown"]:
        print(f"  {row['ms']:8.1f}  {row['step']}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
