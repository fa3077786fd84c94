"""``manifest.json``: what a run was made of and what it produced, hashed.

Written last, when a session closes (:mod:`runner.runs.manifest_builder`), from the run dir's
own records (``events.jsonl``, ``sandbox.json``, the per-command files) plus the few
facts only the session knows (target, options, model). ``fsm-runner replay`` reads it
to run the same thing again; ``fsm-runner verify`` (:func:`verify_run_dir`) checks the
run dir against it. The JSON Schema is :meth:`Manifest.model_json_schema`
(``fsm-runner manifest-schema``, ``docs/manifest.schema.json``); docs/reproducibility.md
explains the fields.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.runs.determinism import SEED_VAR
from runner.runs.report import REPORT_FILE

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION: Literal[1] = 1
UNLISTED = frozenset({MANIFEST_FILE, REPORT_FILE})
"""Not in ``files``: the manifest itself, and report.md (a view ``fsm-runner show`` rewrites)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileDigest(_Model):
    """One file of the run dir (a link is hashed as ``symlink:<target>``)."""

    path: str = Field(description="Relative to the run dir, '/'-separated.")
    sha256: str
    size: int


class Target(_Model):
    source: Literal["local", "git", "hf_dataset"]
    repo: str = Field(description="The checkout on the host the workspace was copied from.")
    url: str | None = None
    ref: str | None = None
    commit: str | None = Field(None, description="Git commit, or the HF dataset revision.")
    dirty: bool = Field(
        False, description="The local checkout had uncommitted changes on top of `commit`."
    )
    dataset_id: str | None = None
    workspace_sha256: str = Field(
        description="Over every file copied into the sandbox: path, mode bit, content."
    )
    workspace_files: int


class Image(_Model):
    role: Literal["base", "bootstrap_cache"]
    ref: str | None = Field(description="The tag the sandbox was started from.")
    id: str | None = Field(None, description="The engine's image id (sha256:...).")
    digest: str | None = Field(None, description="A registry digest, when the image has one.")
    hit: bool | None = Field(None, description="bootstrap_cache: the snapshot was reused.")
    key: str | None = None


class Call(_Model):
    """One public call of the session, in order, as replay repeats it."""

    call: Literal["rollout", "evaluate"]
    mode: str
    require_samples: bool = False


class Settings(_Model):
    """Everything ``fsm-runner replay`` passes to ``setup()`` and the calls."""

    calls: list[Call]
    llm: str | None = Field(description="A remote model id, or a local model directory.")
    seed: int = Field(description=f"The {SEED_VAR} the stages got.")
    backend: str
    image: str | None = Field(description="setup(image=...); None = the default image.")
    workspace_mode: str
    network_cap: str | None
    limits: dict[str, Any]
    require_metrics: bool
    audit: str
    unattended: str
    pipeline_rel: str
    env_file_keys: list[str] = Field(description="Names only: the values may be secrets.")
    repairs: int = Field(description="Agent repairs in the run (replay never repairs).")


class Stage(_Model):
    stage: str
    pass_dir: str | None
    network: str | None
    workdir: str | None = None
    timeout_s: float | None = None
    total_budget_s: float | None = None
    retries: int | None = None
    ok: bool | None = None
    duration_s: float | None = None


class Command(_Model):
    stage: str
    pass_dir: str
    index: int
    attempt: int
    cmd: str
    argv: list[str] = Field(description="What the sandbox executed (the shell and the command).")
    workdir: str | None
    env: dict[str, str] = Field(description="As the command saw it, secrets masked as ***.")
    exit_code: int | None
    duration_s: float | None
    timed_out: bool
    oom_killed: bool
    truncated: bool
    blocked_reason: str | None
    stdout_sha256: str | None
    stderr_sha256: str | None


class Outputs(_Model):
    metrics: FileDigest | None = None
    rollout: FileDigest | None = None
    samples: FileDigest | None = None
    samples_lines: int | None = None


class Result(_Model):
    phase: str | None
    ok: bool | None
    failed_stage: str | None
    reason: str
    state: str | None


