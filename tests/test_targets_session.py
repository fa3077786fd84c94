"""Remote targets through runner_env, run in real containers: git URL@ref and HF datasets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import runner_env
from tests.contract_repos import make_repo

pytestmark = pytest.mark.docker


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_git_url_at_tag_is_pinned_and_recorded(tmp_path: Path, default_image: str) -> None:
    src = make_repo(tmp_path / "src")
    _git(src, "init", "-q", "-b", "main")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "v1")
    _git(src, "tag", "v1")
    tagged = _git(src, "rev-parse", "HEAD")
    (src / ".aider_fsm" / "stages" / "evaluation.sh").write_text("exit 3\n")
    _git(src, "commit", "-qam", "broken later")
    sess = runner_env.setup(f"file://{src}@v1", clones_dir=tmp_path / "clones")
    assert sess.repo.commit == tagged and sess.repo.source == "git"
    res = sess.evaluate(llm="m", repair_iters=0)
    assert res.ok, res.reason
    created = json.loads((sess.artifacts_dir / "events.jsonl").read_text().splitlines()[0])
    assert created["commit"] == tagged
    # The clone is reused by the next session (no second clone dir).
    again = runner_env.setup(f"file://{src}@v1", clones_dir=tmp_path / "clones")
    assert again.repo.path == sess.repo.path
    again.close()


def test_hf_dataset_from_local_cache(
    tmp_path: Path, default_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset repo carrying its own contract, resolved offline from a local hub cache."""
    sha = "a" * 40
    cache = tmp_path / "hub"
    repo = cache / "datasets--owner--withcontract"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    content = make_repo(tmp_path / "content")
    blobs = repo / "blobs"
    blobs.mkdir()
    for i, path in enumerate(sorted(p for p in content.rglob("*") if p.is_file())):
        rel = path.relative_to(content)
        blob = blobs / f"b{i}"
        blob.write_bytes(path.read_bytes())
        link = repo / "snapshots" / sha / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sess = runner_env.setup("hf://datasets/owner/withcontract", clones_dir=tmp_path / "clones")
    assert sess.repo.source == "hf_dataset" and sess.repo.dataset_id == "owner/withcontract"
    assert sess.rollout(llm="m", require_samples=True, repair_iters=0).ok
    res = sess.evaluate(repair_iters=0)
    assert res.ok and res.metrics is not None and res.metrics["score"] == 0.5
