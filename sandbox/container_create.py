"""How a sandbox's container is made: hardening, limits, mounts and environment.

One ``containers.create`` call, shared by a fresh open and a warm pool's prepare, so a
prepared container is exactly the one a spec would make (``lifecycle.create_key``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from docker.types import Mount, Ulimit

from . import atomic
from .base import SandboxSpec
from .dns import resolv_conf_file
from .engine import engine_errors
from .errors import SandboxError
from .images import cache_dir
from .lifecycle import engine_is_local

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_ENV = (
    "PIP_CERT",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# The capabilities a root `apt-get install` needs (notes/docker.md §5); everything else dropped.
CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID"]


def container_env(spec: SandboxSpec) -> dict[str, str]:
    """The environment of every exec: host CA bundle and proxy settings, then ``spec.env``."""
    env: dict[str, str] = {}
    if os.path.isfile(HOST_CA_BUNDLE):
        env.update(dict.fromkeys(CA_ENV, HOST_CA_BUNDLE))
    for name in PROXY_ENV:
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.update(spec.env)
    return env


def workspace_volume_source(container: Any, workspace: str) -> Path:
    """Host mountpoint of the container's workspace volume.

    Raises:
        SandboxError: the container has no volume at ``workspace``.
    """
    # containers.create() already inspected the new container: Mounts are in attrs.
    for mount in container.attrs.get("Mounts") or []:
        if mount.get("Destination") == workspace and mount.get("Type") == "volume":
            return Path(mount["Source"])
    raise SandboxError("workspace volume not found on the new container")


def create_container(
    client: Any,
    spec: SandboxSpec,
    *,
    image: str,
    name: str,
    labels: dict[str, str],
    env: dict[str, str],
    volume_labels: dict[str, str] | None = None,
) -> Any:
    """Create (not start) the hardened container running ``sleep infinity`` under tini.

    ``volume_labels`` given: the workspace is a fresh anonymous volume with these labels.

    Raises:
        SandboxError: the engine refused or failed (``engine_errors``).
    """
    lim = spec.limits
    # Mounts, never ``volumes=``: the latter also declares each path a VOLUME in the
    # container's config, which a snapshot (docker commit) would then carry along.
    mounts: list[Mount] = []
    if os.path.isfile(HOST_CA_BUNDLE):
        # Mounted over the image's own bundle: pip, git, curl and urllib then all trust
        # the host's (TLS-intercepting) proxy CA without per-tool settings.
        mounts.append(Mount(HOST_CA_BUNDLE, HOST_CA_BUNDLE, type="bind", read_only=True))
    if engine_is_local():
        # The same resolv.conf in every network and on every path (issue 16.4, dns.py).
        conf = str(resolv_conf_file(cache_dir()))
        mounts.append(Mount("/etc/resolv.conf", conf, type="bind", read_only=True))
    for host, inside in spec.readonly_mounts.items():
        mounts.append(Mount(inside, str(Path(host).resolve()), type="bind", read_only=True))
    if spec.workspace_src is not None and spec.workspace_mode == "bind":
        mounts.append(Mount(spec.workspace, str(spec.workspace_src.resolve()), type="bind"))
    if volume_labels is not None:
        mounts.append(Mount(target=spec.workspace, source="", type="volume", labels=volume_labels))
    with engine_errors("create container"), atomic.creating():
        return client.containers.create(
            image,
            ["sleep", "infinity"],
            name=name,
            init=True,
            detach=True,
            labels=labels,
            environment=env,
            working_dir=spec.workspace,
            network_mode="none",
            mem_limit=lim.memory,
            memswap_limit=lim.memory,
            nano_cpus=int(lim.cpus * 1e9),
            pids_limit=lim.pids,
            ulimits=[Ulimit(name="nofile", soft=lim.nofile, hard=lim.nofile)],
            cap_drop=["ALL"],
            cap_add=CAPS,
            security_opt=["no-new-privileges"],
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={lim.tmp_size}"},
            shm_size=lim.shm_size,
            mounts=mounts,
            stop_signal="SIGKILL",
        )
