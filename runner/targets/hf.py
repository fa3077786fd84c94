"""Hugging Face dataset targets: a size-checked hub snapshot copied into the cache.

The size is checked against the dataset's metadata before any download, and the
download is pinned to the commit that was checked. Each ``<dataset>@<commit>`` is then
copied out of the hub cache (whose snapshots are symlinks into ``blobs/``) into its own
entry of real files, with a manifest (``MANIFEST_NAME``) recording what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from runner.errors import TargetError
from runner.targets.cache import entry_name, env_number, locked

__all__ = ["MANIFEST_NAME", "check_size", "fetch_hf_dataset"]

T = TypeVar("T")

MANIFEST_NAME = ".fsm_target.json"


def _hub_cache_dir() -> Path:
    """The hub cache, read from the environment now: huggingface_hub reads it at import."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.environ.get("HF_HOME") or f"{xdg}/huggingface").expanduser() / "hub"


def _hub(what: str, call: Callable[[], T]) -> T:
    """The one boundary to the hub: any failure becomes a one-line ``TargetError``.

    Deliberately broad: across supported huggingface_hub versions failures come from
    its own classes and from requests, httpx or httpx2 transports.
    """
    try:
        return call()
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        raise TargetError(f"{what}: {type(exc).__name__}: {lines[0]}") from exc


def fetch_hf_dataset(
    repo_id: str, revision: str | None, *, base: Path, offline: bool
) -> tuple[Path, str]:
    """Download ``repo_id`` at ``revision`` (or take it from the hub cache when offline).

    Returns the resolved dir of real files under ``base`` and the dataset commit.
    """
    from huggingface_hub import HfApi, snapshot_download

    names = ("HF_TOKEN", "HUGGINGFACE_TOKEN", "HUGGINGFACEHUB_API_TOKEN")
    token = next((os.environ[k] for k in names if os.environ.get(k)), None)
    rev = revision
    if not offline:
        info = _hub(
            f"dataset {repo_id} lookup failed",
            lambda: HfApi().dataset_info(
                repo_id, revision=revision, files_metadata=True, token=token
            ),
        )
        check_size(repo_id, sum(s.size or 0 for s in info.siblings or []))
        rev = info.sha or revision  # pin: the download gets exactly what was size-checked
    snapshot = Path(
        _hub(
            f"dataset {repo_id} download failed",
            lambda: snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=rev,
                cache_dir=_hub_cache_dir(),
                local_files_only=offline,
                token=token,
            ),
        )
    )
    commit = snapshot.name  # the hub cache keeps snapshots under snapshots/<commit>/
    name = entry_name("hf_", repo_id.replace("/", "_"), f"{repo_id}@{commit}")
    dest = base / name
    with locked(base / ".locks" / f"{name}.lock", 600.0):
        if not dest.exists():
            _materialise(snapshot, dest, repo_id=repo_id, revision=revision, commit=commit)
        _check_manifest(dest, repo_id, commit)
    return dest.resolve(), commit


def check_size(repo_id: str, total: int) -> None:
    """Refuse a dataset over ``AIDER_FSM_HF_MAX_TOTAL_BYTES`` before downloading any of it."""
    cap = env_number("AIDER_FSM_HF_MAX_TOTAL_BYTES", 512 * 2**20)
    if total > cap:
        raise TargetError(
            f"dataset {repo_id} is {total} bytes, over AIDER_FSM_HF_MAX_TOTAL_BYTES={cap:.0f}"
        )


def _materialise(
    snapshot: Path, dest: Path, *, repo_id: str, revision: str | None, commit: str
) -> None:
    """Copy a cache snapshot (symlinks into blobs/) to real files, then rename into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        staged = tmp / "snapshot"
        shutil.copytree(snapshot, staged, symlinks=False)
        sizes = sorted(
            (p.relative_to(staged).as_posix(), p.stat().st_size)
            for p in staged.rglob("*")
            if p.is_file()
        )
        manifest = {
            "source": "huggingface_dataset",
            "dataset_id": repo_id,
            "revision": revision,
            "commit": commit,
            "files": [{"path": path, "bytes": size} for path, size in sizes],
            "total_bytes": sum(size for _, size in sizes),
        }
        (staged / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        staged.rename(dest)
    except OSError as exc:
        raise TargetError(f"could not copy dataset {repo_id} into {dest}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_manifest(dest: Path, repo_id: str, commit: str) -> None:
    """A reused entry must hold this dataset commit, as its manifest records."""
    try:
        manifest = json.loads((dest / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise TargetError(f"{dest} exists without a readable {MANIFEST_NAME}; remove it") from exc
    if manifest.get("dataset_id") != repo_id or manifest.get("commit") != commit:
        raise TargetError(f"{dest} holds {manifest.get('dataset_id')}@{manifest.get('commit')}")
