"""Links planted in ``.aider_fsm/`` (by the repo on the host, or by a stage inside), outputs
that point outside the repo, and a planted git hook: the runner reads and writes nothing
outside the repo, and nothing reaches the host repo's ``.git``."""

from __future__ import annotations

import json
import os
import shutil
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


# -- issue 15 item 1: links pulled out of the sandbox are never recreated on the host -----

CHAIN = 30
"""Levels of ``..`` the chain climbs: far more than any run dir is deep."""


def _chain_of_links() -> str:
    """Links that each resolve inside the artifacts dir on their own, and to ``/`` together."""
    lines = ["mkdir -p d", "ln -s .. d/s", "ln -s d/s top", "ln -s top/.. u01"]
    lines += [f"ln -s u{i - 1:02d}/.. u{i:02d}" for i in range(2, CHAIN + 1)]
    lines += [f"ln -s u{CHAIN:02d} root"]
    return "\n".join(lines) + "\n"


def _links_under(root: Path) -> list[str]:
    """Every symbolic link under ``root`` (none may exist in a run dir), never followed."""
    found = []
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            if os.path.islink(os.path.join(dirpath, name)):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def test_link_chain_then_second_copy_writes_nothing_outside_the_run_dir(
    tmp_path: Path, default_image: str, copy_path: str
) -> None:
    canary_dir = Path("/tmp") / f"fsm-h1-chain-{uuid.uuid4().hex[:10]}"
    canary = canary_dir / "PWNED"
    # The rollout plants the chain and fails; the teardown that follows (same pass) swaps
    # it for real folders on the path the host-side links would lead through, plus a
    # link-to-a-folder swapped for a folder: a second copy into the same pass.
    rollout = (
        'cd "$AIDER_FSM_ARTIFACTS_DIR"\n'
        + _chain_of_links()
        + "mkdir -p real && echo inner > real/keep.txt && ln -s real sub\n"
        + "echo PLANTED $(ls | wc -l)\nexit 1\n"
    )
    teardown = textwrap.dedent(f"""\
        cd "$AIDER_FSM_ARTIFACTS_DIR"
        rm -rf d top u?? root sub
        mkdir -p root{canary_dir} sub
        echo PWNED > root{canary}
        echo through-sub > sub/written.txt
        ln -s root/tmp kept
        echo torn-down > teardown.txt
        """)
    repo = make_repo(tmp_path / "repo", rollout=rollout, deploy_teardown=teardown)
    try:
        with docker_setup(repo) as sess:
            roll = sess.rollout(llm="m", repair_iters=0)
        assert not roll.ok and roll.failed_stage == "rollout", roll.reason
        assert roll.verify.rollout is not None
        assert "PLANTED" in roll.verify.rollout.results[0].stdout  # the chain was made inside
        assert not canary.exists(), f"{canary} was written on the host through the link chain"
        assert not canary_dir.exists()
        assert _links_under(sess.artifacts_dir) == []
        files = sess.artifacts_dir / "env_api" / "rollout_attempt_01" / "stage_files"
        # The second copy (after teardown) landed, inside the run dir, in a folder of its own.
        assert (files / "teardown.txt").read_text() == "torn-down\n"
        assert (files / "root" / canary.relative_to("/")).read_text() == "PWNED\n"
        assert (files / "sub" / "written.txt").read_text() == "through-sub\n"
        assert not (files / "real" / "written.txt").exists()
        links = json.loads((files / ".links.json").read_text())["links"]
        assert links == [{"path": "kept", "kind": "symlink", "target": "root/tmp"}]
        assert labelled_containers(sess.run_id) == []
    finally:
        shutil.rmtree(canary_dir, ignore_errors=True)


def test_links_of_every_kind_come_back_as_a_listing(
    tmp_path: Path, default_image: str, copy_path: str
) -> None:
    """Hard links, dangling links, links to folders: none is made on the host, all listed."""
    rollout = textwrap.dedent("""\
        mkdir -p "$AIDER_FSM_ARTIFACTS_DIR" && cd "$AIDER_FSM_ARTIFACTS_DIR"
        mkdir -p data/deep && echo payload > data/file.txt
        ln data/file.txt hard.txt
        ln -s data dir_link
        ln -s data/missing/nowhere dangling
        ln -s dir_link/deep/../../dir_link chained
        cd "$AIDER_FSM_REPO_ROOT"
        """) + textwrap.dedent(ROLLOUT)
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert roll.ok, roll.reason
    files = sess.artifacts_dir / "env_api" / "rollout_attempt_01" / "stage_files"
    assert _links_under(sess.artifacts_dir) == []
    nlinks = {p.name: p.lstat().st_nlink for p in files.rglob("*") if p.is_file()}
    assert set(nlinks.values()) == {1}, nlinks
    assert (files / "data" / "file.txt").read_text() == "payload\n"
    assert (files / "hard.txt").read_text() == "payload\n"
    links = {e["path"]: e for e in json.loads((files / ".links.json").read_text())["links"]}
    assert links == {
        "chained": {"path": "chained", "kind": "symlink", "target": "dir_link/deep/../../dir_link"},
        "dangling": {"path": "dangling", "kind": "symlink", "target": "data/missing/nowhere"},
        "dir_link": {"path": "dir_link", "kind": "symlink", "target": "data"},
    }
