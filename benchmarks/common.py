"""What the benchmarks share: interleaved runs, robust stats, a table, the command line, JSON.

A comparison always runs *both* sides in the same process, round by round (the order
flips every round), so machine noise and drift hit ours and the baseline alike.
Medians are reported, with p10/p90 to show the spread; a few warm-up rounds are
discarded first (connection pools, page cache, the CLI binary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Summary of one side's samples, in seconds."""

    samples: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p10(self) -> float:
        return percentile(self.samples, 10)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    def to_dict(self) -> dict[str, Any]:
        ms = [round(s * 1000, 3) for s in self.samples]
        return {
            "n": self.n,
            "median_ms": round(self.median * 1000, 3),
            "p10_ms": round(self.p10 * 1000, 3),
            "p90_ms": round(self.p90 * 1000, 3),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "samples_ms": ms,
        }


@dataclass(frozen=True)
class Comparison:
    """Ours vs a baseline for one operation; ``ratio`` = ours median / baseline median."""

    name: str
    ours_label: str
    baseline_label: str
    ours: Stats
    baseline: Stats
    target: float
    """The ratio must be <= this for the target to hold."""
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours.median / self.baseline.median

    @property
    def met(self) -> bool:
        return self.ratio <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ours": {"what": self.ours_label, **self.ours.to_dict()},
            "baseline": {"what": self.baseline_label, **self.baseline.to_dict()},
            "ratio": round(self.ratio, 4),
            "target_ratio_max": self.target,
            "met": self.met,
            "notes": list(self.notes),
            **dict(self.extra),
        }


def time_once(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_interleaved(
    sides: Mapping[str, Callable[[], object]], n: int, *, warmup: int = 2
) -> dict[str, list[float]]:
    """Run every side once per round for ``warmup + n`` rounds; return the last ``n`` timings.

    The order of the sides rotates every round so that neither always runs first (right
    after the other has warmed, or disturbed, the engine).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    names = list(sides)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(warmup + n):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = time_once(sides[name])
            if round_no >= warmup:
                timings[name].append(elapsed)
    return timings


def _read_first(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _cli_version(docker_bin: str | None) -> str | None:
    if docker_bin is None:
        return None
    try:
        proc = subprocess.run(
            [docker_bin, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare figures across machines (never fails)."""
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": _read_first("/proc/cpuinfo", "model name"),
        "mem_total": _read_first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    docker_bin = shutil.which("docker")
    facts["docker_cli"] = {"path": docker_bin, "version": _cli_version(docker_bin)}
    try:
        import docker as docker_sdk

        from sandbox.engine import get_client

        client = get_client()
        version = client.version()
        info = client.info()
        facts["engine"] = {
            "version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "containerd": next(
                (
                    c.get("Version")
                    for c in version.get("Components", [])
                    if c.get("Name") == "containerd"
                ),
                None,
            ),
            "storage_driver": info.get("Driver"),
            "cgroup_version": info.get("CgroupVersion"),
            "cgroup_driver": info.get("CgroupDriver"),
            "operating_system": info.get("OperatingSystem"),
            "engine_kernel": info.get("KernelVersion"),
        }
        facts["docker_sdk"] = getattr(docker_sdk, "__version__", None)
    except Exception as exc:  # a facts probe must not hide the figures
        facts["engine"] = {"error": f"{type(exc).__name__}: {exc}"}
    return facts


def utc_stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def save_result(name: str, payload: Mapping[str, Any], directory: Path | None = None) -> Path:
    """Write ``payload`` to ``<directory>/<name>-<UTC timestamp>.json``; return the path."""
    out_dir = directory or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{utc_stamp()}.json"
    suffix = 1
    while path.exists():  # two runs in the same second
        path = out_dir / f"{name}-{utc_stamp()}-{suffix}.json"
        suffix += 1
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def stats_of(timings: Mapping[str, Sequence[float]]) -> dict[str, Stats]:
    return {name: Stats(tuple(samples)) for name, samples in timings.items()}


def command_line(name: str, argv: Sequence[str] | None = None) -> str:
    """How the benchmark was started (``python -m benchmarks.NAME ...``), for its result."""
    return " ".join([f"python -m benchmarks.{name}", *(argv or sys.argv[1:])])


