"""Turn what the user typed as a target into a directory on the host.

Forms: a local path; a git URL (``https``, ``http``, ``ssh``, ``git``, ``file``, or
``user@host:path``) or ``owner/repo`` shorthand (GitHub), each with an optional
``@ref``; a Hugging Face dataset (``https://huggingface.co/datasets/o/n[/tree/rev]``
or ``hf://datasets/o/n[@rev]``). Remote targets land in a cache dir whose entries are
never deleted: a clone is reused only when its ``origin`` is the same URL, and one
lock per entry serialises concurrent resolves (the predecessor shared dirs between
URLs and deleted snapshots in place).

This module parses every form in one place, so their precedence reads top to bottom;
fetching lives in :mod:`runner.targets.git` and :mod:`runner.targets.hf`, the cache
entries and locks in :mod:`runner.targets.cache`. ``MANIFEST_NAME`` is re-exported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from runner.contract.paths import FIXED_OUTPUTS
from runner.errors import TargetError
from runner.targets.cache import DEFAULT_CLONES_DIR
from runner.targets.git import SCP_RE, Git, fetch_git, redact_url
from runner.targets.hf import MANIFEST_NAME, check_size, fetch_hf_dataset

__all__ = [
    "MANIFEST_NAME",
    "Source",
    "TargetRepo",
    "TargetSpec",
    "parse_target",
    "resolve_target",
]

Source = Literal["local", "git", "hf_dataset"]

_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_SHORTHAND_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<ref>.+))?$")
_REF_RE = re.compile(r"^(?!-)(?!.*\.\.)[\w./+-]+$")
_HF_HOSTS = ("huggingface.co", "www.huggingface.co")
_HF_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")

# The helpers' names from before the split, still imported by tests.
_redact = redact_url
_check_size = check_size


@dataclass(frozen=True)
class TargetRepo:
    """A resolved target. ``commit`` is the checked-out git sha or HF dataset commit."""

    path: Path
    source: Source
    url: str | None = None
    ref: str | None = None
    commit: str | None = None
    dataset_id: str | None = None
    dirty: bool = False
    """A local checkout with uncommitted changes: the workspace is ``commit`` plus those."""


@dataclass(frozen=True)
class TargetSpec:
    """What a target string names, before anything is fetched.

    ``location`` is a path (local), a URL without its ``@ref`` (git) or a dataset id.
    """

    source: Source
    location: str
    ref: str | None = None


def parse_target(target: str | Path) -> TargetSpec:
    """Classify ``target``. An existing local path wins over ``owner/repo`` shorthand.

    Raises:
        TargetError: the target is empty, malformed, or a missing path.
    """
    if isinstance(target, Path):
        return TargetSpec("local", str(target.expanduser()))
    text = target.strip()
    if not text:
        raise TargetError("empty target: give a path, a git URL, owner/repo or an HF dataset URL")
    if hf := _parse_hf(text):
        return TargetSpec("hf_dataset", *hf)
    if "://" in text:
        return TargetSpec("git", *_split_url_ref(text))
    local = Path(text).expanduser()
    if not local.exists() and "@" in text and (at := _local_at_ref(text)) is not None:
        return at
    if local.exists() or text.startswith(("/", ".", "~")):
        return TargetSpec("local", str(local))
    if m := SCP_RE.match(text):
        path, ref = _split_ref(m["path"])
        return TargetSpec("git", f"{m['user']}@{m['host']}:{path}", ref)
    if m := _SHORTHAND_RE.match(text):
        return TargetSpec(
            "git", f"https://github.com/{m['repo'].removesuffix('.git')}.git", m["ref"]
        )
    raise TargetError(f"target not found: {text!r} is no directory, git URL or owner/repo")


def resolve_target(
    target: str | Path, *, clones_dir: Path | None = None, offline: bool = False
) -> TargetRepo:
    """Resolve ``target`` to a directory, cloning or downloading when it is remote.

    ``offline`` (or ``HF_HUB_OFFLINE=1`` for datasets) forbids network access: only
    earlier clones and the local hub cache can satisfy the target.

    Raises:
        TargetError: the target is malformed, missing, or could not be fetched.
    """
    spec = parse_target(target)
    base = (clones_dir or DEFAULT_CLONES_DIR).expanduser()
    if spec.source == "local":
        return _local(Path(spec.location))
    if spec.source == "git":
        path, head = fetch_git(spec.location, spec.ref, base=base, offline=offline)
        return TargetRepo(
            path=path, source="git", url=redact_url(spec.location), ref=spec.ref, commit=head
        )
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    path, commit = fetch_hf_dataset(spec.location, spec.ref, base=base, offline=offline)
    return TargetRepo(path, "hf_dataset", str(target).strip(), spec.ref, commit, spec.location)


def _local_at_ref(text: str) -> TargetSpec | None:
    """``path@ref`` for a local git checkout: a clone of it at ``ref`` (issue 16.8).

    The checkout itself is never touched (no checkout, no stash): its committed history
    is cloned into the clones dir like any git URL, so uncommitted work is not in it.
    """
    path = text.rsplit("@", 1)[0]
    local = Path(path).expanduser()
    if not path or not (local / ".git").exists():
        return None  # not a local checkout (e.g. git@host:o/r.git): the other forms decide
    _, ref = _split_ref(text)
    return TargetSpec("git", local.resolve().as_uri(), ref)


def _local(path: Path) -> TargetRepo:
    resolved = path.expanduser().resolve()
    if not resolved.is_dir():
        what = "is not a directory" if resolved.exists() else "does not exist"
        raise TargetError(f"target {resolved} {what}")
    head = _read_head(resolved)
    dirty = head is not None and _is_dirty(resolved)
    return TargetRepo(path=resolved, source="local", commit=head, dirty=dirty)


_RUN_OUTPUTS = (
    ":(exclude).aider_fsm/artifacts",
    *(f":(exclude){p}" for p in FIXED_OUTPUTS),
)
"""What a run writes into the checkout: never a reason to call it dirty."""


def _is_dirty(repo: Path) -> bool:
    """Uncommitted changes to what the sandbox gets (tracked or untracked, run outputs aside)."""
    try:
        status = Git(repo, 10.0)("status", "--porcelain", "--", ".", *_RUN_OUTPUTS)
    except TargetError:
        return False
    return bool(status.strip())


def _read_head(repo: Path) -> str | None:
    """Best-effort HEAD of a local checkout (only its own ``.git``, never a parent's)."""
    if not (repo / ".git").exists():
        return None
    try:
        return Git(repo, 10.0)("rev-parse", "--verify", "--quiet", "HEAD") or None
    except TargetError:
        return None


# ---------------------------------------------------------------- parsing


def _split_ref(path: str) -> tuple[str, str | None]:
    """Split a trailing ``@ref`` off a repo path (the path never holds userinfo)."""
    if "@" not in path:
        return path, None
    repo, ref = path.rsplit("@", 1)
    if not repo or not ref or not _REF_RE.match(ref):
        raise TargetError(f"invalid @ref in {path!r}")
    return repo, ref


def _split_url_ref(text: str) -> tuple[str, str | None]:
    parts = urlsplit(text)
    if parts.scheme not in _GIT_SCHEMES:
        raise TargetError(f"unsupported URL scheme {parts.scheme!r} in {redact_url(text)}")
    path, ref = _split_ref(parts.path)
    if (parts.scheme != "file" and not parts.hostname) or path.strip("/") == "":
        raise TargetError(f"git URL needs a host and a repo path: {redact_url(text)}")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), ref


