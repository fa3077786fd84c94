"""The one boundary between the docker SDK and our errors, plus the labels we stamp.

Every docker SDK call goes through ``engine_errors()`` so that a missing engine becomes
``EngineUnavailable`` (with the command that fixes it) and any other API failure
becomes ``SandboxError``; nothing from ``docker.errors`` reaches a caller.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import docker
import docker.constants
import docker.errors
import requests

from .errors import EngineUnavailable, SandboxError

LABEL_PREFIX = "fsm-runner"
# Session keys: set on containers, networks and volumes when we create them. The reaper
# acts only on these, and only when they were set at create (an image can supply any
# label to the containers started from it: issue 15 item 3).
LABEL_SANDBOX = f"{LABEL_PREFIX}.sandbox-id"
LABEL_CREATOR_PID = f"{LABEL_PREFIX}.creator-pid"
LABEL_CREATOR_START = f"{LABEL_PREFIX}.creator-start"
LABEL_CREATOR_HOST = f"{LABEL_PREFIX}.creator-host"
LABEL_CREATED_AT = f"{LABEL_PREFIX}.created-at"
LABEL_KIND = f"{LABEL_PREFIX}.kind"
SESSION_KEYS = (
    LABEL_KIND,
    LABEL_SANDBOX,
    LABEL_CREATOR_PID,
    LABEL_CREATOR_START,
    LABEL_CREATOR_HOST,
    LABEL_CREATED_AT,
)

# Image keys: a different key set, so an image never hands a session key to the
# containers started from it.
IMAGE_LABEL_KIND = f"{LABEL_PREFIX}.image.kind"
IMAGE_LABEL_CREATED_AT = f"{LABEL_PREFIX}.image.created-at"
LEGACY_IMAGE_KIND = "image"
"""``fsm-runner.kind`` of base images built before issue 15 (listed and pruned, never trusted)."""


def process_start_ticks(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot; tells a live creator from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    return stat.rsplit(")", 1)[-1].split()[19]


def creator_labels(kind: str, sandbox_id: str = "") -> dict[str, str]:
    """Session labels that let ``reaper.gc()`` decide whether an object's creator is alive.

    Only for objects created per session (containers, networks, volumes), never images.
    """
    pid = os.getpid()
    labels = {
        LABEL_KIND: kind,
        LABEL_CREATOR_PID: str(pid),
        LABEL_CREATOR_START: process_start_ticks(pid),
        LABEL_CREATOR_HOST: socket.gethostname(),
        LABEL_CREATED_AT: f"{time.time():.3f}",
    }
    if sandbox_id:
        labels[LABEL_SANDBOX] = sandbox_id
    return labels


def image_labels(kind: str, **extra: str) -> dict[str, str]:
    """Labels of an image we build or commit: image keys only, no session key."""
    return {IMAGE_LABEL_KIND: kind, IMAGE_LABEL_CREATED_AT: f"{time.time():.3f}", **extra}


def blank_session_labels(inherited: dict[str, str], wanted: dict[str, str]) -> dict[str, str]:
    """``wanted`` plus every other ``fsm-runner.*`` key of ``inherited`` set to "".

    ``docker commit`` copies the container's labels into the image and has no way to drop
    a key (the engine merges them under the ones given), so the session keys of the
    committed container are overridden with empty values; the reaper ignores those.
    """
    blanked = {
        key: "" for key in inherited if key.startswith(f"{LABEL_PREFIX}.") and key not in wanted
    }
    return {**blanked, **wanted}


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Translate docker SDK / transport errors raised while doing ``action``."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise SandboxError(f"{action}: not found: {exc.explanation or exc}") from exc
    except docker.errors.APIError as exc:
        raise SandboxError(f"{action}: engine refused: {exc.explanation or exc}") from exc
    except (requests.ConnectionError, ConnectionError) as exc:
        raise EngineUnavailable(f"{action}: {exc}") from exc
    except docker.errors.DockerException as exc:
        raise SandboxError(f"{action}: {exc}") from exc


@functools.lru_cache(maxsize=1)
def _cached_client() -> docker.DockerClient:
    return _connect()


def _connect() -> docker.DockerClient:
    # Probe with a pinned-version client first: ``from_env()`` negotiates the API version
    # inside its constructor and leaks that socket when the engine is missing.
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        # Checked first because docker-py leaks the socket of a failed unix connect
        # (a stale socket file left by a dead dockerd refuses connections).
        _check_unix_socket(host.removeprefix("unix://"))
    probe: docker.DockerClient | None = None
    try:
        probe = docker.from_env(version=docker.constants.MINIMUM_DOCKER_API_VERSION, timeout=10)
        probe.ping()
        client = docker.from_env(timeout=120)
    except (docker.errors.DockerException, requests.ConnectionError, OSError) as exc:
        raise EngineUnavailable(
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ) from exc
    finally:
        if probe is not None:
            probe.close()
    return client


def _check_unix_socket(path: str) -> None:
    if not os.path.exists(path):
        raise EngineUnavailable(f"no engine socket at {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(path)
        except OSError as exc:
            raise EngineUnavailable(f"engine socket {path}: {exc.strerror or exc}") from exc


def get_client() -> docker.DockerClient:
    """A shared client for this process (one connection pool; the SDK is thread-safe per call).

    Raises:
        EngineUnavailable: no engine answers at DOCKER_HOST / the default socket.
    """
    try:
        return _cached_client()
    except EngineUnavailable:
        _cached_client.cache_clear()
        raise


def reset_client() -> None:
    """Close and forget the shared client (after DOCKER_HOST changes, or in tests)."""
    if _cached_client.cache_info().currsize:
        with suppress(EngineUnavailable):
            _cached_client().close()
    _cached_client.cache_clear()


def engine_available() -> bool:
    """True when an engine answers; never raises."""
    try:
        get_client()
    except EngineUnavailable:
        return False
    return True
