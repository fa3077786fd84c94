"""Turn what the user typed as a target into a directory on the host.

Forms: a local path; a git URL (``https``, ``http``, ``ssh``, ``git``, ``file``, or
``user@host:path``) or ``owner/repo`` shorthand (GitHub), each with an optional
``@ref``; a Hugging Face dataset (``https://huggingface.co/datasets/o/n[/tree/rev]``
or ``hf://datasets/o/n[@rev]``). Remote targets land in a cache dir whose entries are
never deleted: a clone is reused only when its ``origin`` is the same URL, and one
lock per entry serialises concurrent resolves (the predecessor shared dirs between
URLs and deleted snapshots in place).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from runner.errors import TargetError

T = TypeVar("T")
Source = Literal["local", "git", "hf_dataset"]

MANIFEST_NAME = ".fsm_target.json"
_DEFAULT_CLONES_DIR = Path("~/.cache/fsm-runner/clones")
_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_RE = re.compile(r"^(?P<user>[\w.+-]+)@(?P<host>[\w.-]+):(?P<path>[^/].*)$")
_SHORTHAND_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<ref>.+))?$")
_REF_RE = re.compile(r"^(?!-)(?!.*\.\.)[\w./+-]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
_HF_HOSTS = ("huggingface.co", "www.huggingface.co")
_HF_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class TargetRepo:
    """A resolved target. ``commit`` is the checked-out git sha or HF dataset commit."""

    path: Path
    source: Source
    url: str | None = None
    ref: str | None = None
    commit: str | None = None
    dataset_id: str | None = None


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
    if local.exists() or text.startswith(("/", ".", "~")):
        return TargetSpec("local", str(local))
    if m := _SCP_RE.match(text):
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
    base = (clones_dir or _DEFAULT_CLONES_DIR).expanduser()
    if spec.source == "local":
        return _local(Path(spec.location))
    if spec.source == "git":
        return _resolve_git(spec.location, spec.ref, base=base, offline=offline)
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return _resolve_hf(str(target).strip(), spec.location, spec.ref, base=base, offline=offline)


def _local(path: Path) -> TargetRepo:
    resolved = path.expanduser().resolve()
    if not resolved.is_dir():
        what = "is not a directory" if resolved.exists() else "does not exist"
        raise TargetError(f"target {resolved} {what}")
    return TargetRepo(path=resolved, source="local", commit=_read_head(resolved))


def _read_head(repo: Path) -> str | None:
    """Best-effort HEAD of a local checkout (only its own ``.git``, never a parent's)."""
    if not (repo / ".git").exists():
        return None
    try:
        return _Git(repo, 10.0)("rev-parse", "--verify", "--quiet", "HEAD") or None
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
        raise TargetError(f"unsupported URL scheme {parts.scheme!r} in {_redact(text)}")
    path, ref = _split_ref(parts.path)
    if (parts.scheme != "file" and not parts.hostname) or path.strip("/") == "":
        raise TargetError(f"git URL needs a host and a repo path: {_redact(text)}")
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


def _normalise_url(url: str) -> str:
    """Identity of a repo URL: no credentials, case-folded scheme/host, no ``.git``."""
    if m := _SCP_RE.match(url):
        return f"ssh://{m['user']}@{m['host'].lower()}/{m['path'].rstrip('/').removesuffix('.git')}"
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    if parts.username and parts.scheme in ("ssh", "git"):
        netloc = f"{parts.username}@{netloc}"
    path = parts.path.rstrip("/").removesuffix(".git")
    return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, ""))


def _redact(text: str) -> str:
    """Mask URL passwords (``https://user:token@host``) in a URL or a git message."""
    return re.sub(r"(://[^/\s:@]+:)[^/\s@]+@", r"\1***@", text)