def _parse_hf(text: str) -> tuple[str, str | None] | None:
    """``(dataset_id, revision)`` for an HF dataset target, else None.

    A subpath after ``/tree/<rev>/`` is ignored: the whole dataset is the target.
    """
    if text.startswith("hf://"):
        rest = text.removeprefix("hf://")
        if not rest.startswith("datasets/"):
            raise TargetError(f"only hf://datasets/<owner>/<name>[@rev] is supported: {text!r}")
        segments = rest.removeprefix("datasets/").split("/")
        repo_id, revision = _split_ref("/".join(segments[:2]))
        if len(segments) > 2 or not _HF_ID_RE.match(repo_id):
            raise TargetError(f"malformed HF dataset target {text!r}")
        return repo_id, revision
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or (parts.hostname or "") not in _HF_HOSTS:
        return None
    segments = [s for s in parts.path.split("/") if s]
    if not segments or segments[0] != "datasets":
        return None
    if len(segments) < 3 or not _HF_ID_RE.match(f"{segments[1]}/{segments[2]}"):
        raise TargetError(f"malformed HF dataset URL {text!r}: expected /datasets/<owner>/<name>")
    revision = None
    if len(segments) >= 5 and segments[3] in ("tree", "blob", "resolve"):
        revision = unquote(segments[4])  # "refs%2Fconvert%2Fparquet" names a ref with slashes
    return f"{segments[1]}/{segments[2].removesuffix('.git')}", revision
