"""Bootstrap snapshots are bounded (issue 15 item 4, the snapshot cap).

Bootstrap may write gigabytes (root filesystem or workspace); committing that as an
image would grow the engine's image store without bound, one key at a time. Over
``FSM_RUNNER_MAX_SNAPSHOT_BYTES`` nothing is committed and the session says why.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import runner_env
from sandbox import SandboxSpec, open_sandbox
from sandbox.engine import get_client
from sandbox.snapshots import (
    MAX_SNAPSHOT_ENV,
    SnapshotTooLarge,
    commit_snapshot,
    find_snapshot,
    image_id,
    prune_snapshots,
)
from tests.contract_repos import make_repo

pytestmark = pytest.mark.docker

CAP = 10_000_000
BLOB_MB = 30


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(MAX_SNAPSHOT_ENV, str(CAP))
    monkeypatch.setenv("FSM_RUNNER_BOOTSTRAP_CACHE_MIN_SECONDS", "0")  # commit every miss
    yield


def _no_image(key: str) -> bool:
    """No snapshot for ``key``, tagged or not (an intermediate commit carries the key too)."""
    label = {"label": f"fsm-runner.bootstrap-key={key}"}
    return find_snapshot(key) is None and get_client().images.list(all=True, filters=label) == []


@pytest.mark.parametrize("where", ["/opt/blob", "/workspace/blob"], ids=["rootfs", "workspace"])
def test_writes_over_the_cap_are_not_committed(
    small_cap: None, default_image: str, tmp_path: Path, where: str
) -> None:
    key = f"captest{uuid.uuid4().hex[:16]}"
    with open_sandbox(SandboxSpec(image=default_image, workspace_src=tmp_path)) as sb:
        res = sb.exec(f"head -c {BLOB_MB}000000 /dev/urandom > {where} && echo done")
        assert res.stdout.strip() == "done", res
        with pytest.raises(
            SnapshotTooLarge, match=f"over the 0.01 GB cap \\({MAX_SNAPSHOT_ENV}\\)"
        ):
            commit_snapshot(
                sb,
                key,
                base_image_id=image_id(default_image),
                labels={},
                workspace_paths=["blob"],
            )
    assert _no_image(key)


def test_a_session_whose_bootstrap_writes_too_much_says_why_and_saves_nothing(
    small_cap: None, default_image: str, tmp_path: Path
) -> None:
    boot = f"version: 1\ncmds:\n  - head -c {BLOB_MB}000000 /dev/urandom > /opt/blob\n"
    repo = make_repo(tmp_path / "repo", bootstrap=boot)
    with runner_env.setup(repo, sandbox="docker", audit="off") as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert roll.ok, roll.reason
    saved = [
        json.loads(line)
        for line in (sess.artifacts_dir / "events.jsonl").read_text().splitlines()
        if '"bootstrap_cache_saved"' in line
    ]
    assert len(saved) == 1 and saved[0]["saved"] is False, saved
    assert "snapshot not saved" in saved[0]["reason"] and MAX_SNAPSHOT_ENV in saved[0]["reason"]
    assert _no_image(saved[0]["key"])


def test_writes_under_the_cap_are_committed(
    monkeypatch: pytest.MonkeyPatch, default_image: str, tmp_path: Path
) -> None:
    monkeypatch.setenv(MAX_SNAPSHOT_ENV, str(10 * CAP))
    key = f"captest{uuid.uuid4().hex[:16]}"
    try:
        with open_sandbox(SandboxSpec(image=default_image, workspace_src=tmp_path)) as sb:
            sb.exec(f"head -c {BLOB_MB}000000 /dev/urandom > /opt/blob")
            commit_snapshot(sb, key, base_image_id=image_id(default_image), labels={})
        assert find_snapshot(key) is not None
    finally:
        prune_snapshots(keep=0, label=f"fsm-runner.bootstrap-key={key}")
    assert find_snapshot(key) is None
