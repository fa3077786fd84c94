"""How fast the samples validator reads a large samples JSONL file, and in how much memory.

Run: ``python -m benchmarks.samples_validation`` (part of ``make bench``); ``--quick``
for a smoke run on a 50 MB file. See docs/performance.md.

The file is generated in a temporary directory (deleted afterwards, never in the
repository): 1 GiB of samples like a rollout writes them, about 1 KB per line (a
prompt of 200-1000 characters, a completion of 20-800, a few non-ASCII characters and
newlines escaped as ``json.dumps`` writes them, an integer or float reward, an ``id``
and an ``answer`` extra key).

* Speed, interleaved round by round: ours = ``validate_samples_jsonl(path)``; baseline =
  the plain ``for line in open(path): json.loads(line)`` loop over the same file, which
  checks nothing. Targets: >= 200,000 lines/s for ours, and ratio ours/baseline <= 1.0.
  The file is read once before timing, so both sides read it from the page cache.
* Memory: each side runs in a fresh child process, on a small file (8 MiB) and on the
  large one, and reports its peak RSS (``ru_maxrss``). Target: the peak grows by at most
  16 MiB from the small file to the large one (flat, not proportional to the file).

The exit code is 0 even when a target is missed: a benchmark reports, it does not gate.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.contract import validate_samples_jsonl

from .common import (
    Comparison,
    Stats,
    add_runs_per_side,
    machine_facts,
    print_comparisons,
    progress,
    reporting_parser,
    run_header,
    run_interleaved,
    save_payload,
)

NAME = "samples_validation"
ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

FULL_BYTES = 1024 * MIB
QUICK_BYTES = 50 * MIB
SMALL_BYTES = 8 * MIB
DEFAULT_RUNS = 5
QUICK_RUNS = 3

TARGET_LINES_PER_S = 200_000
TARGET_RATIO = 1.0
TARGET_RSS_GROWTH = 16 * MIB

_VOCABULARY = (
    "the model should answer each question with a short explanation and then the final "
    "number when asked to compute sum product of two integers list every step carefully "
    "return value function def class import from solve equation given that if then else "
    "for while print result error test case input output expected answer is because"
)
_WORDS = tuple(_VOCABULARY.split())
_SPICE = ("naïve", "café", "日本語", "🙂", "\n", "\t", '"quoted"', "x = {'a': 1}")


# -- the samples file ------------------------------------------------------------------


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    parts: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_SPICE) if rng.random() < 0.02 else rng.choice(_WORDS)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:target]


def make_samples(path: Path, total_bytes: int, *, seed: int = 0, pool: int = 1024) -> int:
    """Write a samples JSONL file of at least ``total_bytes`` bytes; return its line count.

    Lines are built from ``pool`` distinct prompt/completion/reward triples, each line
    with its own ``id``. Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    triples: list[tuple[str, str, str]] = []
    for _ in range(pool):
        value = rng.choice((0, 1, 0.5, round(rng.random(), 6), rng.random()))
        triples.append(
            (
                json.dumps(_text(rng, 200, 1000)),
                json.dumps(_text(rng, 20, 800)),
                json.dumps(value),
            )
        )
    lines = written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        while written < total_bytes:
            chunk: list[str] = []
            for _ in range(1000):
                prompt, completion, reward = triples[lines % pool]
                chunk.append(
                    f'{{"id": {lines}, "prompt": {prompt}, "completion": {completion}, '
                    f'"reward": {reward}, "answer": "{lines % 97}"}}\n'
                )
                lines += 1
            data = "".join(chunk)
            fh.write(data)
            written += len(data.encode("utf-8"))
    return lines


# -- the two sides ---------------------------------------------------------------------


def ours(path: Path) -> int:
    """Our validator; the number of lines."""
    return validate_samples_jsonl(path).samples


def baseline(path: Path) -> int:
    """The plain loop: parse every line with the standard library, check nothing."""
    lines = 0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            json.loads(line)
            lines += 1
    return lines


