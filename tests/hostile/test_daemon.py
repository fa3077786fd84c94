"""A deploy stage that leaves a daemon behind (``setsid nohup ... &``) and a teardown that
does not stop it: after ``evaluate()`` nothing of the run is left on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import docker.errors
import pytest

from sandbox.engine import get_client
from tests.contract_repos import DEPLOY_SETUP, make_repo
from tests.fakes.model_server import ScriptedModelServer
from tests.hostile import (
    docker_setup,
    host_processes_with,
    labelled_containers,
    sandbox_json,
    wait_until,
)

pytestmark = pytest.mark.docker


def _input_rules() -> str:
    iptables = shutil.which("iptables")
    if iptables is None:
        return ""
    return subprocess.run([iptables, "-S", "INPUT"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("evaluation_ok", [True, False], ids=["eval-passes", "eval-fails"])
def test_deploy_daemon_is_gone_after_evaluate(
    tmp_path: Path, default_image: str, evaluation_ok: bool
) -> None:
    token = f"fsm-hostile-daemon-{uuid.uuid4().hex[:12]}"
    daemon = f"setsid nohup python3 -c 'import time; time.sleep(3600)' {token} >/dev/null 2>&1 &\n"
    kw = {} if evaluation_ok else {"evaluation": "echo 'evaluation gives up' >&2; exit 3\n"}
    repo = make_repo(
        tmp_path / "repo",
        deploy_setup=daemon + DEPLOY_SETUP,
        deploy_teardown="echo 'teardown leaves the daemon running'\n",
        **kw,
    )
    client = get_client()
    with ScriptedModelServer(script="ok") as server:
        overrides = {"OPENAI_API_BASE": server.url}
        sess = docker_setup(repo)
        roll = sess.rollout(llm="m", env_overrides=overrides, repair_iters=0)
        assert roll.ok, roll.reason
        # Controls: the daemon runs (visible from the host), the llm network and its
        # firewall rules exist, the container is labelled with the run id.
        assert host_processes_with(token), "the daemon never started"
        assert len(labelled_containers(sess.run_id)) == 1
        net = client.networks.get(f"fsm-llm-{sandbox_json(sess)['sandbox_id']}")
        bridge = f"br-{net.id[:12]}"
        had_rules = bridge in _input_rules()
        can_firewall = shutil.which("iptables") is not None and os.geteuid() == 0
        assert had_rules or not can_firewall, "no firewall rules for the llm network"

        res = sess.evaluate(env_overrides=overrides, repair_iters=0)

    assert res.ok is evaluation_ok, res.reason
    assert wait_until(lambda: not host_processes_with(token)), "the deploy daemon survived"
    assert labelled_containers(sess.run_id) == []
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(net.id)
    if had_rules:
        assert bridge not in _input_rules(), "firewall rules of the run were left behind"
