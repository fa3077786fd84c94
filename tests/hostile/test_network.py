"""A contract that phones home: host services, outside names, ports next to the model's.

The test opens a listener on the host's 0.0.0.0 and the stage tries it on every address
of this machine a container could use (docker0, the egress bridge's gateway, the host's
own IPs, the llm relay's gateway, host.docker.internal). Only addresses on this machine
are tried; "outside" is checked by name resolution alone.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import firewall
from sandbox.engine import get_client
from sandbox.firewall import FirewallUnavailable
from tests.contract_repos import DEPLOY_SETUP, EVALUATION, ROLLOUT, make_repo
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


FLOOD_PY = r"""
# A deploy daemon inside the sandbox: 1100 connections to the relay, held a few seconds.
import os, socket, time, urllib.parse
parts = urllib.parse.urlsplit(os.environ["OPENAI_API_BASE"])
flood = []
for _ in range(1100):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((parts.hostname, parts.port))
    flood.append(s)
open("/tmp/flood.ready", "w").close()
time.sleep(8)
for s in flood:
    s.close()
"""

ASK_MODEL_PY = r"""
import json, os, urllib.request
base = os.environ["OPENAI_API_BASE"]
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ping"}]}).encode()
req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
print("MODEL " + json.load(urllib.request.urlopen(req, timeout=90))["choices"][0]["message"]["content"])
"""

FLOOD_SETUP = """\
setsid nohup python3 .aider_fsm/flood.py >/tmp/flood.log 2>&1 &
for i in $(seq 1 300); do [ -f /tmp/flood.ready ] && break; sleep 0.1; done
sleep 1
"""


def test_llm_stage_flooding_the_relay_does_not_take_the_runner_down(
    tmp_path: Path, default_image: str
) -> None:
    """Issue 15 item 9: a deploy daemon holds 1100 connections to the relay while the
    runner goes on: its next execs (descriptors past 1024 used to make ``select()`` raise)
    and the model call (queued behind the flood) still work. The runner has 8192
    descriptors, so it is the relay's own bound that keeps them low, not the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    try:
        _flood_relay(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _flood_relay(tmp_path: Path) -> None:
    with ScriptedModelServer(script="pong") as server:
        repo = make_repo(
            tmp_path / "repo",
            deploy_setup=FLOOD_SETUP + DEPLOY_SETUP,
            rollout="python3 .aider_fsm/ask_model.py\n" + ROLLOUT,
        )
        (repo / ".aider_fsm" / "flood.py").write_text(FLOOD_PY)
        (repo / ".aider_fsm" / "ask_model.py").write_text(ASK_MODEL_PY)
        overrides = {"OPENAI_API_BASE": server.url, "OPENAI_API_KEY": "sk-hostile-net-0123456789"}
        with docker_setup(repo) as sess:
            roll = sess.rollout(llm="m", env_overrides=overrides, repair_iters=0)
            assert roll.ok, roll.reason
            assert roll.verify.rollout is not None
            assert "MODEL pong" in roll.verify.rollout.results[0].stdout
            res = sess.evaluate(env_overrides=overrides, repair_iters=0)
        assert res.ok, res.reason
        assert 0 < len(server.requests) < 50  # the flood never reached the model as requests
    assert labelled_containers(sess.run_id) == []


# -- egress means the outside world (issue 15 item 6) ------------------------------------

CONNECT_PY = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=5).close()
    print("OUTSIDE connected")
except Exception as exc:
    print(f"OUTSIDE {type(exc).__name__}: {exc}")
