"""Networks a sandbox may be attached to, and switching between them while it runs.

``none``: the container has no network at all (loopback only): it is created with
``network_mode=none`` and every network is disconnected.
``egress``: attached to a shared user bridge ``fsm-runner-egress`` with inter-container
traffic disabled (two untrusted sandboxes on it cannot reach each other), and this
sandbox's host firewall rules on that bridge: nothing on the host, no other bridge, only
the outside world.
``llm``: attached to a per-sandbox ``internal`` network (no forwarding off the host); a
relay the runner owns listens on that network's gateway and forwards to the model
endpoint, and host firewall rules drop everything the sandbox sends to the host except
the relay's address and port. Without them an internal network still reaches every host
service bound to 0.0.0.0 (notes/docker.md §8).

The rules (``firewall.py``) are installed before the container is attached, or the policy
is refused: there is no fail-open (issue 15 item 6).

Switching costs one or two engine calls (~65 ms each, measured).
"""

from __future__ import annotations

import contextlib
from typing import Any

import docker

from . import atomic, subnets
from .base import NetworkPolicy
from .engine import creator_labels, engine_errors
from .errors import SandboxError
from .firewall import FirewallUnavailable, SandboxFirewall
from .relay import TcpRelay

EGRESS_NETWORK = "fsm-runner-egress"


_egress: tuple[str, str] | None = None


def _egress_network(client: docker.DockerClient) -> tuple[str, str]:
    """The egress network's (id, bridge), looked up once per process (switching is on the
    hot path)."""
    global _egress
    if _egress is None:
        net = ensure_egress_network(client)
        _egress = (str(net.id), _bridge_name(client, str(net.id), net.attrs))
    return _egress


def ensure_egress_network(client: docker.DockerClient) -> Any:
    """The shared egress bridge, created once (labelled so ``images/gc`` tools can see it)."""
    with engine_errors("list networks"):
        found = client.networks.list(names=[EGRESS_NETWORK])
    for net in found:
        if net.name == EGRESS_NETWORK:
            return net
    with engine_errors(f"create network {EGRESS_NETWORK}"):
        try:
            return client.networks.create(
                EGRESS_NETWORK,
                driver="bridge",
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels=creator_labels("network-shared"),
            )
        except docker.errors.APIError as exc:  # lost a creation race with another process
            if exc.status_code == 409:
                return client.networks.get(EGRESS_NETWORK)
            raise


class NetworkSwitch:
    """Keeps one container's attachments in line with the requested policy."""

    def __init__(
        self,
        client: docker.DockerClient,
        container: Any,
        sandbox_id: str,
        llm_endpoint: tuple[str, int] | None,
    ) -> None:
        self._client = client
        self._container = container
        self._sandbox_id = sandbox_id
        self._llm_endpoint = llm_endpoint
        self._llm_net: Any = None
        self._llm_net_name: str | None = None
        """Set before the create call: a stop signal may land while the engine makes it."""
        self.firewall = SandboxFirewall(sandbox_id)
        self._relay: TcpRelay | None = None
        self.attached: set[str] = {"none"}
        self.policy = NetworkPolicy.NONE
        self.llm_gateway: str | None = None

    @property
    def llm_address(self) -> tuple[str, int] | None:
        """(gateway, relay port) the sandbox uses to reach the model under ``llm``."""
        return self._relay.address if self._relay is not None else None

    def prepare_llm(self) -> None:
        """Create the llm network, relay and firewall now, so callers know the address early."""
        if self._llm_endpoint is not None:
            self._ensure_llm_network()

    def apply(self, policy: NetworkPolicy) -> None:
        """Attach exactly what ``policy`` allows; low-level calls by name (no inspects)."""
        if policy == self.policy:
            return
        self._detach_all()
        if policy == NetworkPolicy.EGRESS:
            self.firewall.require("egress")  # refuse before anything is attached
            try:
                self._connect_egress()
            except SandboxError as exc:
                if isinstance(exc, FirewallUnavailable):
                    raise
                # Removed behind our back (engine reset): look it up again.
                global _egress
                _egress = None
                self._connect_egress()
        elif policy == NetworkPolicy.LLM:
            self._connect(self._ensure_llm_network().id, "llm")
        # NONE: with every network disconnected only loopback is left, which is what the
        # engine's "none" mode gives; reconnecting "none" would cost a call for nothing.
        self.policy = policy

    def _connect_egress(self) -> None:
        net_id, bridge = _egress_network(self._client)
        self.firewall.isolate(bridge)
        self._connect(net_id, "egress")

    def _connect(self, net_id: str, label: str) -> None:
        with engine_errors(f"connect {label} network"):
            self._client.api.connect_container_to_network(self._container.id, net_id)
        self.attached = {net_id}

    def _detach_all(self) -> None:
        for name in sorted(self.attached):
            with engine_errors(f"disconnect network {name}"):
                self._client.api.disconnect_container_from_network(
                    self._container.id, name, force=True
                )
        self.attached = set()

    def _ensure_llm_network(self) -> Any:
        if self._llm_net is not None:
            return self._llm_net
        if self._llm_endpoint is None:
            raise SandboxError("network policy 'llm' needs SandboxSpec.llm_endpoint=(host, port)")
        self.firewall.require("llm")  # refuse before the network exists
        self._llm_net_name = f"fsm-llm-{self._sandbox_id}"
        net = self._create_llm_network(self._llm_net_name)
        self._llm_net = net
        bridge = _bridge_name(self._client, net.id, net.attrs)
        config = (net.attrs.get("IPAM") or {}).get("Config") or [{}]
        self.llm_gateway = config[0].get("Gateway")
        if not self.llm_gateway:
            raise SandboxError(f"llm network {net.name} has no gateway address")
        self._relay = TcpRelay(self.llm_gateway, self._llm_endpoint)
        self.firewall.isolate(bridge, allow=self._relay.address)
        return net

    def _create_llm_network(self, name: str) -> Any:
        """An internal network on a /28 of our own pool (``subnets.py``), not an engine pool."""
        taken: list[str] = []
        for subnet, gateway in subnets.candidates(self._sandbox_id):
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)]
            )
            with engine_errors("create llm network"), atomic.creating():
                try:
                    net = self._client.networks.create(
                        name,
                        driver="bridge",
                        internal=True,
                        ipam=ipam,
                        labels=creator_labels("network", self._sandbox_id),
                    )
                except docker.errors.APIError as exc:
                    if "overlap" not in str(exc.explanation or exc).lower():
                        raise
                    taken.append(subnet)  # another network holds it: try the next
                    continue
                net.reload()
                return net
        raise SandboxError(
            f"create llm network: no free /{subnets.PREFIX} in {subnets.pool()} after "
            f"{len(taken)} taken; set {subnets.POOL_ENV} to a larger private range"
        )

    def close(self) -> None:
        """Rules first (the container is gone by now), then the relay and the network."""
        self.firewall.remove()
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._llm_net_name is not None:
            # By name: the handle is missing when the create call was interrupted.
            with contextlib.suppress(docker.errors.DockerException):  # else the reaper removes it
                self._client.api.remove_network(self._llm_net_name)
            self._llm_net = self._llm_net_name = None


def _bridge_name(client: docker.DockerClient, net_id: str, attrs: Any = None) -> str:
    """The host interface of a bridge network: its ``bridge.name`` option, else ``br-<id12>``."""
    if attrs is None:
        with engine_errors("inspect network"):
            attrs = client.api.inspect_network(net_id)
    options = (attrs or {}).get("Options") or {}
    return str(options.get("com.docker.network.bridge.name") or f"br-{net_id[:12]}")
