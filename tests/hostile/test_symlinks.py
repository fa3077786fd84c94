"""Links planted in ``.aider_fsm/`` (by the repo on the host, or by a stage inside), outputs
that point outside the repo, and a planted git hook: the runner reads and writes nothing
outside the repo, and nothing reaches the host repo's ``.git``."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from runner.errors import ContractError
from sandbox.errors import SandboxError
from tests.contract_repos import PIPELINE, ROLLOUT, make_repo
from tests.hostile import (
    docker_setup,
    file_digest,
    files_containing,
    git_init,
    labelled_containers,
    tree_digest,
)

pytestmark = pytest.mark.docker


def _links_leaving(root: Path) -> list[Path]:
    """Links under ``root`` whose target resolves outside it."""
    real = root.resolve()
    return [p for p in root.rglob("*") if p.is_symlink() and not p.resolve().is_relative_to(real)]


@pytest.mark.parametrize("metrics_link", ["etc-hostname", "host-json"])
def test_planted_links_in_aider_fsm_are_neither_followed_nor_written_through(
    tmp_path: Path, default_image: str, metrics_link: str
) -> None:
    tok = f"HOSTONLY-{uuid.uuid4().hex}"
    host = tmp_path / "host"
    host.mkdir()
    victims = {
        "runtime_env.json": host / "runtime_victim.json",
        "rollout.json": host / "rollout_victim.json",
        # Valid metrics: if the runner read through the link, evaluation would pass.
        "metrics.json": host / "metrics_victim.json",
    }
    for victim in victims.values():
        victim.write_text(json.dumps({"ok": True, "score": 1.0, "tok": tok}))
    (host / "secret.txt").write_text(tok + "\n")
    rollout = textwrap.dedent("""\
        cat .aider_fsm/leak .aider_fsm/leakdir/secret.txt .aider_fsm/metrics.json 2>&1 || true
        cp -rL .aider_fsm/leakdir "$AIDER_FSM_ARTIFACTS_DIR/leakdir" 2>&1 || true
        """) + textwrap.dedent(ROLLOUT)
    evaluation = "cat .aider_fsm/metrics.json .aider_fsm/hints_used.json 2>&1 || true\n"
    repo = make_repo(tmp_path / "repo", rollout=rollout, evaluation=evaluation)
    aider = repo / ".aider_fsm"
    for name, victim in victims.items():
        (aider / name).symlink_to(victim)
    if metrics_link == "etc-hostname":
        (aider / "metrics.json").unlink()
        (aider / "metrics.json").symlink_to("/etc/hostname")
    (aider / "hints_used.json").symlink_to("/etc/hostname")
    (aider / "leak").symlink_to(host / "secret.txt")
    (aider / "leakdir").symlink_to(host)
    before = {p: p.read_bytes() for p in host.iterdir()}
    hostname = file_digest(Path("/etc/hostname"))

    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(repair_iters=0)

    # The planted metrics link was not read: no metrics from this run.
    assert not res.ok
    assert res.failed_stage == "metrics"
    assert "metrics_file_missing" in res.reason, res.reason
    # The outputs the stages did write replaced the links; the host files behind them are intact.
    for name in ("runtime_env.json", "rollout.json"):
        assert not (aider / name).is_symlink()
        assert tok not in (aider / name).read_text()
    assert {p: p.read_bytes() for p in host.iterdir()} == before
    assert file_digest(Path("/etc/hostname")) == hostname
    # Nothing behind any link reached the sandbox or the run dir.
    assert files_containing(sess.artifacts_dir, tok) == []
    assert _links_leaving(sess.artifacts_dir) == []


@pytest.mark.parametrize("raw", ["/etc/passwd", "../../outside"])
def test_samples_path_outside_the_repo_is_refused(
    tmp_path: Path, default_image: str, raw: str
) -> None:
    tok = f"HOSTONLY-{uuid.uuid4().hex}"
    repo_parent = tmp_path / "a"
    # ../../outside seen from the repo (the runner's view) is this host file.
    outside = (repo_parent / "repo" / raw).resolve() if not raw.startswith("/") else None
    if outside is not None:
        outside.write_text(json.dumps({"prompt": tok, "completion": tok, "reward": 1.0}) + "\n")
    rollout = f"""echo '{{"ok": true, "paths": {{"samples_jsonl": "{raw}"}}}}' > .aider_fsm/rollout.json\n"""
    repo = make_repo(repo_parent / "repo", rollout=rollout)
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    assert not roll.ok
    assert roll.failed_stage == "rollout"
    assert "samples_jsonl_outside_repo" in roll.reason, roll.reason
    assert files_containing(sess.artifacts_dir, tok) == []
    assert files_containing(sess.artifacts_dir, "root:x:0:0") == []
    assert labelled_containers(sess.run_id) == []


@pytest.mark.parametrize(
    "plant",
    ["ln -s /etc/passwd samples.jsonl", "mkfifo samples.jsonl"],
    ids=["link-to-etc-passwd", "fifo"],
)
def test_samples_file_that_is_a_link_or_fifo_is_reported_not_raised(
    tmp_path: Path, default_image: str, plant: str
) -> None:
    rollout = (
        f"{plant}\n"
        """echo '{"ok": true, "paths": {"samples_jsonl": "samples.jsonl"}}' > .aider_fsm/rollout.json\n"""
    )
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    sess = docker_setup(repo)
    try:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    except SandboxError as exc:
        raise AssertionError(f"rollout() raised instead of reporting: {exc!r}") from exc
    finally:
        sess.close()
    assert not roll.ok
    assert roll.failed_stage == "rollout"
    assert "samples" in roll.reason, roll.reason
    assert files_containing(sess.artifacts_dir, "root:x:0:0") == []


def test_artifacts_dir_link_does_not_move_the_run_dir_outside_the_repo(
    tmp_path: Path, default_image: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(tmp_path / "repo")
    (repo / ".aider_fsm" / "artifacts").symlink_to(outside)
    try:
        sess = docker_setup(repo)
    except ContractError:
        pass  # refusing the link is a fine answer
    else:
        with sess:
            roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
    assert list(outside.iterdir()) == [], "the runner wrote its run dir outside the repo"


def test_bootstrap_yml_link_to_a_host_file_is_not_read(tmp_path: Path, default_image: str) -> None:
    tok = f"HOSTONLY-{uuid.uuid4().hex}"
    host_config = tmp_path / "host" / "config.yml"
    host_config.parent.mkdir()
    host_config.write_text(f"version: 1\ncmds: [echo hi]\nenv:\n  STOLEN: {tok}\n")
    rollout = 'echo "stolen: ${STOLEN:-nothing}"\n' + textwrap.dedent(ROLLOUT)
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    (repo / ".aider_fsm" / "bootstrap.yml").unlink()
    (repo / ".aider_fsm" / "bootstrap.yml").symlink_to(host_config)
    try:
        sess = docker_setup(repo)
    except ContractError as exc:
        assert tok not in str(exc)
        return
    with sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert roll.verify.rollout is None or tok not in roll.verify.rollout.results[0].stdout
    assert files_containing(sess.artifacts_dir, tok) == []


def test_planted_git_hook_does_not_reach_the_host_repo(tmp_path: Path, default_image: str) -> None:
    marker = tmp_path / f"hook-ran-{uuid.uuid4().hex[:8]}"
    rollout = textwrap.dedent(f"""\
        mkdir -p .git/hooks
        printf '#!/bin/sh\\ntouch {marker}\\n' > .git/hooks/post-checkout
        chmod +x .git/hooks/post-checkout
        printf '[core]\\n\\tfsmonitor = touch {marker}\\n' >> .git/config
        mkdir -p "$AIDER_FSM_ARTIFACTS_DIR/hooks"
        cp .git/hooks/post-checkout "$AIDER_FSM_ARTIFACTS_DIR/hooks/"
        ln -s ../../../../../.git "$AIDER_FSM_ARTIFACTS_DIR/repo_git"
        ln -s /workspace/.git/hooks "$AIDER_FSM_ARTIFACTS_DIR/abs_hooks"
        echo "PLANTED $(ls .git/hooks | tr '\\n' ' ')"
        """) + textwrap.dedent(ROLLOUT)
    evaluation = (
        "mkdir -p .git/hooks\n"
        """echo '{"ok": true, "score": 1}' > .git/hooks/pre-commit\n"""
        "chmod +x .git/hooks/pre-commit\n"
    )
    pipeline = PIPELINE.replace(
        "metrics_path: .aider_fsm/metrics.json", "metrics_path: .git/hooks/pre-commit"
    )
    repo = make_repo(tmp_path / "repo", pipeline=pipeline, rollout=rollout, evaluation=evaluation)
    git_init(repo)
    before = tree_digest(repo / ".git")

    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
        assert roll.ok, roll.reason
        res = sess.evaluate(repair_iters=0)
    assert roll.verify.rollout is not None
    planted = [ln for ln in roll.verify.rollout.results[0].stdout.splitlines() if "PLANTED" in ln]
    assert planted and "post-checkout" in planted[0].split(), planted  # it happened inside
    assert res.ok, res.reason  # metrics read from .git/hooks/pre-commit inside the sandbox

    assert tree_digest(repo / ".git") == before
    assert _links_leaving(sess.artifacts_dir) == []
    # A git command on the host that would run the planted hook runs nothing of theirs.
    subprocess.run(
        ["git", "-C", str(repo), "checkout", "-q", "-b", "probe"],
        check=True,
        capture_output=True,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"},
    )
    assert not marker.exists(), "the planted hook ran on the host"
