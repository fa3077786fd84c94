"""One prompt to the agent and what came of it (the session's messages, how it ended).

``prompt_async`` + polling ``/session/status`` rather than the synchronous message call:
the poll sees OpenCode's ``retry`` status, so a model endpoint that went down is reported
after ``Bounds.model_down_s`` instead of OpenCode's own ~70 s of retries, and the run can
be aborted at its deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.agent.client import ExecHttpClient
from runner.agent.config import Bounds, ModelRoute
from runner.errors import AgentError

POLL_S = 0.5
IDLE_GRACE_S = 15.0
"""How long an idle session may show no finished reply before we stop waiting."""
DISABLED_TOOLS = {"question": False, "task": False, "webfetch": False}
"""``question`` would block a headless loop; subagents and web access are not needed."""


class ModelUnreachable(AgentError):
    """The model endpoint did not answer (before the start, or while OpenCode retried)."""


class SandboxUnavailable(AgentError):
    """The agent's sandbox could not be opened (engine down, image missing): retrying is futile."""


@dataclass
class Transcript:
    """What one prompt produced: the session's messages, and how it ended."""

    session_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    """The last assistant message's error (model error, abort), if any."""
    duration_s: float = 0.0

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every tool part: ``{tool, status, input, output}`` (output/error tail-capped)."""
        calls: list[dict[str, Any]] = []
        for msg in self.messages:
            for part in msg.get("parts") or []:
                if not isinstance(part, dict) or part.get("type") != "tool":
                    continue
                state = part.get("state") or {}
                out = state.get("output") if "output" in state else state.get("error")
                calls.append(
                    {
                        "tool": part.get("tool"),
                        "status": state.get("status"),
                        "input": state.get("input"),
                        "output": str(out or "")[-4000:],
                    }
                )
        return calls

    def text(self) -> str:
        """The assistant's text parts, joined (its final explanation)."""
        chunks = []
        for msg in self.messages:
            if (msg.get("info") or {}).get("role") != "assistant":
                continue
            for part in msg.get("parts") or []:
                if isinstance(part, dict) and part.get("type") == "text":
                    chunks.append(str(part.get("text") or ""))
        return "\n".join(c for c in chunks if c)


def run_prompt(
    client: ExecHttpClient,
    route: ModelRoute,
    bounds: Bounds,
    *,
    title: str,
    text: str,
    remaining: Callable[[], float],
) -> Transcript:
    """Send ``text`` to a new session and wait until the agent loop ends.

    Raises:
        ModelUnreachable: OpenCode kept retrying the model for ``bounds.model_down_s``.
        AgentError: the run exceeded its time (``remaining`` hit 0), or the server failed;
            the session is aborted first.
    """
    started = time.monotonic()
    session = client.request("POST", "/session", {"title": title}) or {}
    sid = str(session.get("id") or session.get("sessionID") or "")
    if not sid:
        raise AgentError(f"opencode returned no session id: {str(session)[:300]}")
    body = {
        "agent": "build",
        "model": route.body_model,
        "parts": [{"type": "text", "text": text}],
        "tools": DISABLED_TOOLS,
    }
    client.request("POST", f"/session/{sid}/prompt_async", body)
    retry_since: float | None = None
    idle_since: float | None = None
    messages: list[dict[str, Any]] = []
    while True:
        time.sleep(POLL_S)
        if remaining() <= 0:
            _abort(client, sid)
            raise AgentError(f"the agent did not finish within {bounds.total_s:.0f}s")
        status = (client.request("GET", "/session/status") or {}).get(sid) or {"type": "idle"}
        kind = status.get("type")
        if kind == "retry":
            retry_since = retry_since or time.monotonic()
            if time.monotonic() - retry_since > bounds.model_down_s:
                _abort(client, sid)
                raise ModelUnreachable(
                    "model endpoint unreachable: OpenCode kept retrying for "
                    f"{bounds.model_down_s:.0f}s ({str(status.get('message', ''))[:300]})"
                )
            continue
        retry_since = None
        if kind != "idle":
            idle_since = None
            continue
        messages = client.request("GET", f"/session/{sid}/message") or []
        if _finished(messages):
            break
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since > IDLE_GRACE_S:
            break
    transcript = Transcript(sid, messages, duration_s=time.monotonic() - started)
    transcript.error = _last_error(messages) or (
        None if _finished(messages) else "the agent stopped without a reply"
    )
    return transcript


def _abort(client: ExecHttpClient, sid: str) -> None:
    with contextlib.suppress(AgentError):
        client.request("POST", f"/session/{sid}/abort", {}, timeout=5.0)


def _finished(messages: list[dict[str, Any]]) -> bool:
    if not messages:
        return False
    info = messages[-1].get("info") or {}
    if info.get("role") != "assistant":
        return False
    return bool((info.get("time") or {}).get("completed") or info.get("error"))


def _last_error(messages: list[dict[str, Any]]) -> str | None:
    for msg in reversed(messages):
        info = msg.get("info") or {}
        if info.get("role") == "assistant":
            err = info.get("error")
            if not err:
                return None
            data = err.get("data") or {}
            return f"{err.get('name', 'error')}: {data.get('message', '')}".strip()
    return None
