"""The run directory: the only writer into it.

Only this module writes into ``<repo>/.aider_fsm/artifacts/<run_id>/``, so one place
decides what a file may contain: every text passes :meth:`RunDir.redact` first, long
texts are capped with a visible marker (never silently), and writes are atomic (temp
file + rename) so a reader such as ``fsm-runner runs`` never sees half a file.

Run ids are claimed with ``mkdir(exist_ok=False)``, so two sessions never share one.
Names and places are :mod:`runner.runs.layout`, caps :mod:`runner.runs.limits`,
in-place scrubbing :mod:`runner.runs.scrub`, secrets :mod:`runner.trust.redaction`
and reading back :mod:`runner.runs.listing`; the names callers take from here are
re-exported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath, PurePosixPath

from runner.runs.layout import (
    EVENTS_FILE,
    RUN_ID_RE,
    command_stem,
    new_run_id,
    refuse_planted_links,
    runs_root,
)
from runner.runs.limits import (
    DEFAULT_MAX_COPY_BYTES,
    MAX_EVENT_FIELD_CHARS,
    MAX_TEXT_CHARS,
    cap_text,
    max_copy_bytes,
    max_pass_bytes,
    max_pass_entries,
)
from runner.runs.listing import list_runs
from runner.runs.scrub import scrub_files
from runner.trust.redaction import SecretRedactor, mask_env
from sandbox.copyout import DIR_FLAGS, open_dirs_beneath, replace_file_beneath

__all__ = [
    "DEFAULT_MAX_COPY_BYTES",
    "MAX_TEXT_CHARS",
    "RUN_ID_RE",
    "CommandRecord",
    "RunDir",
    "cap_text",
    "list_runs",
    "mask_env",
    "max_copy_bytes",
    "max_pass_bytes",
    "max_pass_entries",
    "new_run_id",
]

_CREATE_ATTEMPTS = 64
_STAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class CommandRecord:
    """One executed (or refused) command as the run dir records it."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    oom_killed: bool = False
    truncated: bool = False
    blocked_reason: str | None = None
    disk_exceeded: bool = False


@contextlib.contextmanager
def _run_dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def _relative_parts(rel: str | Path) -> PurePosixPath:
    """Validate a path inside the run dir.

    Raises:
        ValueError: the path is empty, absolute, or contains ``..``.
    """
    p = PurePosixPath(Path(rel).as_posix())
    if p.is_absolute() or not p.parts or ".." in p.parts:
        raise ValueError(f"run dir paths must be relative without '..': {str(rel)!r}")
    return p


