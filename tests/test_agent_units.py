"""The agent's host-side logic without Docker: config, scope rule, checks, prompts, binary."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from runner.agent import _manifest, binary
from runner.agent.checks import (
    contract_paths,
    restore_contract,
    snapshot_contract,
    validate_contract,
)
from runner.agent.config import ENV_API_KEY, Bounds, ModelRoute, config_text, opencode_config
from runner.agent.prompts import repair_prompt, scaffold_prompt
from runner.agent.scope import compare, in_scope, write_file
from runner.agent.transcript import Transcript, _finished, _last_error
from runner.errors import AgentError
from tests.contract_repos import make_repo


def test_model_route_parse_and_errors() -> None:
    route = ModelRoute.parse("openrouter/org/model-x", base_url="http://h/v1", api_key="k")
    assert route.model_id == "org/model-x"
    assert route.body_model == {"providerID": "fsm", "modelID": "org/model-x"}
    assert ModelRoute.parse("bare", base_url="http://h", api_key=None).model_id == "bare"
    with pytest.raises(AgentError, match="OPENAI_API_BASE"):
        ModelRoute.parse("p/m", base_url=None, api_key=None)
    with pytest.raises(AgentError, match="provider/model"):
        ModelRoute.parse("p/", base_url="http://h", api_key=None)


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="model_down_s"):
        Bounds(model_down_s=0)
    with pytest.raises(ValueError, match="max_steps"):
        Bounds(max_steps=0)


def test_config_holds_no_secret_and_no_address() -> None:
    route = ModelRoute.parse(
        "p/m", base_url="http://127.0.0.1:9/v1", api_key="sk-secret-abcdefghijklmnop"
    )
    text = config_text(route, Bounds(model_request_s=12))
    assert "sk-secret" not in text and "127.0.0.1" not in text
    cfg = opencode_config(route, Bounds(model_request_s=12))
    options = cfg["provider"]["fsm"]["options"]
    assert options["apiKey"] == f"{{env:{ENV_API_KEY}}}"
    assert options["timeout"] == options["chunkTimeout"] == 12000
    # Nothing may wait for a human on a headless server.
    assert "ask" not in cfg["permission"].values()
    assert cfg["permission"]["question"] == cfg["permission"]["external_directory"] == "deny"
    assert cfg["autoupdate"] is False and cfg["share"] == "disabled"


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("pipeline.yml", True),
        (".aider_fsm/stages/rollout.sh", True),
        (".aider_fsm/bootstrap.yml", True),
        (".aider_fsm/metrics.json", False),
        (".aider_fsm/rollout.json", False),
        (".aider_fsm/artifacts/x/y.txt", False),
        ("src/evil.py", False),
        (".aider_fsm", False),
        ("sub/pipeline.yml", False),
    ],
)
def test_scope_rule(rel: str, expected: bool) -> None:
    assert in_scope(rel) is expected


def test_manifest_and_compare(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    os.symlink("/etc/passwd", tmp_path / "link")
    before = _manifest.tree(str(tmp_path), [".git"])
    assert set(before) == {"a.txt", "link"}
    assert before["link"][0] == "link" and before["link"][2] == "/etc/passwd"
    (tmp_path / "a.txt").write_text("b")
    (tmp_path / "new.txt").write_text("n")
    (tmp_path / "link").unlink()
    changes = {c.path: c.status for c in compare(before, _manifest.tree(str(tmp_path), []))}
    assert changes == {"a.txt": "modified", "new.txt": "created", "link": "deleted"} | {
        ".git/HEAD": "created"
    }


def test_write_file_never_follows_links(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    os.symlink(outside, repo / ".aider_fsm")
    with pytest.raises(AgentError, match="is a link"):
        write_file(repo, ".aider_fsm/stages/x.sh", b"echo")
    assert list(outside.iterdir()) == []
    (repo / "pipeline.yml").symlink_to(outside / "target")
    write_file(repo, "pipeline.yml", b"version: 1\n", executable=False)
    assert not (repo / "pipeline.yml").is_symlink()
    assert not (outside / "target").exists()
    write_file(repo, "run.sh", b"echo", executable=True)
    assert (repo / "run.sh").stat().st_mode & stat.S_IXUSR


def test_validate_contract_names_problems(tmp_path: Path) -> None:
    good = make_repo(tmp_path / "good")
    assert validate_contract(good) == []
    assert validate_contract(tmp_path) == [
        "missing_pipeline.yml: the agent did not write pipeline.yml"
    ]
    broken = make_repo(tmp_path / "broken", rollout="")
    errors = validate_contract(broken, script_errors=["x.sh: bash -n failed"])
    assert "x.sh: bash -n failed" in errors
    assert any("missing_script" in e and "rollout.sh" in e for e in errors)
    (broken / "pipeline.yml").write_text("version: 1\nevalution: {}\n")
    (err,) = validate_contract(broken)
    assert err.startswith("pipeline_invalid:") and "evalution" in err


def test_snapshot_restore_roundtrip(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".aider_fsm" / "metrics.json").write_text("{}")
    snap = snapshot_contract(repo)
    assert ".aider_fsm/metrics.json" not in snap  # an output, not the contract
    (repo / "pipeline.yml").write_text("garbage")
    (repo / ".aider_fsm" / "stages" / "extra.sh").write_text("echo")
    (repo / ".aider_fsm" / "stages" / "rollout.sh").unlink()
    restore_contract(repo, snap)
    assert validate_contract(repo) == []
    assert ".aider_fsm/stages/extra.sh" not in contract_paths(repo)
    assert (repo / ".aider_fsm" / "metrics.json").read_text() == "{}"


def test_prompts_carry_rules_schema_and_evidence() -> None:
    text = scaffold_prompt(
        repo_name="r",
        files=["src/a.py", "README.md"],
        readme="# Readme\nrun `make eval`",
        hints=["make eval"],
        attempt=2,
        attempts=3,
        previous_failure="pipeline_invalid: bad key",
    )
    assert "Scope rule" in text and '"properties"' in text and "make eval" in text
    assert "attempt 2 of 3" in text and "pipeline_invalid: bad key" in text
    rep = repair_prompt(
        repo_name="r",
        failed_stage="evaluation",
        reason="rc=1",
        evidence={"stderr_tail": "x" * 50_000 + "TAIL"},
        contract_files={"pipeline.yml": "version: 1\n"},
    )
    assert "Failed stage: evaluation" in rep and "[current file: pipeline.yml]" in rep
    assert rep.count("x") < 10_000 and "TAIL" in rep


def test_transcript_helpers() -> None:
    done: list[dict[str, Any]] = [
        {"info": {"role": "user"}, "parts": []},
        {
            "info": {"role": "assistant", "time": {"completed": 1}},
            "parts": [
                {"type": "tool", "tool": "write", "state": {"status": "completed", "output": "ok"}},
                {"type": "text", "text": "Done."},
            ],
        },
    ]
    assert _finished(done) and _last_error(done) is None
    t = Transcript("ses_1", done)
    assert t.tool_calls()[0]["tool"] == "write" and t.text() == "Done."
    failed: list[dict[str, Any]] = [
        {"info": {"role": "assistant", "error": {"name": "APIError", "data": {"message": "down"}}}}
    ]
    assert _finished(failed) and _last_error(failed) == "APIError: down"
    assert not _finished([{"info": {"role": "user"}}])


def test_binary_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "opencode"
    script.write_text("#!/usr/bin/env node\n")
    monkeypatch.setenv(binary.ENV_BIN, str(script))
    assert binary.find_opencode(root=tmp_path) is None
    with pytest.raises(AgentError, match="not an opencode executable"):
        binary.require_opencode(root=tmp_path)
    # npm's launcher on PATH is followed to the platform package's ELF binary.
    elf = tmp_path / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
    elf.parent.mkdir(parents=True)
    elf.write_bytes(b"\x7fELF" + b"\0" * 12)
    launcher = tmp_path / "node_modules" / "opencode-ai" / "bin" / "opencode"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/usr/bin/env node\n")
    launcher.chmod(0o755)
    dot_bin = tmp_path / "node_modules" / ".bin"
    dot_bin.mkdir()
    (dot_bin / "opencode").symlink_to(launcher)
    monkeypatch.delenv(binary.ENV_BIN)
    monkeypatch.setenv("PATH", str(dot_bin))
    assert binary.find_opencode(root=tmp_path / "nowhere") == elf.resolve()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AgentError, match="make opencode"):
        binary.require_opencode(root=tmp_path / "nowhere")
