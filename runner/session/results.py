"""Result types returned by ``EnvSession.rollout()`` and ``evaluate()``.

Stage failures are results, not exceptions: ``ok`` says whether the call succeeded,
``failed_stage`` and ``reason`` say where and why, ``verify`` holds every stage's
commands. Shapes follow the predecessor (``RolloutCallResult`` / ``EvaluationCallResult``
remain as aliases) with ``failed_stage``/``reason`` set for contract failures too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.session.stages import StageResult


@dataclass
class VerificationResult:
    """Every stage of one pass; a stage that did not run is None."""

    ok: bool = True
    failed_stage: str | None = None
    bootstrap: StageResult | None = None
    actions: StageResult | None = None
    auth: StageResult | None = None
    tests: StageResult | None = None
    deploy_setup: StageResult | None = None
    deploy_health: StageResult | None = None
    rollout: StageResult | None = None
    evaluation: StageResult | None = None
    benchmark: StageResult | None = None
    deploy_teardown: StageResult | None = None
    metrics_path: Path | None = None
    metrics: dict[str, Any] | None = None
    metrics_errors: list[str] = field(default_factory=list)

    def fail(self, stage: str) -> None:
        if self.ok:
            self.ok = False
            self.failed_stage = stage


@dataclass
class RolloutResult:
    """What ``rollout()`` did. ``rollout_path`` is the fresh host copy of rollout.json."""

    ok: bool
    artifacts_dir: Path
    rollout_path: Path | None = None
    verify: VerificationResult = field(default_factory=VerificationResult)
    failed_stage: str | None = None
    reason: str = ""
    samples: int | None = None
    samples_path: Path | None = None


@dataclass
class EvaluationResult:
    """What ``evaluate()`` did.

    ``metrics`` is the metrics object this run's evaluation wrote; ``metrics_accepted``
    says whether it counts. A failed evaluation keeps its numbers (issue 16.3): the
    object is still here, ``metrics_accepted`` is False and ``reason`` says why.
    ``hints``: the official commands found, the mode (``require``/``report``) and why,
    and which of them the runner saw run (``runner/trust/hint_check.py``).
    """

    ok: bool
    artifacts_dir: Path
    metrics_path: Path | None = None
    metrics: dict[str, Any] | None = None
    verify: VerificationResult = field(default_factory=VerificationResult)
    failed_stage: str | None = None
    reason: str = ""
    metrics_accepted: bool = False
    hints: dict[str, Any] | None = None

    def outcome(self) -> dict[str, Any]:
        """What ``evaluation_end`` and ``stage_run_end`` record of this result."""
        return {
            "ok": self.ok,
            "failed_stage": self.failed_stage,
            "reason": self.reason,
            "metrics": self.metrics,
            "metrics_accepted": self.metrics_accepted,
            "hints": self.hints,
        }


RolloutCallResult = RolloutResult
EvaluationCallResult = EvaluationResult