_CHILD = """
import json, re, resource, sys
from pathlib import Path
from benchmarks.samples_validation import baseline, ours

def status_bytes(key):
    with open("/proc/self/status") as fh:
        return int(re.search(key + r":\\s+(\\d+) kB", fh.read()).group(1)) * 1024

try:  # Linux: reset the peak (VmHWM) to the current RSS, so imports do not hide it
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    peak, method = (lambda: status_bytes("VmHWM")), "VmHWM after clear_refs"
except OSError:
    scale = 1 if sys.platform == "darwin" else 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    method = "ru_maxrss"

side, path = sys.argv[1], Path(sys.argv[2])
start = peak()
if side == "read_all":  # a control that is not flat: the whole file in memory
    lines = path.read_bytes().count(b"\\n")
else:
    lines = (ours if side == "ours" else baseline)(path)
print(json.dumps({"rss_start": start, "rss_peak": peak(), "lines": lines, "method": method}))
"""


def peak_rss(side: str, path: Path) -> dict[str, Any]:
    """Run one side on ``path`` in a fresh Python: RSS at the start and peak RSS, bytes.

    ``side`` is ``ours``, ``baseline`` or ``read_all`` (a control that reads the whole
    file at once, to show that the measurement sees memory that grows with the file).

    Raises:
        RuntimeError: the child failed.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, side, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child ({side}) failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# -- command line ----------------------------------------------------------------------


def run_all(
    *, total_bytes: int, n: int, warmup: int, tmp_dir: Path | None, say: Callable[[str], None]
) -> dict[str, Any]:
    """Generate the files, time both sides, measure memory; the result payload."""
    started = datetime.now(UTC)
    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="fsm-bench-samples-", dir=tmp_dir) as tmp:
        big, small = Path(tmp) / "samples.jsonl", Path(tmp) / "small.jsonl"
        say(f"writing {total_bytes / MIB:.0f} MiB of samples to {big}")
        lines = make_samples(big, total_bytes)
        small_lines = make_samples(small, SMALL_BYTES)
        size, small_size = big.stat().st_size, small.stat().st_size
        say("reading it once (page cache) and checking both sides count the same lines")
        if ours(big) != lines or baseline(big) != lines:
            raise RuntimeError("a side did not read every line")
        say(f"timing: {warmup} warm-up + {n} interleaved rounds")
        timings = run_interleaved(
            {"ours": lambda: ours(big), "baseline": lambda: baseline(big)}, n, warmup=warmup
        )
        say("memory: each side in a fresh process, small file then large file")
        memory = {
            side: {"small": peak_rss(side, small), "large": peak_rss(side, big)}
            for side in ("ours", "baseline", "read_all")
        }
    comp = Comparison(
        name="validate_samples",
        ours_label="runner.contract.validate_samples_jsonl(path)",
        baseline_label="for line in open(path): json.loads(line)  (stdlib, no checks)",
        ours=Stats(tuple(timings["ours"])),
        baseline=Stats(tuple(timings["baseline"])),
        target=TARGET_RATIO,
        notes=(f"{lines:,} lines, {size / MIB:.0f} MiB, read from the page cache",),
    )
    throughput = {
        side: {
            "lines_per_s": round(lines / stats.median),
            "mib_per_s": round(size / MIB / stats.median, 1),
        }
        for side, stats in (("ours", comp.ours), ("baseline", comp.baseline))
    }
    growth = {side: m["large"]["rss_peak"] - m["small"]["rss_peak"] for side, m in memory.items()}
    targets = {
        "lines_per_s": {
            "value": throughput["ours"]["lines_per_s"],
            "min": TARGET_LINES_PER_S,
            "met": throughput["ours"]["lines_per_s"] >= TARGET_LINES_PER_S,
        },
        "ratio": {"value": round(comp.ratio, 4), "max": TARGET_RATIO, "met": comp.met},
        "rss_growth_bytes": {
            "value": growth["ours"],
            "max": TARGET_RSS_GROWTH,
            "met": growth["ours"] <= TARGET_RSS_GROWTH,
        },
    }
    return {
        **run_header(NAME, started),
        "runs_per_side": n,
        "warmup_rounds": warmup,
        "file": {
            "bytes": size,
            "lines": lines,
            "avg_line_bytes": round(size / lines, 1),
            "small_bytes": small_size,
            "small_lines": small_lines,
        },
        "machine": facts,
        "results": [comp.to_dict()],
        "throughput": throughput,
        "memory": {**memory, "rss_growth_bytes": growth},
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
        "_comparison": comp,
    }


def _verdict(met: bool) -> str:
    return "[green]OK[/green]" if met else "[bold red]MISSED[/bold red]"


def print_summary(payload: dict[str, Any], console: Console) -> None:
    """Throughput and memory, with their targets."""
    file, thr, mem, tgt = (
        payload["file"],
        payload["throughput"],
        payload["memory"],
        payload["targets"],
    )
    table = Table(title=f"throughput and peak RSS ({file['bytes'] / MIB:.0f} MiB file)")
    table.add_column("measurement", style="bold")
    table.add_column("ours", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result", justify="center")
    table.add_row(
        "lines/s (median)",
        f"{thr['ours']['lines_per_s']:,}",
        f"{thr['baseline']['lines_per_s']:,}",
        f">= {TARGET_LINES_PER_S:,}",
        _verdict(tgt["lines_per_s"]["met"]),
    )
    table.add_row(
        "MiB/s (median)",
        f"{thr['ours']['mib_per_s']:.0f}",
        f"{thr['baseline']['mib_per_s']:.0f}",
        "",
        "",
    )
    table.add_row(
        "RSS MiB at start (after imports)",
        f"{mem['ours']['small']['rss_start'] / MIB:.1f}",
        f"{mem['baseline']['small']['rss_start'] / MIB:.1f}",
        "",
        "",
    )
    for which, label in (("small", f"{SMALL_BYTES // MIB} MiB file"), ("large", "large file")):
        table.add_row(
            f"peak RSS MiB, {label}",
            f"{mem['ours'][which]['rss_peak'] / MIB:.1f}",
            f"{mem['baseline'][which]['rss_peak'] / MIB:.1f}",
            "",
            "",
        )
    table.add_row(
        "peak RSS growth MiB, small -> large",
        f"{mem['rss_growth_bytes']['ours'] / MIB:.1f}",
        f"{mem['rss_growth_bytes']['baseline'] / MIB:.1f}",
        f"<= {TARGET_RSS_GROWTH // MIB}",
        _verdict(tgt["rss_growth_bytes"]["met"]),
    )
    console.print(table)
    console.print(
        f"file: {file['lines']:,} lines, {file['avg_line_bytes']:.0f} bytes/line on average"
    )
    console.print(
        f"control: path.read_bytes() in the same harness grows the peak by "
        f"{mem['rss_growth_bytes']['read_all'] / MIB:.1f} MiB small -> large "
        f"(RSS method: {mem['ours']['large']['method']})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = reporting_parser(
        NAME,
        "Samples JSONL validation speed and memory (see docs/performance.md).",
        quick=f"smoke run: {QUICK_BYTES // MIB} MiB, n={QUICK_RUNS}",
    )
    add_runs_per_side(parser, warmup=1)
    parser.add_argument("--size-mb", type=int, default=None, help="size of the large file, MiB")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to write the files")
    args = parser.parse_args(argv)
    n = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    total = args.size_mb * MIB if args.size_mb else (QUICK_BYTES if args.quick else FULL_BYTES)
    payload = run_all(
        total_bytes=total, n=n, warmup=args.warmup, tmp_dir=args.tmp_dir, say=progress(args)
    )
    path = save_payload(NAME, payload, args)
    if path is None:
        return 0
    out = Console()
    print_comparisons(
        f"samples validation (median of {n} per side, interleaved) - "
        f"{payload['machine']['nproc']} CPU, Python {payload['machine']['python']}",
        [payload["_comparison"]],
        out,
    )
    print_summary(payload, out)
    out.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
