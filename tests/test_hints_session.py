"""Hints and the stage helpers through a real session (issue 11 acceptance)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import runner_env
from tests.contract_repos import make_repo

pytestmark = pytest.mark.docker

README = """\
# calc

Run the tests:

```bash
pytest -q tests
```
"""

BOOTSTRAP = """\
version: 1
cmds:
  - python3 -m venv .venv
  - .venv/bin/pip install -q pytest
env:
  PATH: "${AIDER_FSM_REPO_ROOT}/.venv/bin:${PATH}"
timeout_seconds: 300
"""


def _hinted_repo(root: Path, evaluation: str) -> Path:
    repo = make_repo(root, bootstrap=BOOTSTRAP, evaluation=evaluation)
    (repo / "README.md").write_text(README)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_calc.py").write_text("def test_add():\n    assert 1 + 1 == 2\n")
    return repo


def test_generic_evaluation_runs_the_readme_command(tmp_path: Path, default_image: str) -> None:
    repo = _hinted_repo(tmp_path / "repo", "python -m runner.helpers.generic_evaluation\n")
    sess = runner_env.setup(repo)
    res = sess.evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason
    assert res.metrics is not None and res.metrics["score"] == 1.0
    used = json.loads((repo / ".aider_fsm" / "hints_used.json").read_text())
    assert any("pytest" in c for c in used["commands"])
    # The runner's own records show the helper ran (shell trace of evaluation.sh).
    traces = list(
        sess.artifacts_dir.glob("env_api/evaluation_attempt_01/stage_files/shell_trace.*.log")
    )
    assert traces and any("runner.helpers.generic_evaluation" in t.read_text() for t in traces)


def test_claimed_hint_that_never_ran_fails(tmp_path: Path, default_image: str) -> None:
    forged = textwrap.dedent("""\
    python3 - <<'PY'
    import json
    json.dump({"ok": True, "used_anchors": ["pytest"], "commands": ["pytest -q tests"], "reason": ""},
              open(".aider_fsm/hints_used.json", "w"))
    json.dump({"ok": True, "score": 1.0, "chosen_command": "pytest -q tests", "executed_attempts": 1,
               "used_anchors": ["pytest"]}, open(".aider_fsm/hints_run.json", "w"))
    json.dump({"ok": True, "score": 1.0}, open(".aider_fsm/metrics.json", "w"))
    PY
    """)
    repo = _hinted_repo(tmp_path / "repo", forged)
    res = runner_env.setup(repo).evaluate(llm="m", repair_iters=0)
    assert not res.ok
    assert res.failed_stage == "evaluation"
    assert "hints_evidence" in res.reason
