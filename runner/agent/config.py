"""OpenCode's configuration for one agent run: one OpenAI-compatible provider, offline.

The config file holds no secret and no address: the key and the sandbox-side base URL
are read by OpenCode from the server's environment (``{env:...}`` substitution), so
the file can be written before the sandbox exists, mounted read-only, and copied into
the run dir as is. Everything that would download or phone home at start-up is off
(notes/opencode.md section 3): the models.dev catalogue, autoupdate, sharing, LSP
downloads, default plugins, and the background ``@opencode-ai/plugin`` install (a lock
file stub in the fresh HOME, see :data:`PLUGIN_LOCK`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runner.errors import AgentError

AGENT_ROOT = "/fsm-agent"
"""Everything of ours inside the agent sandbox lives here (outside the workspace)."""
ETC = f"{AGENT_ROOT}/etc"
"""Read-only mount: opencode.json and the helper scripts."""
BIN = f"{AGENT_ROOT}/bin"
"""Read-only mounts: the opencode binary (and the host's rg, if any)."""
HOME = f"{AGENT_ROOT}/home"
REQ = f"{AGENT_ROOT}/req"
"""Request bodies pushed by the client."""

PROVIDER_ID = "fsm"
"""Our provider's id inside OpenCode; never one of its built-ins (``openai`` would pull
in a different SDK and the Responses API)."""
ENV_BASE_URL = "FSM_AGENT_BASE_URL"
ENV_API_KEY = "FSM_AGENT_API_KEY"
PLUGIN_LOCK = {"packages": {"": {"dependencies": {"@opencode-ai/plugin": "1.18.33"}}}}
"""``~/.config/opencode/package-lock.json`` naming the plugin package: OpenCode then skips
its background npm install (there is no switch for it; verified with strace)."""

OFFLINE_ENV = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    # A target repo's own opencode.json / .opencode/ could grant itself permissions,
    # plugins or another provider: only our config counts.
    "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
}

PERMISSIONS = {
    "read": "allow",
    "edit": "allow",
    "glob": "allow",
    "grep": "allow",
    "list": "allow",
    "bash": "allow",
    "todowrite": "allow",
    # "ask" would block a headless server until someone answers: everything is decided here.
    "external_directory": "deny",
    "question": "deny",
    "webfetch": "deny",
    "websearch": "deny",
    "task": "deny",
    "skill": "deny",
    "doom_loop": "deny",
    "lsp": "deny",
}
"""The agent may read, edit and run anything inside its sandbox's project dir; what it
may change on the host is decided afterwards by the scope rule (``scope.py``), not here."""


@dataclass(frozen=True)
class ModelRoute:
    """Which model the agent uses and where it lives.

    Attributes:
        name: what the user passed, ``provider/model`` (``model`` alone is accepted).
        model_id: the part after the first ``/``: the name sent to the endpoint.
        base_url: the host-side OpenAI-compatible base URL (``OPENAI_API_BASE``).
        api_key: the endpoint's key, or None (a placeholder is sent then).
    """

    name: str
    model_id: str
    base_url: str
    api_key: str | None = None

    @classmethod
    def parse(cls, model: str, *, base_url: str | None, api_key: str | None) -> ModelRoute:
        """Raises:
        AgentError: empty model, or no endpoint (OpenCode is only wired to an
            OpenAI-compatible endpoint: ``OPENAI_API_BASE``).
        """
        name = model.strip()
        if not name or name.endswith("/"):
            raise AgentError(f"opencode_model must be 'provider/model', got {model!r}")
        model_id = name.split("/", 1)[1] if "/" in name else name
        if not base_url:
            raise AgentError(
                "the OpenCode agent needs an OpenAI-compatible endpoint: set OPENAI_API_BASE "
                "(and OPENAI_API_KEY) in env_overrides or the environment"
            )
        return cls(name=name, model_id=model_id, base_url=base_url, api_key=api_key or None)

    @property
    def body_model(self) -> dict[str, str]:
        """The ``model`` field of a prompt request."""
        return {"providerID": PROVIDER_ID, "modelID": self.model_id}


@dataclass(frozen=True)
class Bounds:
    """Time and step limits of one agent run (all must be positive).

    Attributes:
        total_s: wall time of one attempt, start-up included.
        request_s: one HTTP request to the OpenCode server.
        model_request_s: one model call made by OpenCode (headers, between chunks, whole).
        model_down_s: how long OpenCode may keep retrying an unreachable model before
            we abort (it would retry for about 70 s on its own).
        max_steps: model turns of one prompt (OpenCode's agent ``steps``).
        startup_s: until ``/global/health`` answers.
    """

    total_s: float = 900.0
    request_s: float = 30.0
    model_request_s: float = 300.0
    model_down_s: float = 20.0
    max_steps: int = 60
    startup_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("total_s", "request_s", "model_request_s", "model_down_s", "startup_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Bounds.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_steps < 1:
            raise ValueError(f"Bounds.max_steps must be >= 1, got {self.max_steps!r}")


def opencode_config(route: ModelRoute, bounds: Bounds) -> dict[str, Any]:
    """The config file's content (no secrets, no addresses: see the module docstring)."""
    ms = int(bounds.model_request_s * 1000)
    model_ref = f"{PROVIDER_ID}/{route.model_id}"
    return {
        "$schema": "https://opencode.ai/config.json",
        "model": model_ref,
        "small_model": model_ref,
        "enabled_providers": [PROVIDER_ID],
        "autoupdate": False,
        "share": "disabled",
        "snapshot": False,
        "lsp": False,
        "formatter": False,
        "permission": PERMISSIONS,
        "experimental": {"continue_loop_on_deny": True},
        "agent": {"build": {"steps": bounds.max_steps}},
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "fsm-runner endpoint",
                "options": {
                    "baseURL": f"{{env:{ENV_BASE_URL}}}",
                    "apiKey": f"{{env:{ENV_API_KEY}}}",
                    "timeout": ms,
                    "headerTimeout": ms,
                    "chunkTimeout": ms,
                },
                "models": {
                    route.model_id: {
                        "name": route.name,
                        "tool_call": True,
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
    }


def config_text(route: ModelRoute, bounds: Bounds) -> str:
    return json.dumps(opencode_config(route, bounds), indent=2) + "\n"
