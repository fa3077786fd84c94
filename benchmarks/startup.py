"""How long the command and the library take to load: ``fsm-runner --help`` and ``import runner_env``.

Run: ``python -m benchmarks.startup`` (part of ``make bench``); ``--quick`` for n=5;
``--before REF`` also times both commands from git ``REF`` (exported, run with ``-P``).

Each side is a fresh interpreter (``subprocess``), so the figure is what a user waits
for, start-up included. Sides, interleaved round by round (``run_interleaved``):

* ``help``: ``fsm-runner --help`` (the installed console script);
* ``import``: ``python -c 'import runner_env'``;
* ``eager``: ``python -c 'import runner_env; runner_env.setup; runner_env.run_many'``:
  every name touched, so everything ``runner_env`` used to import up front is loaded
  (what ``import runner_env`` cost before issue 17);
* ``python``: ``python -c pass``, the interpreter's own floor.

Targets (issue 17): ``help`` and ``import`` medians <= 150 ms. Printed ratios:
``import`` / ``eager`` (what laziness saves) and ``help`` / ``python`` (what the CLI
costs above a bare interpreter). The child's CPU time (user + sys, from ``wait4``) is
recorded too: it moves less than wall time when the machine is shared.

Bytecode: ``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment and a
warm-up round runs first, so modules load from ``__pycache__`` as in any installed
copy (pip compiles on install); without a cache every import compiles its source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Comparison, parse_runs, run_interleaved, save_comparisons, stats_of
from benchmarks.run_process import export_ref

NAME = "startup"
ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 150.0


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CI"] = "true"
    return env


def _timed(cmd: list[str], cpu: list[float], env: dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} exited {proc.returncode} (run it to see why)")
        cpu.append(usage.ru_utime + usage.ru_stime)

    return run


def measure(
    n: int, warmup: int = 2, *, before: Path | None = None
) -> tuple[list[Comparison], dict[str, Any]]:
    py = sys.executable
    fsm = str(Path(py).parent / "fsm-runner")
    commands = {
        "help": [fsm, "--help"],
        "import": [py, "-c", "import runner_env"],
        "eager": [py, "-c", "import runner_env; runner_env.setup; runner_env.run_many"],
        "python": [py, "-c", "pass"],
    }
    envs = {name: _child_env() for name in commands}
    if before is not None:  # the same two commands from an exported git ref
        main = "import sys; from runner.cli.main import main; sys.argv[0] = 'fsm-runner'; main()"
        commands["help_before"] = [py, "-P", "-c", main, "--help"]
        commands["import_before"] = [py, "-P", "-c", "import runner_env"]
        for name in ("help_before", "import_before"):
            envs[name] = {**_child_env(), "PYTHONPATH": str(before)}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    sides = {name: _timed(cmd, cpu[name], envs[name]) for name, cmd in commands.items()}
    timings = run_interleaved(sides, n, warmup=warmup)
    stats = stats_of(timings)
    cpu_ms = {
        name: round(sorted(values[warmup:])[len(values[warmup:]) // 2] * 1000, 1)
        for name, values in cpu.items()
    }
    absolute = {
        name: {
            "median_ms": round(stats[name].median * 1000, 1),
            "cpu_median_ms": cpu_ms[name],
            "target_ms": TARGET_MS,
            "met": stats[name].median * 1000 <= TARGET_MS,
        }
        for name in ("help", "import")
    }
    comparisons = [
        Comparison(
            name="import_runner_env",
            ours_label="python -c 'import runner_env' (lazy names)",
            baseline_label="python -c 'import runner_env; runner_env.setup; runner_env.run_many'"
            " (everything loaded, as before issue 17)",
            ours=stats["import"],
            baseline=stats["eager"],
            target=1.0,
            notes=(
                f"absolute: {absolute['import']['median_ms']} ms (target <= {TARGET_MS:.0f} ms); "
                f"CPU {cpu_ms['import']} ms vs {cpu_ms['eager']} ms",
            ),
        ),
        Comparison(
            name="fsm_runner_help",
            ours_label="fsm-runner --help",
            baseline_label="python -c pass (the interpreter alone)",
            ours=stats["help"],
            baseline=stats["python"],
            target=TARGET_MS / max(1.0, stats["python"].median * 1000),
            notes=(
                f"absolute: {absolute['help']['median_ms']} ms (target <= {TARGET_MS:.0f} ms, "
                "shown as the ratio target); "
                f"CPU {cpu_ms['help']} ms vs {cpu_ms['python']} ms",
            ),
        ),
    ]
    if before is not None:
        for name, label in (("help", "fsm-runner --help"), ("import", "import runner_env")):
            comparisons.append(
                Comparison(
                    name=f"{name}_vs_before",
                    ours_label=f"{label} (this tree)",
                    baseline_label=f"{label} from the --before ref",
                    ours=stats[name],
                    baseline=stats[f"{name}_before"],
                    target=1.0,
                    notes=(f"CPU {cpu_ms[name]} ms vs {cpu_ms[f'{name}_before']} ms",),
                )
            )
    return comparisons, {"absolute": absolute, "cpu_median_ms": cpu_ms}


def main(argv: Sequence[str] | None = None) -> int:
    args, n = parse_runs(NAME, argv, quick=5, full=20, before="also time this git ref's commands")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fsm-bench-startup-") as tmp:
        before = export_ref(args.before, Path(tmp) / "src") if args.before else None
        comparisons, extra = measure(n, before=before)
    elapsed = round(time.time() - started, 1)
    title = f"start-up (median of {n}, interleaved, fresh interpreters)"
    path = save_comparisons(NAME, title, comparisons, argv=argv, elapsed_s=elapsed, **extra)
    for name, fig in extra["absolute"].items():
        verdict = "OK" if fig["met"] else "MISSED"
        print(
            f"{name}: {fig['median_ms']} ms wall, {fig['cpu_median_ms']} ms CPU "
            f"(target <= {TARGET_MS:.0f} ms): {verdict}"
        )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
