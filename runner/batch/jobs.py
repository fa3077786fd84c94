"""The jobs file: many (target, llm, mode, options) runs, typed and located.

A jobs file is YAML with a ``defaults`` block merged under every entry of ``jobs``.
It gets the contract's treatment: unknown keys are errors naming the allowed ones,
and every error says ``file:line``. Each job gets a stable id (its own ``id``, or a
hash of what it asks for) so ``--resume`` can tell finished jobs from new ones even
when entries are reordered or inserted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from runner.contract.yamlsrc import YamlDoc, load_yaml, validate_model
from runner.errors import ContractError
from sandbox import Limits

__all__ = [
    "Job",
    "JobDefaults",
    "JobOptions",
    "JobsFile",
    "load_jobs",
    "normalise_jobs",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class JobOptions(_Strict):
    """``runner_env.setup()`` options a job may set; anything else is a typo."""

    sandbox: Literal["docker", "local"] = "docker"
    """``local`` runs target code on the host: trusted repos only, and never on Dask workers you do not own."""
    image: str | None = None
    """A local image instead of the default one (must exist on every worker host)."""
    workspace: Literal["copy", "bind"] = "copy"
    network: Literal["none", "llm", "egress"] | None = None
    """The most network any stage may get."""
    audit: Literal["on", "off", "warn-only"] = "on"
    unattended: Literal["strict", "guided"] = "strict"
    require_metrics: bool = True
    pipeline_rel: str = "pipeline.yml"
    clones_dir: str | None = None
    """Where remote targets are cloned, on the host that runs the job."""
    artifacts_dir: str | None = None
    """Run dirs go here instead of ``<repo>/.aider_fsm/artifacts``."""
    offline: bool = False
    env_file: str | None = None
    """A ``.env`` file whose pairs reach every stage (relative to the jobs file)."""
    opencode_model: str | None = None
    """The OpenCode agent's model, for scaffolding and ``repair_iters`` > 0."""
    memory: str | None = None
    """Per-sandbox memory cap (default 2g); also decides how many sandboxes fit a host."""
    cpus: PositiveFloat | None = None
    """Per-sandbox CPU cap (default 1.0); also decides how many sandboxes fit a host."""
    pids: PositiveInt | None = None

    def limits(self) -> Limits:
        """The sandbox limits this job asks for (the contract can only tighten them)."""
        base = Limits()
        return Limits(
            memory=self.memory or base.memory,
            cpus=self.cpus or base.cpus,
            pids=self.pids or base.pids,
        )

    def setup_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``runner.api.setup.setup()`` (limits folded into one object)."""
        data = self.model_dump(exclude={"memory", "cpus", "pids", "opencode_model"})
        data["limits"] = self.limits()
        if self.opencode_model:
            data["opencode_model"] = self.opencode_model
        return data


class JobDefaults(_Strict):
    """What a job runs besides its target; the shape of ``defaults``."""

    llm: str = "none"
    """Model id, or a local model directory (on the host that runs the job)."""
    mode: Literal["smoke", "full"] = "smoke"
    require_samples: bool = False
    repair_iters: int = Field(default=0, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    """Environment overrides for the stages (``env_overrides``); secrets are masked in artifacts."""
    options: JobOptions = Field(default_factory=JobOptions)


class Job(JobDefaults):
    """One run: setup(target, **options) -> rollout(llm, mode) -> evaluate(mode)."""

    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[\w.:@+-]+$")
    """Stable key for ``--resume``; default: a hash of the job's content."""
    target: str = Field(min_length=1)
    """Local path (relative to the jobs file), git URL[@ref], ``owner/repo``, or HF dataset."""