class Manifest(_Model):
    """``<run dir>/manifest.json``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    runner_version: str
    run_id: str
    written_at: str
    target: Target
    images: list[Image]
    sandbox: dict[str, Any] = Field(description="Limits, capabilities, network per stage.")
    determinism: dict[str, str] = Field(description="Seed and settings exported to stages.")
    settings: Settings
    result: Result
    stages: list[Stage]
    commands: list[Command]
    outputs: Outputs
    files: list[FileDigest] = Field(description="Every file in the run dir but manifest/report.")


# -- hashing ---------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def digest_entry(root: Path, rel: str) -> FileDigest:
    """A file (or a link, never followed) of ``root`` as a :class:`FileDigest`."""
    path = root / rel
    if path.is_symlink():
        text = f"symlink:{os.readlink(path)}".encode()
        return FileDigest(path=rel, sha256=hashlib.sha256(text).hexdigest(), size=0)
    return FileDigest(path=rel, sha256=sha256_file(path), size=path.stat().st_size)


def run_dir_files(run_dir: Path) -> list[FileDigest]:
    """Every file and link in the run dir (not the manifest, report.md or temp files)."""
    found: list[FileDigest] = []
    for dirpath, dirs, files in os.walk(run_dir):
        dirs.sort()
        here = Path(dirpath)
        names = sorted(files) + [d for d in dirs if (here / d).is_symlink()]
        for name in names:
            rel = (here / name).relative_to(run_dir).as_posix()
            if rel in UNLISTED or (name.startswith(".") and name.endswith(".tmp")):
                continue
            found.append(digest_entry(run_dir, rel))
    return found


def load_manifest(run_dir: Path) -> Manifest:
    """Read and validate ``<run_dir>/manifest.json``.

    Raises:
        OSError: the file cannot be read.
        pydantic.ValidationError: it is not a manifest (or was edited into something else).
    """
    return Manifest.model_validate_json((run_dir / MANIFEST_FILE).read_bytes())


# -- verify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One way the run dir disagrees with its manifest."""

    path: str
    what: Literal["missing", "changed", "added", "invalid"]
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.what}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Verification:
    """``fsm-runner verify``: ok when every listed file is there with its hash, and no other."""

    run_dir: Path
    manifest_sha256: str
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run_dir(run_dir: Path) -> Verification:
    """Check a run dir against its manifest without running anything.

    Raises:
        FileNotFoundError: there is no ``manifest.json`` (nothing to check against).
        OSError: it cannot be read.
    """
    raw = (run_dir / MANIFEST_FILE).read_bytes()
    report = Verification(run_dir, hashlib.sha256(raw).hexdigest())
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        report.problems.append(Problem(MANIFEST_FILE, "invalid", f"{where}: {first['msg']}"))
        return report
    expected = {f.path: f for f in manifest.files}
    actual = {f.path: f for f in run_dir_files(run_dir)}
    report.checked = len(expected)
    for path, want in expected.items():
        got = actual.get(path)
        if got is None:
            report.problems.append(Problem(path, "missing"))
        elif got.sha256 != want.sha256:
            detail = (
                f"sha256 {want.sha256[:12]}… -> {got.sha256[:12]}…, {want.size} -> {got.size} bytes"
            )
            report.problems.append(Problem(path, "changed", detail))
    report.problems += [
        Problem(p, "added", "not in the manifest") for p in actual if p not in expected
    ]
    # The manifest's own summaries must agree with its file list (an edited manifest).
    named = [
        (f"outputs.{k}", getattr(manifest.outputs, k)) for k in ("metrics", "rollout", "samples")
    ]
    for where, digest in named:
        listed = expected.get(digest.path) if digest is not None else None
        if digest is not None and (listed is None or listed.sha256 != digest.sha256):
            report.problems.append(
                Problem(MANIFEST_FILE, "changed", f"{where} disagrees with files[{digest.path}]")
            )
    return report


def manifest_json_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()


if __name__ == "__main__":  # python -m runner.runs.manifest > docs/manifest.schema.json
    print(json.dumps(manifest_json_schema(), indent=2))
