"""A tests stage's pass/fail counts, read from what its commands printed.

A contract with a ``tests`` stage and no ``evaluation`` is scored by its tests (issue
16.6): the runner reads the summary line each test command printed (pytest, unittest,
mocha, jest: ``runner/trust/hint_scores.py``) from its own record of the stage, so the
contract needs no glue. ``fsm-runner init --tests`` writes JUnit-based counts instead.
"""

from __future__ import annotations

from typing import Any

from runner.session.stages import CmdResult, StageResult
from runner.trust.hint_scores import parse_test_counts


def _final_attempts(stage: StageResult) -> list[CmdResult]:
    """The last attempt of each command (retries replace earlier tries)."""
    last: dict[str, CmdResult] = {}
    for res in stage.results:
        last[res.cmd] = res
    return list(last.values())


def tests_metrics(stage: StageResult) -> dict[str, Any]:
    """Metrics for a tests stage: ``ok``, and ``score``/``passed``/``failed``/``total`` when
    a summary line was printed (summed over the stage's commands)."""
    passed = total = 0
    counted = False
    for res in _final_attempts(stage):
        counts = parse_test_counts(f"{res.stdout}\n{res.stderr}")
        if counts is not None:
            counted = True
            passed, total = passed + counts[0], total + counts[1]
    if not counted:
        return {"ok": stage.ok, "counts_from": "none: no test summary line was printed"}
    return {
        "ok": stage.ok and passed == total,
        "score": round(passed / total, 6) if total else 0.0,
        "passed": passed,
        "failed": total - passed,
        "total": total,
        "counts_from": "tests stage output",
    }