def run_header(name: str, started: datetime) -> dict[str, Any]:
    """The head of a result payload: which benchmark, its command line, when it ran."""
    return {
        "benchmark": name,
        "command": command_line(name),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_comparisons(
    name: str,
    title: str,
    comps: Sequence[Comparison],
    *,
    argv: Sequence[str] | None = None,
    facts: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Save comparisons with the machine's facts (``facts``, else taken now) and the
    command line; print their table. The caller prints where it went (``saved PATH``)."""
    payload = {
        "command": command_line(name, argv),
        "machine": facts or machine_facts(),
        "comparisons": [c.to_dict() for c in comps],
        **extra,
    }
    path = save_result(name, payload)
    print_comparisons(title, comps)
    return path


def report_comparison(name: str, title: str, comp: Comparison) -> Path:
    """Save one comparison with the machine's facts, print its table and where it went."""
    path = save_comparisons(name, title, [comp])
    print(f"saved {path}")
    return path


# -- the command line ------------------------------------------------------------------


def parse_runs(
    name: str, argv: Sequence[str] | None, *, quick: int, full: int, before: str = ""
) -> tuple[argparse.Namespace, int]:
    """``python -m benchmarks.NAME [--quick] [-n RUNS]`` (and ``--before REF``, helped by
    ``before``, when given); the options and the number of timed runs."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    parser.add_argument("--quick", action="store_true", help=f"n={quick}")
    parser.add_argument("-n", "--runs", type=int, default=None)
    if before:
        parser.add_argument("--before", metavar="REF", help=before)
    args = parser.parse_args(argv)
    return args, args.runs or (quick if args.quick else full)


def reporting_parser(name: str, description: str, quick: str) -> argparse.ArgumentParser:
    """``--quick`` (``quick`` says what it runs), ``--json`` and the hidden ``--results-dir``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", action="store_true", help="print only the saved result path")
    parser.add_argument("--results-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def add_runs_per_side(parser: argparse.ArgumentParser, warmup: int | None) -> None:
    """``-n/--runs`` and ``--warmup`` (default ``warmup``), for a two-sided comparison."""
    parser.add_argument("-n", "--runs", type=int, default=None, help="timed runs per side")
    parser.add_argument("--warmup", type=int, default=warmup, help="discarded rounds first")


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """``[bench] ...`` lines on stderr, dimmed; none with ``--json`` (stdout is the path)."""
    err = Console(stderr=True)

    def say(msg: str) -> None:
        if not args.json:
            err.print(f"[dim]\\[bench] {msg}[/dim]")

    return say


def save_payload(name: str, payload: Mapping[str, Any], args: argparse.Namespace) -> Path | None:
    """Save the result but its ``_`` keys (objects for the caller's printing); with
    ``--json`` print only its path and return None (all is said)."""
    saved = {key: value for key, value in payload.items() if not key.startswith("_")}
    path = save_result(name, saved, args.results_dir)
    if args.json:
        print(path)
        return None
    return path


def _spread(stats: Stats) -> str:
    return f"{stats.median * 1000:.1f} ({stats.p10 * 1000:.0f}-{stats.p90 * 1000:.0f})"


def print_comparisons(
    title: str, comparisons: Sequence[Comparison], console: Console | None = None
) -> None:
    """A table of medians (p10-p90), the ratio ours/baseline and OK / MISSED per target."""
    console = console or Console()
    table = Table(title=title, caption="ms: median (p10-p90)")
    table.add_column("measurement", style="bold")
    table.add_column("n", justify="right")
    table.add_column("ours ms", justify="right")
    table.add_column("baseline ms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result", justify="center")
    for comp in comparisons:
        verdict = "[green]OK[/green]" if comp.met else "[bold red]MISSED[/bold red]"
        table.add_row(
            comp.name,
            str(comp.ours.n),
            _spread(comp.ours),
            _spread(comp.baseline),
            f"{comp.ratio:.2f}",
            f"<= {comp.target:.2f}",
            verdict,
        )
    console.print(table)
    for comp in comparisons:
        console.print(f"[bold]{comp.name}[/bold]: ours = {comp.ours_label}")
        console.print(f"  baseline = {comp.baseline_label}")
        for note in comp.notes:
            console.print(f"  note: {note}")


def print_breakdown(
    title: str, rows: Sequence[Mapping[str, Any]], console: Console | None = None
) -> None:
    """Rows with ``step``, ``calls_per_run`` (None: not a call), ``median_ms``, ``share``."""
    console = console or Console()
    table = Table(title=title)
    table.add_column("step")
    table.add_column("calls/run", justify="right")
    table.add_column("median ms/run", justify="right")
    table.add_column("share", justify="right")
    for row in rows:
        calls = row.get("calls_per_run")
        table.add_row(
            str(row["step"]),
            "" if calls is None else f"{calls:.1f}",
            f"{row['median_ms']:.1f}",
            f"{row['share'] * 100:.0f}%",
        )
    console.print(table)
