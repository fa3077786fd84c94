"""Model choice parsing, the sandbox endpoint rewrite and the stage environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.session.llm import (
    LlmChoice,
    LlmPathNotADirectory,
    LlmPathNotFound,
    llm_stage_env,
    normalise_base_url,
    parse_llm,
    sandbox_endpoint,
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "qwen-0.5b"
    path.mkdir()
    return path


def test_remote_id() -> None:
    assert parse_llm("  deepseek-v3.2 ") == LlmChoice("remote", "deepseek-v3.2")
    assert parse_llm("openai/gpt-4o-mini") == LlmChoice("remote", "openai/gpt-4o-mini")


def test_local_dir_as_path_and_str(model_dir: Path) -> None:
    expected = LlmChoice("local_hf", "qwen-0.5b", model_dir.resolve())
    assert parse_llm(model_dir) == expected
    assert parse_llm(str(model_dir)) == expected


def test_relative_and_tilde(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_dir.parent)
    assert parse_llm("./qwen-0.5b").model_dir == model_dir.resolve()
    assert parse_llm("qwen-0.5b").kind == "local_hf"  # an existing dir wins over a model id
    monkeypatch.setenv("HOME", str(model_dir.parent))
    assert parse_llm("~/qwen-0.5b").model_dir == model_dir.resolve()


@pytest.mark.parametrize("as_path", [True, False])
def test_missing_path(tmp_path: Path, as_path: bool) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(LlmPathNotFound) as info:
        parse_llm(missing if as_path else str(missing))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, RunnerError)
    assert info.value.path == missing and str(missing) in str(info.value)


def test_file_is_not_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_text("")
    with pytest.raises(NotADirectoryError) as info:
        parse_llm(str(file))
    assert isinstance(info.value, LlmPathNotADirectory) and info.value.path == file


@pytest.mark.parametrize("value", ["", "   "])
def test_empty(value: str) -> None:
    with pytest.raises(ValueError, match="empty_llm"):
        parse_llm(value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:1", "http://h:1/v1"),
        ("http://h:1/", "http://h:1/v1"),
        ("http://h:1/v1/", "http://h:1/v1"),
        ("https://h/openai/v1", "https://h/openai/v1"),
        ("https://h/api", "https://h/api/v1"),
    ],
)
def test_normalise(url: str, expected: str) -> None:
    assert normalise_base_url(url) == expected


@pytest.mark.parametrize(
    ("url", "sandbox_url", "allow"),
    [
        ("http://127.0.0.1:8000/v1", "http://172.23.0.1:8000/v1", ("172.23.0.1", 8000)),
        ("http://localhost:8000", "http://172.23.0.1:8000/v1", ("172.23.0.1", 8000)),
        ("http://LOCALHOST/v1/", "http://172.23.0.1:80/v1", ("172.23.0.1", 80)),
        ("https://127.1.2.3/api", "https://172.23.0.1:443/api/v1", ("172.23.0.1", 443)),
        ("http://[::1]:9000/v1", "http://172.23.0.1:9000/v1", ("172.23.0.1", 9000)),
        ("http://0.0.0.0:9000", "http://172.23.0.1:9000/v1", ("172.23.0.1", 9000)),
        ("http://u:p@localhost:1/v1", "http://u:p@172.23.0.1:1/v1", ("172.23.0.1", 1)),
        ("https://api.example.com/v1", "https://api.example.com/v1", None),
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000/v1", None),
        ("http://127.evil.com:8000", "http://127.evil.com:8000/v1", None),
    ],
)
def test_sandbox_endpoint(url: str, sandbox_url: str, allow: tuple[str, int] | None) -> None:
    assert sandbox_endpoint(url, gateway_host="172.23.0.1") == (sandbox_url, allow)


def test_sandbox_endpoint_ipv6_gateway() -> None:
    url, allow = sandbox_endpoint("http://127.0.0.1:8000", gateway_host="fd00::1")
    assert (url, allow) == ("http://[fd00::1]:8000/v1", ("fd00::1", 8000))


@pytest.mark.parametrize("url", ["ftp://h/v1", "127.0.0.1:8000", "http:///v1", "http://h:99999/v1"])
def test_sandbox_endpoint_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        sandbox_endpoint(url, gateway_host="172.23.0.1")


def test_sandbox_endpoint_needs_gateway() -> None:
    with pytest.raises(ValueError, match="gateway_host"):
        sandbox_endpoint("http://localhost:1", gateway_host="")


def test_stage_env_remote() -> None:
    env = llm_stage_env(
        LlmChoice("remote", "deepseek-v3.2"),
        base_url_in_sandbox="https://api.example.com",
        api_key="sk-1",
        model_dir_in_sandbox="/ignored",
    )
    assert env == {
        "AIDER_LLM_KIND": "remote",
        "AIDER_LLM_MODEL": "deepseek-v3.2",
        "OPENAI_MODEL": "deepseek-v3.2",
        "OPENAI_API_BASE": "https://api.example.com/v1",
        "OPENAI_BASE_URL": "https://api.example.com/v1",
        "OPENAI_API_KEY": "sk-1",
    }


def test_stage_env_remote_without_base_or_key() -> None:
    env = llm_stage_env(
        LlmChoice("remote", "m"), base_url_in_sandbox=None, api_key=None, model_dir_in_sandbox=None
    )
    assert env == {"AIDER_LLM_KIND": "remote", "AIDER_LLM_MODEL": "m", "OPENAI_MODEL": "m"}


def test_stage_env_local(model_dir: Path) -> None:
    env = llm_stage_env(
        parse_llm(model_dir),
        base_url_in_sandbox="http://172.23.0.1:8000",
        api_key=None,
        model_dir_in_sandbox="/models/qwen-0.5b",
    )
    assert env == {
        "AIDER_LLM_KIND": "local_hf",
        "AIDER_TRAINED_MODEL_DIR": "/models/qwen-0.5b",
        "OPENAI_MODEL": "qwen-0.5b",
        "OPENAI_API_BASE": "http://172.23.0.1:8000/v1",
        "OPENAI_BASE_URL": "http://172.23.0.1:8000/v1",
        "OPENAI_API_KEY": "local",
    }
    keyed = llm_stage_env(
        parse_llm(model_dir), base_url_in_sandbox=None, api_key="k", model_dir_in_sandbox="/m"
    )
    assert keyed["OPENAI_API_KEY"] == "k"


def test_stage_env_local_needs_sandbox_dir(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="model_dir_in_sandbox"):
        llm_stage_env(
            parse_llm(model_dir), base_url_in_sandbox=None, api_key=None, model_dir_in_sandbox=None
        )
