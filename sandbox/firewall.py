"""Host firewall rules that keep a sandbox's bridges away from the host (issue 15 items 6, 7).

A container on a Docker bridge reaches every host service bound to 0.0.0.0, on every host
address (the bridge gateway, docker0, eth0), because traffic *to* the host goes through
the INPUT chain, which no Docker rule guards, and ``internal=True`` stops only forwarding
(notes/docker.md §8). So each sandbox gets its own rules, inserted before the container is
attached and removed at close:

* INPUT: ``-i <bridge> -j DROP`` (on the llm bridge an ACCEPT above it for the relay's one
  address and port), so nothing on the host answers but that relay;
* DOCKER-USER (FORWARD when Docker made no such chain): from ``<bridge>`` to ``docker0``
  and to every ``br+`` bridge: DROP, so no other container or session is reachable.

Every rule carries ``-m comment --comment fsm-runner:<sandbox_id>``: ``gc`` lists them
and removes those whose sandbox is dead. Rules go in with one ``iptables-restore
--noflush`` (one call, ~30 ms, measured) and out the same way.

When the rules cannot be installed (not root, no iptables) networked policies are refused
(``FirewallUnavailable``), unless the user set ``FSM_RUNNER_ALLOW_HOST_ACCESS=1``; the
sandbox then records that no host firewall is in force. IPv6 needs no rule here: the
engine disables IPv6 inside containers whose networks have none (measured:
``/proc/sys/net/ipv6/conf/all/disable_ipv6`` is 1 there), and ours never enable it.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from .errors import SandboxError

COMMENT_PREFIX = "fsm-runner:"
ALLOW_ENV = "FSM_RUNNER_ALLOW_HOST_ACCESS"
CHAINS = ("INPUT", "DOCKER-USER", "FORWARD")
_TIMEOUT_S = 30
_SID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class FirewallUnavailable(SandboxError):
    """Host firewall rules cannot be installed: a networked policy is refused (fail closed)."""


@dataclass(frozen=True)
class FirewallStatus:
    """Whether per-sandbox host firewall rules can be installed here, and why not."""

    enforced: bool
    reason: str
    allowed_without: bool = False
    """True when the user opted out (``FSM_RUNNER_ALLOW_HOST_ACCESS=1``) and it is needed."""

    def describe(self) -> dict[str, object]:
        """What ``sandbox.json`` and ``doctor`` record: never more than is in force."""
        if self.enforced:
            return {"enforced": True, "rules": "iptables INPUT + DOCKER-USER per sandbox bridge"}
        return {
            "enforced": False,
            "reason": self.reason,
            "networked_stages": "allowed by " + ALLOW_ENV if self.allowed_without else "refused",
        }


def _allowed_without() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return (
            False,
            f"the engine is not on this host (DOCKER_HOST={host}): rules here guard nothing",
        )
    if os.geteuid() != 0:
        return False, "the runner is not root: it cannot install host firewall rules"
    for tool in ("iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed (apt-get install -y iptables)"
    probe = subprocess.run(
        ["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return False, f"iptables cannot read the INPUT chain: {probe.stderr.strip()[:200]}"
    return True, "iptables rules per sandbox bridge"


def status() -> FirewallStatus:
    """Can rules be installed (root, iptables present and working)? Probed once a process."""
    ok, reason = _probe()
    return FirewallStatus(ok, reason, allowed_without=not ok and _allowed_without())


def reset_probe() -> None:
    """Forget the cached probe (tests change PATH)."""
    _probe.cache_clear()


@functools.lru_cache(maxsize=1)
def _forward_chain() -> str:
    """DOCKER-USER (Docker jumps there first from FORWARD and never flushes it), else FORWARD."""
    found = subprocess.run(
        ["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, check=False
    )
    return "DOCKER-USER" if found.returncode == 0 else "FORWARD"


def _comment(sandbox_id: str) -> list[str]:
    return ["-m", "comment", "--comment", f"{COMMENT_PREFIX}{sandbox_id}"]


class SandboxFirewall:
    """The rules of one sandbox: installed per bridge, removed all at once by ``remove()``."""

    def __init__(self, sandbox_id: str) -> None:
        if not _SID_RE.match(sandbox_id):
            raise SandboxError(f"bad sandbox id for a firewall comment: {sandbox_id!r}")
        self.sandbox_id = sandbox_id
        self._rules: list[list[str]] = []  # [chain, *spec], as inserted
        self._bridges: set[str] = set()
        self.status = status()

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def require(self, what: str) -> bool:
        """True when rules can be installed; False when the user opted out; else refuse.

        Raises:
            FirewallUnavailable: rules cannot be installed and no opt-out was given.
        """
        if self.status.enforced:
            return True
        if self.status.allowed_without:
            return False
        raise FirewallUnavailable(
            f"network policy {what!r} refused: {self.status.reason}. Without host firewall "
            f"rules a {what} stage reaches every service of this host (see docs/security.md); "
            f"run as root with iptables, or set {ALLOW_ENV}=1 to accept that"
        )

    def isolate(self, bridge: str, *, allow: tuple[str, int] | None = None) -> None:
        """Drop ``bridge`` -> host (except ``allow``'s address:port) and -> other bridges."""
        if bridge in self._bridges or not self.require("egress" if allow is None else "llm"):
            return
        tag = _comment(self.sandbox_id)
        fwd = _forward_chain()
        # Inserted in this order at position 1: the ACCEPT ends up above its DROP.
        rules = [
            ["INPUT", "-i", bridge, *tag, "-j", "DROP"],
            [fwd, "-i", bridge, "-o", "docker0", *tag, "-j", "DROP"],
            [fwd, "-i", bridge, "-o", "br+", *tag, "-j", "DROP"],
        ]
        if allow is not None:
            host, port = allow
            only = ["-d", f"{host}/32", "-p", "tcp", "--dport", str(port)]
            rules.append(["INPUT", "-i", bridge, *only, *tag, "-j", "ACCEPT"])
        script = "".join(f"-I {r[0]} 1 {shlex.join(r[1:])}\n" for r in rules)
        # Recorded first: a stop signal may land while iptables-restore runs, and close()
        # must then still delete whatever it managed to insert.
        self._rules.extend(rules)
        err = _restore(script)
        if err:  # the batch is atomic: nothing of it was inserted
            del self._rules[-len(rules) :]
            raise FirewallUnavailable(f"installing host firewall rules for {bridge}: {err}")
        self._bridges.add(bridge)

    def remove(self) -> None:
        """Delete every rule this object installed. Never raises (gc finds what is left).

        Forgotten only once deleted: a second call after an interrupted one deletes again.
        """
        if self._rules:
            delete_rules([(r[0], r[1:]) for r in self._rules])
        self._rules = []
        self._bridges = set()


def _restore(script: str) -> str:
    """Apply ``-I``/``-D`` lines in one ``iptables-restore --noflush`` call; "" or the error."""
    try:
        proc = subprocess.run(
            ["iptables-restore", "-w", "--noflush"],
            input=f"*filter\n{script}COMMIT\n",
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"rc={proc.returncode}")


def delete_rules(rules: list[tuple[str, list[str]]]) -> list[str]:
    """Delete (chain, spec) rules; one call, else one by one. Returns the errors."""
    if not rules:
        return []
    if not _restore("".join(f"-D {c} {shlex.join(spec)}\n" for c, spec in rules)):
        return []
    errors = []  # the batch is atomic: one rule already gone fails it all
    for chain, spec in rules:
        proc = subprocess.run(
            ["iptables", "-w", "-D", chain, *spec], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 and "does a matching rule exist" not in proc.stderr:
            errors.append(f"{chain} {shlex.join(spec)}: {proc.stderr.strip()[:200]}")
    return errors


@dataclass(frozen=True)
class TaggedRule:
    """One rule of ours in the host firewall, as ``iptables -S`` prints it."""

    chain: str
    spec: list[str]
    sandbox_id: str


def tagged_rules() -> list[TaggedRule]:
    """Every rule carrying an ``fsm-runner:<id>`` comment, in the chains we use."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        return []
    found = []
    for chain in CHAINS:
        proc = subprocess.run(
            ["iptables", "-w", "-S", chain], capture_output=True, text=True, check=False
        )
        for line in proc.stdout.splitlines():
            words = shlex.split(line)
            if len(words) < 3 or words[:2] != ["-A", chain] or "--comment" not in words:
                continue
            comment = words[words.index("--comment") + 1]
            if comment.startswith(COMMENT_PREFIX):
                found.append(TaggedRule(chain, words[2:], comment[len(COMMENT_PREFIX) :]))
    return found
