"""A contract that tries to exhaust the machine: a memory bomb and a fork bomb inside stages.

Limits are tightened per call (256 MB, 128 pids), as a user of a shared machine would. While
the bombs go off, a host thread keeps starting processes and counting them: the host must
stay responsive and its process count must stay near the container's cap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import sandbox
from tests.contract_repos import make_repo
from tests.hostile import HostWatch, docker_setup, labelled_containers, sandbox_json

pytestmark = pytest.mark.docker

LIMITS = sandbox.Limits(memory="256m", pids=128)

MEMORY_BOMB = """\
chunks = []
while True:
    chunks.append(b"x" * (16 << 20))
"""

MEMORY_PIPELINE = """\
version: 1
deploy:
  setup_cmds: [bash .aider_fsm/stages/deploy_setup.sh]
  health_cmds: [bash .aider_fsm/stages/deploy_health.sh]
  teardown_cmds: [bash .aider_fsm/stages/deploy_teardown.sh]
rollout:
  run_cmds:
    - python3 .aider_fsm/stages/membomb.py || echo rollout survived the OOM kill
    - bash .aider_fsm/stages/rollout.sh
  timeout_seconds: 120
evaluation:
  run_cmds:
    - python3 .aider_fsm/stages/membomb.py
    - bash .aider_fsm/stages/evaluation.sh
  metrics_path: .aider_fsm/metrics.json
  timeout_seconds: 120
"""

FORK_BOMB = """\
python3 - <<'PY' > /tmp/forks.txt || true
import os, signal, time
kids = []
try:
    while len(kids) < 1000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
except OSError as exc:
    print(f"FORK_LIMIT_HIT after {len(kids)} children: {exc}", flush=True)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
for pid in kids:
    os.waitpid(pid, 0)
PY
cat /tmp/forks.txt
# The real bomb only where a pids cap has just been seen to hold.
grep -q FORK_LIMIT_HIT /tmp/forks.txt || exit 3
bomb() { bomb | bomb & }
bomb
sleep 60
"""

FORK_PIPELINE = """\
version: 1
deploy:
  setup_cmds: [bash .aider_fsm/stages/deploy_setup.sh]
  health_cmds: [bash .aider_fsm/stages/deploy_health.sh]
  teardown_cmds: [bash .aider_fsm/stages/deploy_teardown.sh]
rollout:
  run_cmds: [bash .aider_fsm/stages/forkbomb.sh]
  timeout_seconds: 6
evaluation:
  run_cmds: [bash .aider_fsm/stages/evaluation.sh]
  metrics_path: .aider_fsm/metrics.json
"""


def test_memory_bomb_is_contained_reported_and_the_next_stage_runs(
    tmp_path: Path, default_image: str
) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=MEMORY_PIPELINE)
    (repo / ".aider_fsm" / "stages" / "membomb.py").write_text(MEMORY_BOMB)
    sess = docker_setup(repo, limits=LIMITS)
    with HostWatch() as watch:
        roll = sess.rollout(llm="m", repair_iters=0)
        res = sess.evaluate(repair_iters=0)

    # Rollout: the bomb was OOM-killed inside, reported, and the next command ran.
    assert roll.ok, roll.reason
    assert roll.verify.rollout is not None
    first, second = roll.verify.rollout.results
    assert first.oom_killed, first
    assert "survived the OOM kill" in first.stdout
    assert second.rc == 0 and not second.oom_killed
    # Evaluation: the same bomb, unguarded, fails the stage cleanly with an OOM reason.
    assert not res.ok
    assert res.failed_stage == "evaluation"
    assert "OOM" in res.reason, res.reason
    assert res.verify.evaluation is not None
    (bombed,) = res.verify.evaluation.results
    assert bombed.oom_killed and bombed.rc != 0, bombed
    # The container was still usable afterwards: teardown ran in it.
    teardown = sess.artifacts_dir / "env_api" / "final_teardown" / "stage_files" / "teardown.txt"
    assert teardown.read_text().strip() == "torn-down"
    assert watch.max_latency < 2.0, watch.latencies
    assert labelled_containers(sess.run_id) == []


def test_fork_bomb_is_contained_killed_and_teardown_still_runs(
    tmp_path: Path, default_image: str
) -> None:
    repo = make_repo(tmp_path / "repo", pipeline=FORK_PIPELINE)
    (repo / ".aider_fsm" / "stages" / "forkbomb.sh").write_text(FORK_BOMB)
    sess = docker_setup(repo, limits=LIMITS)
    with HostWatch() as watch, sess:
        roll = sess.rollout(llm="m", repair_iters=0)

    assert not roll.ok
    assert roll.failed_stage == "rollout"
    assert "timed out" in roll.reason, roll.reason
    assert roll.verify.rollout is not None
    (bomb,) = roll.verify.rollout.results
    assert bomb.timed_out, bomb
    # The pids cap stopped the first wave well before the 1000 it asked for.
    line = next(ln for ln in bomb.stdout.splitlines() if ln.startswith("FORK_LIMIT_HIT"))
    assert int(line.split()[2]) < LIMITS.pids, line
    # The runner killed the bomb: teardown ran in the same container afterwards.
    stage_files = sess.artifacts_dir / "env_api" / "rollout_attempt_01" / "stage_files"
    assert (stage_files / "teardown.txt").read_text().strip() == "torn-down"
    # The host kept starting processes quickly and saw at most the container's cap.
    assert watch.max_latency < 2.0, watch.latencies
    assert watch.pid_growth < LIMITS.pids + 272, watch.pid_growth
    assert labelled_containers(sess.run_id) == []


LOOSENING_PIPELINE = """\
version: 1
evaluation:
  run_cmds:
    - cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max
    - bash .aider_fsm/stages/evaluation.sh
  metrics_path: .aider_fsm/metrics.json
security:
  memory: 4g
  cpus: 2
  pids: 100000
  max_cmd_seconds: 600000
"""


def test_a_contract_cannot_loosen_the_callers_limits(tmp_path: Path, default_image: str) -> None:
    # Issue 15 item 5: security.memory: 4g replaced setup(limits=Limits(memory="512m")).
    evaluation = """echo '{"ok": true, "score": 1}' > .aider_fsm/metrics.json\n"""
    repo = make_repo(tmp_path / "repo", pipeline=LOOSENING_PIPELINE, evaluation=evaluation)
    caller = sandbox.Limits(memory="512m", cpus=0.5, pids=200)
    with docker_setup(repo, limits=caller) as sess:
        res = sess.evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason
    limits = sandbox_json(sess)["limits"]
    assert (limits["memory"], limits["cpus"], limits["pids"]) == ("512m", 0.5, 200), limits
    out = next(sess.artifacts_dir.rglob("evaluation_cmd01_try01_stdout.txt")).read_text().split()
    assert out == [str(512 << 20), "200"], out  # what the kernel enforces inside


COMMAND_WITHOUT_TIMEOUT = """\
version: 1
evaluation:
  run_cmds: [sleep 300]
  metrics_path: .aider_fsm/metrics.json
"""


def test_a_command_without_any_timeout_gets_the_runners_default(
    tmp_path: Path, default_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15 item 5: with no timeout anywhere, a command could run forever.
    monkeypatch.setenv("FSM_RUNNER_DEFAULT_CMD_SECONDS", "2")
    repo = make_repo(tmp_path / "repo", pipeline=COMMAND_WITHOUT_TIMEOUT, bootstrap="")
    with docker_setup(repo) as sess:
        res = sess.evaluate(llm="m", repair_iters=0)
    assert not res.ok and "timed out" in res.reason, res.reason
    assert labelled_containers(sess.run_id) == []