class RunDir:
    """One run's directory and the only writer into it; safe to share between threads."""

    def __init__(self, run_id: str, path: Path) -> None:
        self.run_id = run_id
        self.path = path
        self._lock = threading.RLock()
        self._redactor = SecretRedactor()

    @classmethod
    def create(
        cls, repo_root: Path, *, base: Path | None = None, run_id: str | None = None
    ) -> RunDir:
        """Claim a fresh run dir under ``base`` (default ``<repo>/.aider_fsm/artifacts``).

        ``run_id``: claim this id (one from ``new_run_id()`` reserved earlier, e.g. the
        label of a sandbox a warm pool made ahead) instead of a new one.

        Raises:
            ContractError: ``.aider_fsm`` or ``.aider_fsm/artifacts`` in the repo is a link.
            FileExistsError: no free run id after many attempts (a clock or RNG bug), or
                the given ``run_id`` is taken.
            ValueError: ``run_id`` is not of the ``new_run_id()`` form.
            OSError: the base directory cannot be created.
        """
        if run_id is not None and not RUN_ID_RE.fullmatch(run_id):
            raise ValueError(f"run_id={run_id!r} is not of the form YYYYmmdd_HHMMSS_<6 hex>")
        if base is None:
            refuse_planted_links(repo_root)
        root = runs_root(repo_root, base).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if run_id is not None:
            (root / run_id).mkdir(exist_ok=False)
            return cls(run_id, root / run_id)
        for _ in range(_CREATE_ATTEMPTS):
            run_id = new_run_id()
            try:
                (root / run_id).mkdir(exist_ok=False)
            except FileExistsError:
                continue
            return cls(run_id, root / run_id)
        raise FileExistsError(f"no free run id under {root} after {_CREATE_ATTEMPTS} attempts")

    # -- secrets -----------------------------------------------------------------------

    def add_secret(self, value: str) -> None:
        """Mask ``value`` in everything written from now on (short and placeholder values are ignored)."""
        self._redactor.add_secret(value)

    def add_secrets_from_env(self, env: Mapping[str, str]) -> None:
        """Register values of secret-looking keys (the predecessor's list) and token-shaped values."""
        self._redactor.add_secrets_from_env(env)

    def redact(self, text: str) -> str:
        """Every registered secret and every well-known token shape becomes ``***``."""
        return self._redactor.redact(text)

    def redact_bytes(self, data: bytes) -> bytes:
        """:meth:`redact` for raw bytes (secrets matched in their UTF-8 form)."""
        return self._redactor.redact_bytes(data)

    def _redact_obj(self, obj: object) -> object:
        return self._redactor.redact_obj(obj)

    # -- paths and writers -----------------------------------------------------------

    def _dir(self, rel: str | PurePath) -> Path:
        """``mkdir -p`` a directory given relative to the run dir (or absolute inside it).

        Raises:
            ValueError: the path leaves the run dir (absolute elsewhere, ``..``, symlinks).
        """
        p = Path(rel)
        if p.is_absolute():
            try:
                p = p.relative_to(self.path)
            except ValueError:
                raise ValueError(f"{p} is not inside the run dir {self.path}") from None
        rel = self._clean_parts(_relative_parts(p)) if p.parts else PurePosixPath()
        # Each component made and opened O_NOFOLLOW from the run dir (issue 15): a link
        # anywhere below the run dir stops the write instead of leading outside it.
        try:
            with _run_dir_fd(self.path) as root_fd:
                os.close(open_dirs_beneath(root_fd, list(rel.parts)))
        except OSError as exc:
            raise ValueError(f"{rel} is not a plain folder inside the run dir: {exc}") from exc
        return self.path.joinpath(*rel.parts)

    def _clean_parts(self, rel: PurePosixPath) -> PurePosixPath:
        # Names can come from the target (a samples path in rollout.json): no secret
        # reaches the run dir's names either (issue 15 item 10).
        return PurePosixPath(*(self._redactor.redact_name(part) for part in rel.parts))

    def _target(self, rel: str | Path) -> Path:
        """A file path inside the run dir, its parent created; names are redacted.

        Raises:
            ValueError: as :meth:`_dir`, or the path names the run dir itself.
        """
        p = Path(rel)
        if not p.parts or p == self.path:
            raise ValueError("a file name is needed")
        return self._dir(p.parent) / self._redactor.redact_name(p.name)

    def subdir(self, *parts: str) -> Path:
        """``mkdir -p`` a directory inside the run dir and return it.

        Raises:
            ValueError: a part is empty or absolute, or contains ``..``.
        """
        rel = PurePosixPath()
        for part in parts:
            rel = rel / _relative_parts(part)
        return self._dir(rel)

    def _put(self, target: Path, data: bytes) -> None:
        # A new O_EXCL temp file renamed over the name, every folder opened O_NOFOLLOW:
        # a planted link is replaced, never written through; readers never see half a file.
        rel = target.relative_to(self.path).as_posix()
        try:
            replace_file_beneath(self.path, rel, data)
        except OSError as exc:
            raise ValueError(f"cannot write {rel} inside the run dir: {exc}") from exc

    def _text_bytes(self, text: str) -> bytes:
        # Redact before capping: a cut through a secret would leave part of it readable.
        return cap_text(self.redact(text)).encode("utf-8", errors="backslashreplace")

    def write_text(self, rel: str | Path, text: str) -> Path:
        """Write a redacted text, capped at MAX_TEXT_CHARS with a ``[truncated N chars]`` marker."""
        target = self._target(rel)
        self._put(target, self._text_bytes(text))
        return target

    def write_bytes(self, rel: str | Path, data: bytes) -> Path:
        """Write raw bytes (a mirrored output file), redacted but not capped."""
        target = self._target(rel)
        self._put(target, self.redact_bytes(data))
        return target

    def _json_bytes(self, obj: object, *, redact: bool = True) -> bytes:
        if not redact:
            text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
            return (text + "\n").encode("utf-8", errors="backslashreplace")
        text = json.dumps(self._redact_obj(obj), indent=2, ensure_ascii=False, default=str)
        return (self.redact(text) + "\n").encode("utf-8", errors="backslashreplace")

    def write_json(self, rel: str | Path, obj: object, *, redact: bool = True) -> Path:
        """Write ``obj`` as indented JSON (key order kept), redacted; objects fall back to ``str``.

        ``redact=False`` is for a caller that redacted its free text itself and holds
        values a blind pass could corrupt (hex digests that happen to contain a secret).
        """
        target = self._target(rel)
        self._put(target, self._json_bytes(obj, redact=redact))
        return target

    def scrub_tree(self, root: Path) -> int:
        """Redact every regular file under ``root`` in place (files pulled from the sandbox).

        Names too: an entry whose name holds a secret is renamed (issue 15 item 10: a
        stage's ``log_<password>.txt`` reached the run dir, the manifest and ``verify``).
        Returns the number of files changed or renamed. Symlinks are neither followed nor
        rewritten (a link whose name holds a secret is renamed, as a link).

        Raises:
            ValueError: ``root`` is not inside the run dir.
        """
        return scrub_files(self._dir(root), self._redactor, self._put)

    def event(self, kind: str, **fields: object) -> None:
        """Append one redacted JSON line to events.jsonl (one ``write`` call, under a lock).

        Raises:
            ValueError: a field is named ``ts`` (the timestamp is the runner's).
        """
        if "ts" in fields:
            raise ValueError("event field 'ts' is reserved")
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = {"ts": ts, "kind": kind, **fields}
        short = {
            k: cap_text(v, MAX_EVENT_FIELD_CHARS) if isinstance(v, str) else v
            for k, v in record.items()
        }
        line = self.redact(json.dumps(self._redact_obj(short), ensure_ascii=False, default=str))
        data = (line + "\n").encode("utf-8", errors="backslashreplace")
        with self._lock:
            # O_APPEND with a single write keeps lines whole even if another process appends.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path / EVENTS_FILE, flags, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    # -- the predecessor's per-command layout ----------------------------------------

    def record_command(
        self, dir: Path, stage: str, index: int, attempt: int, cmd: str, result: CommandRecord
    ) -> None:
        """Write ``<stage>_cmdCC_tryTT_{cmd,stdout,stderr}.txt`` + ``_result.json`` and the last-command copies.

        Also appends a ``command`` event, so events.jsonl alone lists what ran.

        Raises:
            ValueError: ``dir`` is outside the run dir, ``stage`` is not a plain name, or
                ``index``/``attempt`` is negative.
        """
        if not _STAGE_RE.fullmatch(stage):
            raise ValueError(f"stage name {stage!r} cannot be used in a file name")
        if index < 0 or attempt < 0:
            raise ValueError(f"index and attempt count from 0, got {index}, {attempt}")
        base = self._dir(dir)
        stem = command_stem(stage, index, attempt)
        outcome = {
            "rc": result.exit_code,
            "timed_out": result.timed_out,
            "duration_s": round(result.duration_s, 3),
            "oom_killed": result.oom_killed,
            "truncated": result.truncated,
            "blocked_reason": result.blocked_reason,
            "disk_exceeded": result.disk_exceeded,
        }
        texts = {"cmd.txt": cmd, "stdout.txt": result.stdout, "stderr.txt": result.stderr}
        files = {suffix: self._text_bytes(text) for suffix, text in texts.items()}
        files["result.json"] = self._json_bytes(outcome)
        for suffix, data in files.items():
            self._put(base / f"{stem}_{suffix}", data)
            self._put(base / f"{stage}_{suffix}", data)
        where = base.relative_to(self.path).as_posix()
        self.event(
            "command", stage=stage, index=index, attempt=attempt, cmd=cmd, dir=where, **outcome
        )

    def write_stage_summary(
        self, dir: Path, stage: str, *, ok: bool, failed_index: int | None, total_results: int
    ) -> Path:
        """Write ``<stage>_summary.json`` ``{ok, failed_index, total_results}``.

        Raises:
            ValueError: ``dir`` is outside the run dir or ``stage`` is not a plain name.
        """
        if not _STAGE_RE.fullmatch(stage):
            raise ValueError(f"stage name {stage!r} cannot be used in a file name")
        summary = {"ok": ok, "failed_index": failed_index, "total_results": total_results}
        return self.write_json(Path(dir) / f"{stage}_summary.json", summary)
