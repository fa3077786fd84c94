"""Commands the policy's word list misses (``r""m -rf``, ``$(printf rm) -rf``): the container holds.

The last command is ``rm -rf --no-preserve-root /``. It runs only in ``evaluate()``, after
``rollout()`` proved isolation (sandbox.json says docker; a canary written inside is absent
on the host), and only where a host-only guard file is invisible.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from runner.trust.policy import CommandPolicy, PolicyConfig
from tests.contract_repos import PIPELINE, make_repo
from tests.hostile import assert_in_docker, docker_setup, file_digest, labelled_containers

pytestmark = pytest.mark.docker

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""The one host file mounted into every sandbox (read-only)."""


def test_policy_bypasses_and_rm_rf_root_stay_in_the_container(
    tmp_path: Path, default_image: str
) -> None:
    tok = uuid.uuid4().hex[:12]
    guard = tmp_path / "HOST_ONLY_GUARD"
    guard.write_text("only the host sees this file\n")
    canary = Path("/root") / f"fsm-hostile-{tok}-canary"
    host_sentinel = Path.home() / f".fsm-hostile-{tok}-sentinel"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    bypasses = [
        f'test ! -e {guard} && r""m -rf /workspace/.. || true',
        f'test ! -e {guard} && r""m -rf /workspace/../root /workspace/../etc {outside} '
        f"{host_sentinel} /workspace/../workspace/* ; test ! -e /root && test ! -e /etc/passwd",
        f"test ! -e {guard} && $(printf rm) -rf --no-preserve-root /",
    ]
    policy = CommandPolicy(PolicyConfig())
    for cmd in bypasses:
        policy.check(cmd, stage="evaluation")  # the word list misses every one of them

    run_cmds = "".join(f"    - {_yaml_quote(c)}\n" for c in bypasses)
    pipeline = PIPELINE.replace("    - bash .aider_fsm/stages/evaluation.sh\n", run_cmds).replace(
        "    - bash .aider_fsm/stages/rollout.sh\n",
        f"    - echo inside > {canary}\n    - bash .aider_fsm/stages/rollout.sh\n",
    )
    repo = make_repo(tmp_path / "repo", pipeline=pipeline)
    repo_files = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    watched = [CA_BUNDLE, Path("/etc/hostname"), Path("/etc/passwd"), Path.home() / ".bashrc"]
    before = {p: file_digest(p) for p in watched}
    host_sentinel.write_text("keep\n")
    try:
        sess = docker_setup(repo)
        roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
        assert_in_docker(sess, canary)  # proof of isolation before anything destructive

        res = sess.evaluate(repair_iters=0)

        assert not res.ok
        assert res.failed_stage == "evaluation", res.reason
        assert res.verify.evaluation is not None
        results = res.verify.evaluation.results
        assert [r.blocked_reason for r in results] == [None, None, None]
        assert results[1].rc == 0, results[1].stderr[-500:]  # /root and /etc are gone inside
        assert "cannot remove" in results[2].stderr  # rm really walked the whole root
        assert guard.exists()
        assert host_sentinel.read_text() == "keep\n"
        assert (outside / "keep.txt").read_text() == "keep\n"
        assert {p: p.read_bytes() for p in repo_files} == repo_files
        assert {p: file_digest(p) for p in watched} == before
        assert labelled_containers(sess.run_id) == []
    finally:
        host_sentinel.unlink(missing_ok=True)


def _yaml_quote(cmd: str) -> str:
    return "'" + cmd.replace("'", "''") + "'"