"""


def _outside_reachable() -> bool:
    """Can this host open TCP to the package index (through the mirror/proxy)? A control."""
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def test_egress_bootstrap_reaches_no_host_service_and_no_other_relay(
    tmp_path: Path, default_image: str
) -> None:
    """A bootstrap (egress) stage tries a host listener on 0.0.0.0 via the egress gateway,
    docker0, the host's own IPs, another live session's llm relay, and a container on
    docker0 (another bridge): all dropped; DNS and the outside world still work (where
    this machine reaches them at all)."""

    neighbour = get_client().containers.run(
        default_image,
        ["python3", "-m", "http.server", "8000"],
        name=f"hostile-neighbour-{uuid.uuid4().hex[:8]}",
        network="bridge",
        detach=True,
    )
    try:
        neighbour.reload()
        neighbour_ip = neighbour.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert neighbour_ip, neighbour.attrs["NetworkSettings"]
        _egress_probe(tmp_path, default_image, neighbour_ip)
    finally:
        neighbour.remove(force=True)


def _egress_probe(tmp_path: Path, default_image: str, neighbour_ip: str) -> None:
    from sandbox import SandboxSpec, open_sandbox

    targets = host_addresses()
    assert {"docker0", "egress_gateway"} <= targets.keys(), targets
    assert len(targets) >= 4, targets  # + the host's own address(es) + host.docker.internal
    with (
        HostListener() as listener,
        ScriptedModelServer(script="pong") as server,
        # Another session's relay: a live sandbox with an llm endpoint, on this host.
        open_sandbox(
            SandboxSpec(image=default_image, llm_endpoint=("127.0.0.1", server.port))
        ) as other,
    ):
        assert other.llm_address is not None
        other_gw, other_port = other.llm_address
        hosts = ",".join(targets.values())
        boot = (
            "version: 1\ncmds:\n"
            f"  - RES_OPTIONS='timeout:2 attempts:1' python3 .aider_fsm/probe.py {listener.port} {hosts}\n"
            f"  - python3 .aider_fsm/probe.py {other_port} {other_gw}\n"
            f"  - python3 .aider_fsm/probe.py 8000 {neighbour_ip}\n"
            "  - python3 .aider_fsm/connect.py pypi.org 443\n"
        )
        repo = make_repo(tmp_path / "repo", bootstrap=boot)
        (repo / ".aider_fsm" / "probe.py").write_text(PROBE_PY)
        (repo / ".aider_fsm" / "connect.py").write_text(CONNECT_PY)
        with docker_setup(repo, cache="off") as sess:
            roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
        assert len(server.requests) == 0  # nothing reached the other session's model
    info = sandbox_json(sess)
    assert info["stages"]["bootstrap"]["network"] == "egress"
    assert info["host_firewall"]["enforced"] is True, info["host_firewall"]
    assert roll.verify.bootstrap is not None
    outs = [r.stdout for r in roll.verify.bootstrap.results]
    hosts_probe, relay_probe = probe_result(outs[0]), probe_result(outs[1])
    for probe in (hosts_probe, relay_probe, probe_result(outs[2])):
        assert probe["control"] == "connected", probe
        assert {h: r for h, r in probe["targets"].items() if r == "connected"} == {}, probe
    assert listener.accepted == [], listener.accepted
    # Egress still is egress: names resolve, and the outside answers when it does for the host.
    assert "error" not in hosts_probe["dns pypi.org"].lower(), hosts_probe
    if _outside_reachable():
        assert "OUTSIDE connected" in outs[3], outs[3]
    assert labelled_containers(sess.run_id) == []


# -- no host firewall: refuse, never fail open (issue 15 item 6) ---------------------------

NO_SBIN_PATH = "/usr/local/bin:/usr/bin:/bin"
"""PATH without /usr/sbin and /sbin, where iptables lives: "iptables is not installed"."""


@pytest.fixture
def no_iptables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    assert shutil.which("iptables", path=NO_SBIN_PATH) is None, "iptables found outside sbin"
    monkeypatch.setenv("PATH", NO_SBIN_PATH)
    firewall.reset_probe()
    yield
    monkeypatch.undo()
    firewall.reset_probe()


def _attached_networks(container_id: str) -> dict[str, Any]:
    attrs = get_client().api.inspect_container(container_id)
    return dict(attrs["NetworkSettings"]["Networks"] or {})


def test_without_iptables_networked_policies_are_refused(
    no_iptables: None, monkeypatch: pytest.MonkeyPatch, default_image: str
) -> None:
    from sandbox import NetworkPolicy, SandboxSpec, open_sandbox

    marker = {"fsm-runner.test": uuid.uuid4().hex}
    with pytest.raises(FirewallUnavailable, match="'egress' refused: iptables is not installed"):
        open_sandbox(SandboxSpec(image=default_image, network=NetworkPolicy.EGRESS, labels=marker))
    with pytest.raises(FirewallUnavailable, match="'llm' refused"):
        open_sandbox(SandboxSpec(image=default_image, llm_endpoint=("127.0.0.1", 9), labels=marker))
    with open_sandbox(SandboxSpec(image=default_image, labels=marker)) as sb:
        assert sb.describe()["host_firewall"] == {
            "enforced": False,
            "reason": "iptables is not installed (apt-get install -y iptables)",
            "networked_stages": "refused",
        }
        with pytest.raises(FirewallUnavailable):
            sb.set_network(NetworkPolicy.EGRESS)
        assert _attached_networks(sb.container_id) == {}  # nothing was attached
        assert sb.network_policy == NetworkPolicy.NONE
        assert sb.exec("echo still-usable").stdout.strip() == "still-usable"
    left = get_client().containers.list(
        all=True, ignore_removed=True, filters={"label": "fsm-runner.test"}
    )
    mine = [c.name for c in left if c.labels.get("fsm-runner.test") == marker["fsm-runner.test"]]
    assert mine == []  # the refused opens left nothing behind
    # The user may accept the risk by name; the sandbox then says no firewall is in force.
    monkeypatch.setenv(firewall.ALLOW_ENV, "1")
    with open_sandbox(
        SandboxSpec(image=default_image, network=NetworkPolicy.EGRESS, labels=marker)
    ) as sb:
        described = sb.describe()["host_firewall"]
        assert described["enforced"] is False, described
        assert described["networked_stages"] == f"allowed by {firewall.ALLOW_ENV}"
        assert len(_attached_networks(sb.container_id)) == 1


def test_cli_refuses_egress_without_iptables_and_doctor_says_so(
    tmp_path: Path, default_image: str
) -> None:
    env = {**os.environ, "CI": "true", "PATH": NO_SBIN_PATH}
    fsm = str(Path(sys.executable).with_name("fsm-runner"))
    doctor = subprocess.run([fsm, "doctor"], capture_output=True, text=True, env=env, timeout=120)
    assert doctor.returncode == 1, doctor.stdout
    assert "✗ host firewall" in doctor.stdout and "llm/egress stages are refused" in doctor.stdout
    repo = make_repo(tmp_path / "repo")  # its bootstrap runs with egress
    refused = subprocess.run(
        [fsm, "run", str(repo), "--cache", "off"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "network policy 'egress' refused" in refused.stdout + refused.stderr
    allowed = subprocess.run(
        [fsm, "run", str(repo), "--cache", "off", "--json"],
        capture_output=True,
        text=True,
        env={**env, "FSM_RUNNER_ALLOW_HOST_ACCESS": "1"},
        timeout=300,
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    run_dir = Path(json.loads(allowed.stdout)["artifacts_dir"])
    recorded = json.loads((run_dir / "sandbox.json").read_text())["host_firewall"]
    assert recorded["enforced"] is False and "iptables is not installed" in recorded["reason"]
