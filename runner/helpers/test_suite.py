"""Stage helper: run a project's test suite and write its pass/fail counts as metrics.

    python3 -m runner.helpers.test_suite [--metrics PATH] [--junit PATH] -- CMD [ARG...]

``fsm-runner init --tests`` writes a contract whose evaluation is this helper around
``python -m pytest``, so a project's own tests become its score with no glue to write
(issue 16.6). pytest (``python -m pytest``, ``pytest``, ``py.test``) gets
``--junitxml=PATH`` added; another runner must be told to write JUnit XML to ``--junit``.
Counts come from that XML; without it, from the summary line the command printed.

Runs INSIDE the sandbox with the standard library only. Metrics written (default
``.aider_fsm/metrics.json``): ``ok`` (the command exited 0, nothing failed, at least one
test ran), ``score`` (passed / (passed + failed + errors)), ``tests``, ``passed``,
``failed``, ``errors``, ``skipped``, ``exit_code`` and ``counts_from`` (``junit`` or
``output``). Exit status: the test command's, so a failing suite fails the stage (the
runner still keeps these counts, marked not accepted); 2 when no counts were found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

if not __package__:  # run as a file path: import our own package, not a target's `runner`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runner.trust.hint_scores import parse_test_counts

MAX_XML_BYTES = 64_000_000
"""A JUnit file larger than this is not parsed (counts then come from the output)."""
KEEP_OUTPUT = 2_000_000
"""Bytes of the command's output kept for the summary-line fallback: summaries come last."""
_COUNT_KEYS = ("tests", "failures", "errors", "skipped")


def junit_counts(path: Path) -> dict[str, int] | None:
    """``{tests, passed, failed, errors, skipped}`` from a JUnit XML file, or None.

    The top element's totals when it has them (pytest's ``<testsuites>``/``<testsuite>``),
    else the sum over the ``<testsuite>`` elements directly below it.
    """
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_XML_BYTES:
            return None
        root = ET.parse(path).getroot()  # expat >= 2.4 refuses entity-expansion bombs
    except (OSError, ET.ParseError):
        return None
    if root.tag not in ("testsuites", "testsuite"):
        return None
    suites = [root] if root.get("tests") is not None else [s for s in root if s.tag == "testsuite"]
    totals = dict.fromkeys(_COUNT_KEYS, 0)
    found = False
    for suite in suites:
        for key in _COUNT_KEYS:
            raw = suite.get(key, "0") or "0"
            if raw.isdigit():
                totals[key] += int(raw)
                found = found or key == "tests"
    if not found:
        return None
    failed, errors, skipped = totals["failures"], totals["errors"], totals["skipped"]
    passed = max(0, totals["tests"] - failed - errors - skipped)
    return {
        "tests": totals["tests"],
        "passed": passed,
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
    }


def metrics_from(counts: dict[str, int] | None, exit_code: int, source: str) -> dict[str, object]:
    """The metrics object for ``counts`` (None: no counts, a failed evaluation)."""
    if counts is None:
        return {"ok": False, "score": 0.0, "exit_code": exit_code, "counts_from": "none"}
    scored = counts["passed"] + counts["failed"] + counts["errors"]
    bad = counts["failed"] + counts["errors"]
    return {
        "ok": exit_code == 0 and bad == 0 and counts["passed"] > 0,
        "score": round(counts["passed"] / scored, 6) if scored else 0.0,
        **counts,
        "exit_code": exit_code,
        "counts_from": source,
    }


def _is_pytest(cmd: list[str]) -> bool:
    head = [Path(w).name for w in cmd[:3]]
    return bool(head) and (
        head[0] in ("pytest", "py.test") or (len(head) >= 3 and head[1:3] == ["-m", "pytest"])
    )


def _run(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd``, its output passed through as it comes; return (exit code, output tail)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pipe = proc.stdout
    assert pipe is not None
    tail = b""
    while chunk := os.read(pipe.fileno(), 65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        tail = (tail + chunk)[-KEEP_OUTPUT:]
    return proc.wait(), tail.decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m runner.helpers.test_suite")
    parser.add_argument("--metrics", default=".aider_fsm/metrics.json")
    default_junit = os.path.join(os.environ.get("AIDER_FSM_ARTIFACTS_DIR") or ".", "junit.xml")
    parser.add_argument("--junit", default=default_junit)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the test command after --")
    junit = Path(args.junit)
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)  # a stale report must never count
    if _is_pytest(cmd) and not any(a.startswith("--junitxml") for a in cmd):
        cmd = [*cmd, f"--junitxml={junit}"]
    code, output = _run(cmd)
    counts, source = junit_counts(junit), "junit"
    if counts is None and (parsed := parse_test_counts(output)) is not None:
        passed, total = parsed
        counts, source = (
            {"tests": total, "passed": passed, "failed": total - passed, "errors": 0, "skipped": 0},
            "output",
        )
    metrics = metrics_from(counts, code, source)
    out = Path(args.metrics)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics) + "\n")
    shown = {k: metrics.get(k) for k in ("passed", "failed", "errors", "skipped", "score")}
    print(f"fsm-runner test_suite: {json.dumps(shown)} (exit code {code})", flush=True)
    if counts is None:
        return code or 2
    return code


if __name__ == "__main__":
    sys.exit(main())
