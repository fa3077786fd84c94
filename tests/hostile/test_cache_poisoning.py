"""Issue 15 item 2: a bootstrap snapshot must never carry one repository's code into another.

Repo A's bootstrap plants a ``.pth`` hook in the image's site-packages that rewrites
``metrics.json`` after any Python run. Repo B has the same ``bootstrap.yml`` (and no
hashed file differs): before the fix both got one cache key, B started from A's snapshot
and A's hook forged B's score. Now the key carries the repository's path, its commit
and every file bootstrap could read, so B (and A after an edit or a new commit) misses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.snapshots import LABEL_SNAPSHOT_KEY, list_snapshots, prune_snapshots
from tests.contract_repos import make_repo
from tests.hostile import docker_setup, git_init

pytestmark = pytest.mark.docker

PIPELINE = """\
version: 1
evaluation:
  run_cmds: [python3 .aider_fsm/score.py]
  metrics_path: .aider_fsm/metrics.json
"""
# Identical in both repos; `python3 -m prepare` names no file, so on the old key
# nothing of what it runs was hashed.
BOOTSTRAP = "version: 1\ncmds:\n  - python3 -m prepare\n"
SCORE = (
    'import json\njson.dump({"ok": True, "score": 0.25}, open(".aider_fsm/metrics.json", "w"))\n'
)
HOOK = (
    "import atexit, os; atexit.register(lambda: os.path.exists('.aider_fsm/metrics.json')"
    " and open('.aider_fsm/metrics.json', 'w').write('{\"ok\": true, \"score\": 999}'))\n"
)
PLANT = f"""\
import os, site
where = site.getsitepackages()[0]
os.makedirs(where, exist_ok=True)
open(os.path.join(where, "zz_fsm_forge.pth"), "w").write({HOOK!r})
"""
BENIGN = "print('nothing to prepare')\n"


def _repo(root: Path, prepare: str) -> Path:
    repo = make_repo(root, pipeline=PIPELINE, bootstrap=BOOTSTRAP)
    (repo / ".aider_fsm" / "score.py").write_text(SCORE)
    (repo / "prepare.py").write_text(prepare)
    return repo


def _evaluate(repo: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One session with the cache on: (metrics, bootstrap_cache event)."""
    sess = docker_setup(repo, cache="on")
    try:
        res = sess.evaluate(llm="cache-poison-model", repair_iters=0)
    finally:
        sess.close()
    assert res.ok, res.reason
    events = [json.loads(x) for x in (sess.artifacts_dir / "events.jsonl").read_text().splitlines()]
    cache = next(e for e in events if e["kind"] == "bootstrap_cache")
    if not cache["hit"]:  # every miss leaves a snapshot to attack with
        saved = next(e for e in events if e["kind"] == "bootstrap_cache_saved")
        assert saved["saved"] is True, saved
    assert res.metrics is not None
    return res.metrics, cache


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch, default_image: str) -> Iterator[list[str]]:
    monkeypatch.setenv("FSM_RUNNER_BOOTSTRAP_CACHE_MIN_SECONDS", "0")
    seen: list[str] = []
    yield seen
    for key in set(seen):
        if list_snapshots(f"{LABEL_SNAPSHOT_KEY}={key}"):
            prune_snapshots(keep=0, label=f"{LABEL_SNAPSHOT_KEY}={key}")


def test_another_repo_with_the_same_bootstrap_never_starts_from_its_snapshot(
    tmp_path: Path, keys: list[str]
) -> None:
    attacker = _repo(tmp_path / "a", PLANT)
    forged, a_cache = _evaluate(attacker)
    keys.append(a_cache["key"])
    # Control: the hook works, in the attacker's own container.
    assert forged["score"] == 999, forged

    victim = _repo(tmp_path / "b", BENIGN)
    metrics, b_cache = _evaluate(victim)
    keys.append(b_cache["key"])
    assert b_cache["hit"] is False, "B started from A's bootstrap snapshot"
    assert b_cache["key"] != a_cache["key"]
    assert metrics["score"] == 0.25, f"B's score was forged: {metrics}"


def test_the_same_path_after_an_edit_or_a_new_commit_misses(
    tmp_path: Path, keys: list[str]
) -> None:
    repo = _repo(tmp_path / "repo", PLANT)
    git_init(repo)
    forged, first = _evaluate(repo)
    keys.append(first["key"])
    assert forged["score"] == 999 and first["inputs"]["repo:commit"]

    # The checkout at the same path now holds other code (not a file any command names).
    (repo / "prepare.py").write_text(BENIGN)
    metrics, edited = _evaluate(repo)
    keys.append(edited["key"])
    assert edited["hit"] is False and metrics["score"] == 0.25, metrics

    # Back to the planting code but on a new commit: still not the old snapshot.
    (repo / "prepare.py").write_text(PLANT)
    git_init(repo)  # commits again on top
    _, committed = _evaluate(repo)
    keys.append(committed["key"])
    assert committed["inputs"]["repo:commit"] != first["inputs"]["repo:commit"]
    assert committed["hit"] is False and committed["key"] != first["key"]
