"""The bootstrap image cache, against the real engine: a hit skips bootstrap and restores
its effects, any change to a hashed input is a miss, prune bounds the cache, and
concurrent sessions of one key leave exactly one snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runner_env
from sandbox.snapshots import LABEL_SNAPSHOT_KEY, list_snapshots, prune_snapshots
from tests.contract_repos import make_repo

pytestmark = pytest.mark.docker

REPO_LABEL = "fsm-runner.bootstrap-repo"

BOOTSTRAP = """\
version: 1
cmds:
  - python3 -m venv --without-pip .aider_fsm/venv
  - bash .aider_fsm/prepare.sh
  - date +%s%N > /opt/bootstrap-stamp
  - echo run >> /opt/bootstrap-runs
"""

PREPARE = "cp requirements.txt .aider_fsm/installed.txt\n"

EVALUATION = """\
set -euo pipefail
python3 - <<'PY'
import json, os
json.dump({
    "ok": True,
    "score": 1.0,
    "installed": open(".aider_fsm/installed.txt").read().strip(),
    "stamp": open("/opt/bootstrap-stamp").read().strip(),
    "runs": len(open("/opt/bootstrap-runs").read().split()),
    "venv": os.path.exists(".aider_fsm/venv/bin/python"),
}, open(".aider_fsm/metrics.json", "w"))
PY
"""


def _repo(root: Path, pin: str = "six==1.16.0") -> Path:
    repo = make_repo(root, bootstrap=BOOTSTRAP, evaluation=EVALUATION)
    (repo / ".aider_fsm" / "prepare.sh").write_text(PREPARE)
    (repo / "requirements.txt").write_text(pin + "\n")
    return repo


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _session(repo: Path, cache: str = "on", image: str | None = None) -> Any:
    sess = runner_env.setup(repo, cache=cache, audit="off", image=image)  # type: ignore[arg-type]
    try:
        res = sess.evaluate(llm="cache-test-model", repair_iters=0)
    finally:
        sess.close()
    assert res.ok, res.reason
    return sess, res.metrics


def _evaluate(repo: Path, cache: str = "on") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sess, metrics = _session(repo, cache)
    return metrics, _events(sess.artifacts_dir)


def _cache_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["kind"] == "bootstrap_cache")


def _bootstrap_commands(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e["kind"] == "command" and e["stage"] == "bootstrap")


@pytest.fixture(autouse=True)
def _commit_every_bootstrap(monkeypatch: pytest.MonkeyPatch, default_image: str) -> None:
    # These bootstraps take well under the 2 s floor; the floor is not what is tested here.
    monkeypatch.setenv("FSM_RUNNER_BOOTSTRAP_CACHE_MIN_SECONDS", "0")


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[None]:
    yield
    for snap in list_snapshots():
        if snap.labels.get(REPO_LABEL, "").startswith(str(tmp_path)):
            prune_snapshots(keep=0, label=f"{LABEL_SNAPSHOT_KEY}={snap.key}")


def test_hit_skips_bootstrap_and_restores_its_effects(tmp_path: Path, cleanup: None) -> None:
    repo = _repo(tmp_path / "repo")
    cold, cold_events = _evaluate(repo)
    miss = _cache_event(cold_events)
    assert miss["hit"] is False and miss["key"]
    assert _bootstrap_commands(cold_events) == 4
    saved = next(e for e in cold_events if e["kind"] == "bootstrap_cache_saved")
    assert saved["saved"] is True and saved["image_id"].startswith("sha256:")

    sess, warm = _session(repo)
    warm_events = _events(sess.artifacts_dir)
    hit = _cache_event(warm_events)
    assert hit["hit"] is True and hit["key"] == miss["key"]
    assert _bootstrap_commands(warm_events) == 0, "a hit must not run bootstrap"
    assert any(e["kind"] == "bootstrap_skipped" for e in warm_events)
    # The root filesystem is the snapshot's (same stamp, bootstrap ran once in all) and
    # the workspace carries what bootstrap wrote there (the venv, the copied pin).
    assert warm["stamp"] == cold["stamp"] and warm["runs"] == 1
    assert warm["venv"] is True and warm["installed"] == "six==1.16.0"
    sandbox_json = json.loads((sess.artifacts_dir / "sandbox.json").read_text())
    assert sandbox_json["bootstrap_cache"]["hit"] is True
    assert sandbox_json["image"] == f"fsm-runner/bootstrap:{miss['key']}"


@pytest.mark.parametrize(
    "change",
    ["pinned version", "a file a command names", "bootstrap.yml", "base image"],
)
def test_any_change_to_a_hashed_input_is_a_miss(tmp_path: Path, cleanup: None, change: str) -> None:
    repo = _repo(tmp_path / "repo")
    _, first = _evaluate(repo)
    key = _cache_event(first)["key"]
    image: str | None = None
    if change == "pinned version":
        (repo / "requirements.txt").write_text("six==1.17.0\n")
    elif change == "a file a command names":
        (repo / ".aider_fsm" / "prepare.sh").write_text(PREPARE + "true\n")
    elif change == "bootstrap.yml":
        bootstrap = repo / ".aider_fsm" / "bootstrap.yml"
        bootstrap.write_text(bootstrap.read_text() + "  - echo changed\n")
    else:
        image = f"fsm-runner-test/cache-base:{tmp_path.name[-12:].lower()}"
        subprocess.run(
            ["docker", "build", "-q", "-t", image, "-"],
            input=f"FROM {_base_image()}\nRUN touch /changed\n",
            text=True,
            check=True,
            capture_output=True,
        )
    try:
        sess, metrics = _session(repo, "read", image)
        event = _cache_event(_events(sess.artifacts_dir))
        assert event["hit"] is False and event["key"] != key, change
        assert "cache=read never writes" in event["reason"]
        if change == "pinned version":
            assert metrics["installed"] == "six==1.17.0"
        # cache=read saved nothing: still only the first session's snapshot.
        mine = list_snapshots(f"{REPO_LABEL}={repo}")
        assert [s.key for s in mine] == [key]
    finally:
        if image:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


def _base_image() -> str:
    from sandbox.images import ensure_image

    return ensure_image()


def test_cache_off_neither_reads_nor_writes(tmp_path: Path, cleanup: None) -> None:
    repo = _repo(tmp_path / "repo")
    _evaluate(repo)
    metrics, events = _evaluate(repo, cache="off")
    event = _cache_event(events)
    assert event["hit"] is False and event["mode"] == "off" and not event["key"]
    assert _bootstrap_commands(events) == 4 and metrics["runs"] == 1  # fresh base image
    assert len(list_snapshots(f"{REPO_LABEL}={repo}")) == 1


def test_prune_keeps_at_most_n_least_recently_used_first(tmp_path: Path, cleanup: None) -> None:
    repo = _repo(tmp_path / "repo")
    keys = []
    for pin in ("six==1.15.0", "six==1.16.0", "six==1.17.0"):
        (repo / "requirements.txt").write_text(pin + "\n")
        _, events = _evaluate(repo)
        keys.append(_cache_event(events)["key"])
    # Use the oldest again: it becomes the most recently used and must survive.
    (repo / "requirements.txt").write_text("six==1.15.0\n")
    _, events = _evaluate(repo)
    assert _cache_event(events)["hit"] is True
    label = f"{REPO_LABEL}={repo}"
    assert len(list_snapshots(label)) == 3
    cli = [sys.executable, "-m", "runner.cli.main", "images", "prune", "--label", label]
    dry = subprocess.run([*cli, "--keep", "1", "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stdout.count("would remove fsm-runner/bootstrap:") == 2
    assert len(list_snapshots(label)) == 3, "--dry-run removed something"
    done = subprocess.run([*cli, "--keep", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [s.key for s in list_snapshots(label)] == [keys[0]]
    subprocess.run([*cli, "--max-gb", "0"], capture_output=True, text=True, check=True)
    assert list_snapshots(label) == []


def test_concurrent_sessions_of_one_key_leave_one_snapshot(tmp_path: Path, cleanup: None) -> None:
    # One key means one checkout (its path is part of the key, issue 15 item 2): three
    # sessions of the same repository at once.
    repo = _repo(tmp_path / "repo")
    results: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(_evaluate(repo))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    keys = {_cache_event(events)["key"] for _, events in results}
    assert len(keys) == 1, keys
    (key,) = keys
    assert len(list_snapshots(f"{LABEL_SNAPSHOT_KEY}={key}")) == 1
    saved = [e for _, events in results for e in events if e["kind"] == "bootstrap_cache_saved"]
    assert sum(1 for e in saved if e["saved"]) == 1, saved
    metrics, events = _evaluate(repo)
    assert _cache_event(events)["hit"] is True and metrics["runs"] == 1