def _entry_name(prefix: str, readable: str, identity: str) -> str:
    """Readable slug plus a hash of the full identity, so two targets never share a dir."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip("._-")[:60] or "repo"
    return f"{prefix}{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


@contextmanager
def _locked(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``lock_path``; each open() is its own lock, so threads exclude too."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TargetError(f"timed out waiting for lock {lock_path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise TargetError(f"{name} must be a number, got {raw!r}") from None
    return value if value > 0 else default


@dataclass(frozen=True)
class _Git:
    """git in one directory, without a shell or a prompt, bounded by a timeout."""

    cwd: Path
    timeout_s: float

    def __call__(self, *args: str) -> str:
        # subprocess.run(timeout=) kills git alone, and then blocks on the pipes its
        # ssh / remote-https children keep open: kill the whole process group instead.
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"}
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        proc = subprocess.Popen(
            ["git", "-c", "advice.detachedHead=false", *args],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TargetError(f"git {args[0]} timed out after {self.timeout_s:g}s") from None
        if proc.returncode != 0:
            lines = err.strip().splitlines() or [f"exit code {proc.returncode}"]
            cause = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1])
            raise TargetError(f"git {args[0]} failed: {_redact(cause)}")
        return out.strip()

    def commit_of(self, rev: str) -> str | None:
        try:
            return self("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
        except TargetError:
            return None


# ---------------------------------------------------------------- git


def _resolve_git(url: str, ref: str | None, *, base: Path, offline: bool) -> TargetRepo:
    timeout_s = _env_number("AIDER_FSM_GIT_CLONE_TIMEOUT_SECONDS", 90.0)
    identity = _normalise_url(url)
    name = _entry_name("", "_".join(identity.split("/")[-2:]), identity)
    dest = base / name
    git = _Git(dest, timeout_s)
    with _locked(base / ".locks" / f"{name}.lock", timeout_s * 4):
        fresh = not dest.exists()
        if fresh and offline:
            raise TargetError(f"offline and no earlier clone of {_redact(url)} in {base}")
        if fresh:
            _clone(url, dest, timeout_s)
        elif not (dest / ".git").is_dir():
            raise TargetError(f"{dest} exists but is not a git clone; remove it to re-clone")
        elif _normalise_url(origin := git("config", "--get", "remote.origin.url")) != identity:
            raise TargetError(f"{dest} is a clone of {_redact(origin)}, not {_redact(url)}")
        commit = _find_commit(git, ref, fetch_first=not fresh and not offline, offline=offline)
        git("checkout", "--quiet", "--detach", commit)
        head = git("rev-parse", "HEAD")
    return TargetRepo(path=dest.resolve(), source="git", url=_redact(url), ref=ref, commit=head)


def _clone(url: str, dest: Path, timeout_s: float) -> None:
    """Clone next to ``dest`` and rename, so a killed clone never looks like a clone.

    A full clone, not a shallow or blobless one: any ``@ref`` resolves offline later,
    and git commands inside a network-less sandbox never need the remote.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _Git(tmp, timeout_s)("clone", "--quiet", "--no-checkout", "--", url, str(tmp))
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _find_commit(git: _Git, ref: str | None, *, fetch_first: bool, offline: bool) -> str:
    """The commit ``ref`` names: origin's default branch when None.

    Branches move, so a reused clone fetches before resolving one; tags and shas
    already present are used as they are; anything unknown is fetched by name.
    """
    is_sha = ref is not None and _SHA_RE.match(ref) is not None
    if ref is None:
        candidates = ["refs/remotes/origin/HEAD"]
    else:
        candidates = [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", *([ref] if is_sha else [])]
    stable = is_sha or (ref is not None and git.commit_of(f"refs/tags/{ref}"))
    if fetch_first and not stable:
        git("fetch", "--quiet", "--prune", "--tags", "--force", "origin")
    for candidate in candidates:
        if commit := git.commit_of(candidate):
            return commit
    if ref is None or offline:
        raise TargetError(f"ref {ref or 'HEAD'!r} not found in {git.cwd}")
    try:
        git("fetch", "--quiet", "origin", ref)
    except TargetError as exc:
        raise TargetError(f"ref {ref!r} not found: {exc}") from exc
    if commit := git.commit_of("FETCH_HEAD"):
        return commit
    raise TargetError(f"ref {ref!r} does not name a commit")


# ---------------------------------------------------------------- Hugging Face datasets


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


def _resolve_hf(
    text: str, repo_id: str, revision: str | None, *, base: Path, offline: bool
) -> TargetRepo:
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
        _check_size(repo_id, sum(s.size or 0 for s in info.siblings or []))
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
    name = _entry_name("hf_", repo_id.replace("/", "_"), f"{repo_id}@{commit}")
    dest = base / name
    with _locked(base / ".locks" / f"{name}.lock", 600.0):
        if not dest.exists():
            _materialise(snapshot, dest, repo_id=repo_id, revision=revision, commit=commit)
        _check_manifest(dest, repo_id, commit)
    return TargetRepo(dest.resolve(), "hf_dataset", text, revision, commit, repo_id)


def _check_size(repo_id: str, total: int) -> None:
    cap = _env_number("AIDER_FSM_HF_MAX_TOTAL_BYTES", 512 * 2**20)
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
    try:
        manifest = json.loads((dest / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise TargetError(f"{dest} exists without a readable {MANIFEST_NAME}; remove it") from exc
    if manifest.get("dataset_id") != repo_id or manifest.get("commit") != commit:
        raise TargetError(f"{dest} holds {manifest.get('dataset_id')}@{manifest.get('commit')}")
