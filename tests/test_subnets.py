"""Per-sandbox networks come from our own small subnets, not the engine's ~30 pools."""

from __future__ import annotations

import ipaddress
import socket
import uuid

import docker
import pytest

from sandbox import NetworkPolicy, SandboxError, SandboxSpec, open_sandbox, subnets
from sandbox.engine import get_client

POOL = "10.214.250.0/27"
"""Two /28s, a range no other test uses."""


def test_candidates_are_small_inside_the_pool_and_start_by_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(subnets.POOL_ENV, "10.99.0.0/24")
    a = list(subnets.candidates("sandbox-a"))
    assert a == list(subnets.candidates("sandbox-a"))  # deterministic per seed
    assert len(a) == 16 and len(set(a)) == 16
    for subnet, gateway in a:
        net = ipaddress.IPv4Network(subnet)
        assert net.prefixlen == subnets.PREFIX and net.subnet_of(
            ipaddress.IPv4Network("10.99.0.0/24")
        )
        assert ipaddress.IPv4Address(gateway) == net.network_address + 1
    firsts = {next(subnets.candidates(f"s{i}")) for i in range(20)}
    assert len(firsts) > 5  # sessions start at different places: few collisions


def test_candidates_skip_what_the_host_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    routed = subnets.host_routes()
    assert routed, "this host routes something (its LAN, docker0)"
    monkeypatch.setenv(
        subnets.POOL_ENV, str(routed[0].supernet(new_prefix=max(routed[0].prefixlen - 1, 8)))
    )
    for subnet, _ in subnets.candidates("x"):
        assert not any(ipaddress.IPv4Network(subnet).overlaps(r) for r in routed)


@pytest.mark.parametrize("raw", ["10.0.0.0/29", "not-a-net", "10.0.0.1/24", "::/64"])
def test_a_bad_pool_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(subnets.POOL_ENV, raw)
    with pytest.raises(ValueError, match=subnets.POOL_ENV):
        subnets.pool()


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    return srv


@pytest.mark.docker
def test_llm_network_takes_a_free_subnet_and_says_when_none_is_left(
    monkeypatch: pytest.MonkeyPatch, default_image: str
) -> None:
    monkeypatch.setenv(subnets.POOL_ENV, POOL)
    client = get_client()
    squat = []
    model = _listener()
    try:
        # Someone else's network holds the first /28 of the pool.
        squat.append(
            client.networks.create(
                f"fsm-test-squat-{uuid.uuid4().hex[:8]}",
                driver="bridge",
                internal=True,
                ipam=docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet="10.214.250.0/28")]
                ),
            )
        )
        marker = {"fsm-runner-test.subnets": uuid.uuid4().hex}
        spec = SandboxSpec(
            image=default_image,
            network=NetworkPolicy.LLM,
            llm_endpoint=("127.0.0.1", model.getsockname()[1]),
            labels=marker,
        )
        with open_sandbox(spec) as sb:
            assert sb.llm_address is not None
            gw, _ = sb.llm_address
            assert gw == "10.214.250.17", gw  # the other /28's gateway
            # The pool is now full: the next llm sandbox is refused, saying what to do.
            with pytest.raises(SandboxError, match=subnets.POOL_ENV), open_sandbox(spec):
                pass
        # Neither sandbox left a container behind, the refused one included.
        label = next(f"{k}={v}" for k, v in marker.items())
        assert client.containers.list(all=True, ignore_removed=True, filters={"label": label}) == []
    finally:
        model.close()
        for net in squat:
            net.remove()
