"""Git targets: a full clone per origin URL in the cache, checked out at the ``@ref``.

A clone is reused only when its ``origin`` is the same URL (after normalising), and
git never prompts and never outlives its timeout, so a resolve cannot hang.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from runner.errors import TargetError
from runner.targets.cache import entry_name, env_number, locked

__all__ = ["SCP_RE", "Git", "fetch_git", "normalise_url", "redact_url"]

SCP_RE = re.compile(r"^(?P<user>[\w.+-]+)@(?P<host>[\w.-]+):(?P<path>[^/].*)$")
"""``user@host:path``, git's scp-like syntax for ssh."""
_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


def normalise_url(url: str) -> str:
    """Identity of a repo URL: no credentials, case-folded scheme/host, no ``.git``."""
    if m := SCP_RE.match(url):
        return f"ssh://{m['user']}@{m['host'].lower()}/{m['path'].rstrip('/').removesuffix('.git')}"
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    if parts.username and parts.scheme in ("ssh", "git"):
        netloc = f"{parts.username}@{netloc}"
    path = parts.path.rstrip("/").removesuffix(".git")
    return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, ""))


def redact_url(text: str) -> str:
    """Mask URL passwords (``https://user:token@host``) in a URL or a git message."""
    return re.sub(r"(://[^/\s:@]+:)[^/\s@]+@", r"\1***@", text)


@dataclass(frozen=True)
class Git:
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
            raise TargetError(f"git {args[0]} failed: {redact_url(cause)}")
        return out.strip()

    def commit_of(self, rev: str) -> str | None:
        try:
            return self("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
        except TargetError:
            return None


def fetch_git(url: str, ref: str | None, *, base: Path, offline: bool) -> tuple[Path, str]:
    """Clone ``url`` into ``base`` (or reuse its clone) and check out ``ref`` detached.

    Returns the resolved clone dir and the checked-out commit.
    """
    timeout_s = env_number("AIDER_FSM_GIT_CLONE_TIMEOUT_SECONDS", 90.0)
    identity = normalise_url(url)
    name = entry_name("", "_".join(identity.split("/")[-2:]), identity)
    dest = base / name
    git = Git(dest, timeout_s)
    with locked(base / ".locks" / f"{name}.lock", timeout_s * 4):
        fresh = not dest.exists()
        if fresh and offline:
            raise TargetError(f"offline and no earlier clone of {redact_url(url)} in {base}")
        if fresh:
            _clone(url, dest, timeout_s)
        elif not (dest / ".git").is_dir():
            raise TargetError(f"{dest} exists but is not a git clone; remove it to re-clone")
        elif normalise_url(origin := git("config", "--get", "remote.origin.url")) != identity:
            raise TargetError(f"{dest} is a clone of {redact_url(origin)}, not {redact_url(url)}")
        commit = _find_commit(git, ref, fetch_first=not fresh and not offline, offline=offline)
        git("checkout", "--quiet", "--detach", commit)
        head = git("rev-parse", "HEAD")
    return dest.resolve(), head


def _clone(url: str, dest: Path, timeout_s: float) -> None:
    """Clone next to ``dest`` and rename, so a killed clone never looks like a clone.

    A full clone, not a shallow or blobless one: any ``@ref`` resolves offline later,
    and git commands inside a network-less sandbox never need the remote.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        Git(tmp, timeout_s)("clone", "--quiet", "--no-checkout", "--", url, str(tmp))
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _find_commit(git: Git, ref: str | None, *, fetch_first: bool, offline: bool) -> str:
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
