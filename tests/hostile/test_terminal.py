"""Issue 15 item 11: a target's terminal escapes never reach the user's terminal or report.md.

The contract's commands and its stage output carry an OSC title change, an erase-line
plus carriage return that would overwrite the runner's own line with a fake "ok", SGR
colours, an 8-bit CSI and a bidi override. ``fsm-runner run`` (progress and result),
``fsm-runner show``, report.md and the live "latest line" a ``progress`` callback gets
must show the text without any of them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.contract_repos import make_repo
from tests.hostile import docker_setup

pytestmark = pytest.mark.docker

FSM = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "fsm-runner"
# YAML double quotes: \e is ESC, \a is BEL. The command text itself is hostile too.
PIPELINE = """\
version: 1
evaluation:
  run_cmds:
    - "echo '\\e]0;cmd-pwned\\a' started"
    - bash .aider_fsm/stages/evaluation.sh
  metrics_path: .aider_fsm/metrics.json
"""
EVALUATION = r"""
for fd in 1 2; do
  printf '\033]0;pwned\007title set\n' >&$fd
  printf 'working\n\033[2K\r ok\n' >&$fd
  printf 'fake \033[32mPASS\033[0m \302\23331m c1 \342\200\256desrever\n' >&$fd
  printf '\033]8;;http://evil.invalid\033\\link\033]8;;\033\\ \033P+q\033\\ done\n' >&$fd
done
exit 3
"""
CONTROLS = ("\x1b", "\x07", "\x9b", "\r", "\u202e")


def _controls(text: str) -> list[str]:
    return [repr(c) for c in CONTROLS if c in text]


def test_cli_progress_result_show_and_report_carry_no_escapes(
    tmp_path: Path, default_image: str
) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=PIPELINE, evaluation=EVALUATION)
    env = {**os.environ, "CI": "true"}
    run = subprocess.run(
        [str(FSM), "run", str(repo), "--llm", "m"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 1, run.stderr
    # Control: the target's output did reach the terminal, only without its escapes.
    assert "link  done" in run.stderr, run.stderr
    assert "title set" in run.stdout and "desrever" in run.stdout, run.stdout
    assert "failed at evaluation" in run.stdout
    runs = sorted((repo / ".aider_fsm" / "artifacts").iterdir())
    assert len(runs) == 1
    raw = (next(runs[0].rglob("evaluation_cmd02_try01_stdout.txt"))).read_text()
    assert "\x1b]0;pwned" in raw  # the log file keeps what the stage printed
    show = subprocess.run(
        [str(FSM), "show", runs[0].name, "--repo", str(repo)], capture_output=True, text=True
    )
    assert "failed at evaluation" in show.stdout, show.stdout
    report = (runs[0] / "report.md").read_text()
    for where, text in {
        "run stdout": run.stdout,
        "run stderr": run.stderr,
        "show stdout": show.stdout,
        "show stderr": show.stderr,
        "report.md": report,
    }.items():
        assert _controls(text) == [], f"{where}: {_controls(text)}\n{text[-1500:]}"
        assert "pwned" not in text, where


def test_live_latest_line_carries_no_escapes(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=PIPELINE, evaluation=EVALUATION)
    lines: list[str] = []
    sess = docker_setup(repo, progress=lines.append)
    try:
        res = sess.evaluate(llm="m", repair_iters=0)
    finally:
        sess.close()
    assert not res.ok
    live = [ln for ln in lines if ln.startswith("evaluation | ")]
    assert live, lines  # the stage's output was reported while it ran
    assert [ln for ln in live if _controls(ln)] == []
