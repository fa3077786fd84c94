"""A contract that phones home: host services, outside names, ports next to the model's.

The test opens a listener on the host's 0.0.0.0 and the stage tries it on every address
of this machine a container could use (docker0, the egress bridge's gateway, the host's
own IPs, the llm relay's gateway, host.docker.internal). Only addresses on this machine
are tried; "outside" is checked by name resolution alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.contract_repos import EVALUATION, ROLLOUT, make_repo
from tests.fakes.model_server import ScriptedModelServer
from tests.hostile import (
    PROBE_PY,
    HostListener,
    docker_setup,
    host_addresses,
    labelled_containers,
    probe_result,
    sandbox_json,
)

pytestmark = pytest.mark.docker


def _probe_cmd(port: int, targets: dict[str, str]) -> str:
    hosts = ",".join(targets.values())
    return f"RES_OPTIONS='timeout:1 attempts:1' python3 .aider_fsm/probe.py {port} {hosts}\n"


def _assert_nothing_reached(probe: dict[str, Any], listener: HostListener) -> None:
    assert probe["control"] == "connected", probe  # the probe itself can connect
    reached = {host: r for host, r in probe["targets"].items() if r == "connected"}
    assert reached == {}, probe
    assert listener.accepted == [], listener.accepted
    for key in ("dns example.com", "dns pypi.org"):
        assert "error" in probe[key].lower() or probe[key] == "timed out", probe


def test_evaluation_without_network_reaches_no_host_listener_and_no_dns(
    tmp_path: Path, default_image: str
) -> None:
    targets = host_addresses()
    assert {"docker0", "egress_gateway"} <= targets.keys(), targets
    with HostListener() as listener:
        repo = make_repo(
            tmp_path / "repo", evaluation=_probe_cmd(listener.port, targets) + EVALUATION
        )
        (repo / ".aider_fsm" / "probe.py").write_text(PROBE_PY)
        sess = docker_setup(repo)
        roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(repair_iters=0)
    assert res.ok, res.reason
    assert sandbox_json(sess)["stages"]["evaluation"]["network"] == "none"
    assert res.verify.evaluation is not None
    probe = probe_result(res.verify.evaluation.results[0].stdout)
    assert probe["interfaces"] == ["lo"], probe
    assert set(probe["targets"]) == set(targets.values())
    _assert_nothing_reached(probe, listener)
    assert labelled_containers(sess.run_id) == []


def test_llm_rollout_reaches_the_model_port_and_nothing_else(
    tmp_path: Path, default_image: str
) -> None:
    targets = host_addresses()
    with HostListener() as listener, ScriptedModelServer(script="pong") as server:
        repo = make_repo(tmp_path / "repo", rollout=_probe_cmd(listener.port, targets) + ROLLOUT)
        (repo / ".aider_fsm" / "probe.py").write_text(PROBE_PY)
        overrides = {"OPENAI_API_BASE": server.url, "OPENAI_API_KEY": "sk-hostile-net-0123456789"}
        with docker_setup(repo) as sess:
            roll = sess.rollout(llm="m", env_overrides=overrides, repair_iters=0)
        assert roll.ok, roll.reason
        assert roll.verify.rollout is not None
        probe = probe_result(roll.verify.rollout.results[0].stdout)
        # The one allowed path works: the model answered through the relay.
        assert probe["model"] == "pong", probe
        assert len(server.requests) == 1
    assert sandbox_json(sess)["stages"]["rollout"]["network"] == "llm"
    # Every host address was tried, and the relay's gateway too (on the listener's port).
    assert len(probe["targets"]) == len(targets) + 1, probe
    _assert_nothing_reached(probe, listener)
    assert labelled_containers(sess.run_id) == []