class JobsFile(_Strict):
    """The whole jobs file."""

    version: Literal[1] = 1
    defaults: JobDefaults = Field(default_factory=JobDefaults)
    """Merged under every job (``options`` and ``env`` key by key)."""
    workers: PositiveInt | None = None
    """Sandboxes at once on this machine (capped by the admission limit); ``--workers`` wins."""
    results: str | None = None
    """Results JSONL, relative to the jobs file; default ``<jobs stem>.results.jsonl``."""
    jobs: list[Job] = Field(min_length=1)


def _merge(defaults: JobDefaults, job: Job) -> dict[str, Any]:
    """Defaults under the job's own keys; only keys the user wrote count as set."""
    merged: dict[str, Any] = {k: getattr(defaults, k) for k in defaults.model_fields_set}
    merged.update({k: getattr(job, k) for k in job.model_fields_set})
    merged["env"] = {**defaults.env, **job.env}
    opts = {k: getattr(defaults.options, k) for k in defaults.options.model_fields_set}
    if "options" in job.model_fields_set:
        opts.update({k: getattr(job.options, k) for k in job.options.model_fields_set})
    merged["options"] = JobOptions(**opts)
    return merged


def _content_key(job: Job) -> str:
    body = job.model_dump(mode="json", exclude={"id"})
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def normalise_jobs(
    jobs: Sequence[Job | Mapping[str, Any]],
    *,
    defaults: JobDefaults | None = None,
    base_dir: Path | None = None,
    doc: YamlDoc | None = None,
) -> list[Job]:
    """Merge defaults, give every job a unique stable id, make local targets absolute.

    Ids are computed before targets are made absolute, so a jobs file keeps its ids
    when it moves to another checkout or machine.

    Raises:
        ContractError: a job is invalid, or two jobs share an explicit id.
        pydantic.ValidationError: a mapping job is invalid (API callers, no file).
    """
    out: list[Job] = []
    seen: dict[str, int] = {}
    counts: dict[str, int] = {}
    for index, raw in enumerate(jobs):
        job = raw if isinstance(raw, Job) else Job.model_validate(raw)
        job = Job(**_merge(defaults or JobDefaults(), job))
        if job.id is None:
            key = _content_key(job)
            counts[key] = counts.get(key, 0) + 1
            job_id = key if counts[key] == 1 else f"{key}-{counts[key]}"
        else:
            job_id = job.id
        if job_id in seen:
            message = f"duplicate job id {job_id!r} (first used by job {seen[job_id]})"
            if doc is not None:
                raise doc.error(message, ("jobs", index, "id"), found=job_id)
            raise ContractError(message, field=f"jobs[{index}].id", found=job_id)
        seen[job_id] = index
        update: dict[str, Any] = {"id": job_id, "target": _target(job.target, base_dir)}
        if job.options.env_file and base_dir is not None:
            env_file = str(base_dir / Path(job.options.env_file).expanduser())
            update["options"] = job.options.model_copy(update={"env_file": env_file})
        out.append(job.model_copy(update=update))
    return out


def _target(target: str, base_dir: Path | None) -> str:
    """A relative local path is relative to the jobs file, not to the cwd."""
    if base_dir is None or "://" in target:
        return target
    path = Path(target).expanduser()
    candidate = path if path.is_absolute() else base_dir / path
    if candidate.exists() or target.startswith((".", "~", "/")):
        return str(candidate.resolve())
    return target  # owner/repo shorthand or user@host:path


def load_jobs(path: Path) -> tuple[JobsFile, list[Job], Path]:
    """Read a jobs file: the file model, the resolved jobs, and the results path.

    Raises:
        ContractError: unreadable, not YAML, unknown key, bad value, duplicate id
            (``file:line: field: message``).
    """
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error("top level must be a mapping with a `jobs:` list", (), found=doc.data)
    spec = validate_model(JobsFile, doc.data, doc)
    base = path.resolve().parent
    jobs = normalise_jobs(spec.jobs, defaults=spec.defaults, base_dir=base, doc=doc)
    results = base / spec.results if spec.results else base / f"{path.stem}.results.jsonl"
    return spec, jobs, results
