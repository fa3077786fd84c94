"""Which model a session uses, and how stages inside the sandbox reach it.

The user names a model either as a remote id (``deepseek-v3.2``) or as a local model
directory. Stages run in a container, where ``127.0.0.1`` is the container itself: a
model server the user runs on the host's loopback must be addressed through the
sandbox network's gateway instead, and the network policy must open exactly that
endpoint. This module owns both decisions; it never opens a socket.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from runner.errors import RunnerError

LlmKind = Literal["remote", "local_hf"]

_PATH_PREFIXES = ("/", "./", "../", "~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class LlmPathNotFound(RunnerError, FileNotFoundError):
    """An explicit model path does not exist; ``path`` (and ``filename``) name it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(errno.ENOENT, "llm_path_not_found", str(path))


class LlmPathNotADirectory(RunnerError, NotADirectoryError):
    """An explicit model path exists but is not a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(errno.ENOTDIR, "llm_path_not_a_directory", str(path))


@dataclass(frozen=True)
class LlmChoice:
    """A parsed ``llm`` argument.

    ``model`` is the remote model id, or the directory's name for ``local_hf`` (what
    ``OPENAI_MODEL`` shows when the deployed server does not say otherwise).
    """

    kind: LlmKind
    model: str
    model_dir: Path | None = None


def parse_llm(llm: str | Path) -> LlmChoice:
    """Tell a remote model id from a local model directory, as the predecessor did.

    A ``Path``, or a string that looks like a path (``/``, ``./``, ``../``, ``~``), must
    be an existing directory. Any other string is a local directory if one exists
    under that name, else a remote model id.

    Raises:
        ValueError: ``llm`` is empty.
        LlmPathNotFound: an explicit path does not exist (a ``FileNotFoundError``).
        LlmPathNotADirectory: an explicit path is not a directory (a ``NotADirectoryError``).
    """
    if isinstance(llm, Path):
        return _local(llm)
    text = llm.strip()
    if not text:
        raise ValueError("empty_llm: give a remote model id or a local model directory")
    if text.startswith(_PATH_PREFIXES):
        return _local(Path(text))
    if Path(text).is_dir():
        return _local(Path(text))
    return LlmChoice(kind="remote", model=text)


def _local(path: Path) -> LlmChoice:
    resolved = path.expanduser().resolve()
    if not resolved.exists():
        raise LlmPathNotFound(resolved)
    if not resolved.is_dir():
        raise LlmPathNotADirectory(resolved)
    return LlmChoice(kind="local_hf", model=resolved.name, model_dir=resolved)


def normalise_base_url(url: str) -> str:
    """End an OpenAI-compatible base URL with ``/v1``, the shape every stage expects."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # 0.0.0.0 / :: as a destination means "this host" on Linux, like loopback.
    return address.is_loopback or address.is_unspecified


def host_endpoint(base_url: str) -> tuple[str, int] | None:
    """(host, port) of a loopback base URL as the host reaches it; None for other hosts."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    if not parts.hostname or not is_loopback(parts.hostname):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (
        "127.0.0.1"
        if parts.hostname in ("localhost", "0.0.0.0") or parts.hostname.endswith(".localhost")
        else parts.hostname
    )
    if host in ("::", "::1"):
        host = "::1"
    return host, port


def sandbox_endpoint(base_url: str, *, gateway_host: str) -> tuple[str, tuple[str, int] | None]:
    """Rewrite a host-side model URL for use inside the sandbox.

    A loopback host (``localhost``, ``127.0.0.0/8``, ``::1``, ``0.0.0.0``) is replaced
    by ``gateway_host``; the port stays the same, so the host service (or a relay) must
    listen on ``gateway_host:port``. Any other host is kept and needs ordinary egress.

    Returns:
        The URL stages must use (always ending in ``/v1``), and the ``(gateway_host,
        port)`` the network policy must allow, or None when the URL is not loopback.

    Raises:
        ValueError: the URL is not http(s), has no host, or has an invalid port; or
            ``gateway_host`` is empty.
    """
    if not gateway_host.strip("[]"):
        raise ValueError("gateway_host is empty")
    parts = urlsplit(base_url.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"model base URL must be http(s)://host[:port][/path], got {base_url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"model base URL has an invalid port: {base_url!r}") from exc
    if not is_loopback(parts.hostname):
        return normalise_base_url(base_url), None
    host = f"[{gateway_host}]" if ":" in gateway_host else gateway_host
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    rewritten = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return normalise_base_url(rewritten), (gateway_host, port)


def llm_stage_env(
    choice: LlmChoice,
    *,
    base_url_in_sandbox: str | None,
    api_key: str | None,
    model_dir_in_sandbox: str | None,
) -> dict[str, str]:
    """The model variables a stage sees (predecessor section 10).

    ``AIDER_LLM_MODEL`` is set only for a remote model: for a local model the deployed
    server names it later, through ``runtime_env.json``. ``model_dir_in_sandbox`` is the
    model directory's path inside the sandbox (the host path means nothing there); it
    is ignored for a remote model. ``OPENAI_API_KEY`` falls back to ``local`` for a
    local model because OpenAI clients refuse to start without one.

    Raises:
        ValueError: a local model without ``model_dir_in_sandbox``.
    """
    env = {"AIDER_LLM_KIND": choice.kind, "OPENAI_MODEL": choice.model}
    if choice.kind == "remote":
        env["AIDER_LLM_MODEL"] = choice.model
    else:
        if not model_dir_in_sandbox:
            raise ValueError("a local_hf model needs model_dir_in_sandbox")
        env["AIDER_TRAINED_MODEL_DIR"] = model_dir_in_sandbox
    if base_url_in_sandbox:
        base = normalise_base_url(base_url_in_sandbox)
        env["OPENAI_API_BASE"] = base
        env["OPENAI_BASE_URL"] = base
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    elif choice.kind == "local_hf":
        env["OPENAI_API_KEY"] = "local"
    return env
