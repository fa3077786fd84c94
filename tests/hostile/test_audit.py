"""A contract that cheats instead of attacking: a score written without running anything,
and a ``hints_used.json`` claiming an official command that never ran. The runner must
judge from its own records (issue 5 item 5), not from what the stage says about itself."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.session.results import EvaluationResult
from tests.contract_repos import make_repo
from tests.hostile import docker_setup

pytestmark = pytest.mark.docker

README = """\
# target

Evaluate with:

```bash
python -m pytest -q tests/test_eval.py
```
"""


def test_hard_coded_metrics_are_flagged_by_the_audit(tmp_path: Path, default_image: str) -> None:
    evaluation = """echo '{"ok": true, "score": 0.93}' > .aider_fsm/metrics.json\n"""
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    with docker_setup(repo, audit="on") as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(repair_iters=0)
    assert not res.ok, "a score nobody computed passed the audit"
    assert "audit" in res.reason.lower(), res.reason


# The claim is assembled at run time, so no trace or script text holds it verbatim.
CLAIM_HINTS = textwrap.dedent("""\
    python3 - <<'PY'
    import json
    cmd = " ".join(["python", "-m", "py" + "test", "-q", "tests/test_eval.py"])
    json.dump({"ok": True, "used_anchors": ["py" + "test"], "commands": [cmd],
               "chosen_command": cmd, "reason": ""},
              open(".aider_fsm/hints_used.json", "w"))
    json.dump({"ok": True, "chosen_command": cmd, "executed_attempts": 1, "score": 1.0},
              open(".aider_fsm/hints_run.json", "w"))
    json.dump({"ok": True, "score": 1.0}, open(".aider_fsm/metrics.json", "w"))
    PY
    """)


def _evaluate_hints_claim(tmp_path: Path, evaluation: str) -> EvaluationResult:
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    (repo / "README.md").write_text(README)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_eval.py").write_text("def test_ok():\n    assert True\n")
    with docker_setup(repo, audit="on") as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
        assert roll.ok, roll.reason
        return sess.evaluate(repair_iters=0)


def test_hints_used_claiming_a_command_that_never_ran_is_rejected(
    tmp_path: Path, default_image: str
) -> None:
    res = _evaluate_hints_claim(tmp_path, CLAIM_HINTS)
    assert not res.ok, "hints_used.json was believed without evidence"
    assert res.failed_stage == "evaluation"
    assert "hints_evidence.command_not_executed" in res.reason, res.reason


@pytest.mark.parametrize("mention", ["echo", ":", "#"], ids=["echo", "noop-colon", "comment"])
def test_hints_claim_backed_only_by_a_mention_is_rejected(
    tmp_path: Path, default_image: str, mention: str
) -> None:
    # The command text shows up in the shell trace, but the command itself never runs.
    res = _evaluate_hints_claim(
        tmp_path, f"{mention} python -m pytest -q tests/test_eval.py\n" + CLAIM_HINTS
    )
    assert not res.ok, "a command that was only echoed counted as run"
    assert "hints_evidence" in res.reason, res.reason
