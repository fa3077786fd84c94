"""A contract that cheats instead of attacking: a score written without running anything,
and a ``hints_used.json`` claiming an official command that never ran. The runner must
judge from its own records (issue 5 item 5), not from what the stage says about itself."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.contract_repos import make_repo
from tests.hostile import docker_setup

pytestmark = [
    pytest.mark.docker,
    pytest.mark.xfail(
        strict=True, raises=AssertionError, reason="audit not implemented yet (issue 5 item 5)"
    ),
]

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


def test_hints_used_claiming_a_command_that_never_ran_is_rejected(
    tmp_path: Path, default_image: str
) -> None:
    # The claim is assembled at run time, so no trace or script text holds it verbatim.
    evaluation = textwrap.dedent("""\
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
    repo = make_repo(tmp_path / "repo", evaluation=evaluation)
    (repo / "README.md").write_text(README)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_eval.py").write_text("def test_ok():\n    assert True\n")
    with docker_setup(repo, audit="on") as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(repair_iters=0)
    assert not res.ok, "hints_used.json was believed without evidence"
    assert "hint" in res.reason.lower(), res.reason
