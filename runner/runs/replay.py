"""Replay a run from its manifest and say whether the results agree.

:func:`replay_run` re-runs the same target (same commit), image, settings, model and
``AIDER_FSM_SEED``, ``reruns`` times, each in a fresh session whose run dir sits next to
the original. :func:`compare_runs` then diffs what matters for "the same answer":
the outcome (ok, failed stage), every metric (flattened to dotted keys, with the
numeric delta), and every sample line's sha256. Stages whose pass/fail changes across
the runs are reported as flaky. Inputs that differ (workspace, image, seed, stage env)
are listed too, since they explain most differences.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.contract.bounded import parse_json
from runner.errors import RunnerError
from runner.runs.manifest import Manifest, load_manifest

EXIT_IDENTICAL = 0
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2
"""``replay`` exit codes, as ``diff``'s: same, different, could not compare."""

_RUN_SPECIFIC_ENV = frozenset(
    {
        "AIDER_FSM_RUN_ID",
        "AIDER_FSM_ARTIFACTS_DIR",
        # The sandbox-side model endpoint names this session's relay address and port.
        "OPENAI_API_BASE",
        "OPENAI_BASE_URL",
        "NO_PROXY",
        "no_proxy",
    }
)
_MISSING = object()


class ReplayError(RunnerError):
    """The run cannot be replayed (no manifest, no model recorded, target gone...)."""


@dataclass(frozen=True)
class ValueDiff:
    """One metric key whose value is not the same in every run (original first)."""

    key: str
    values: tuple[Any, ...]
    """``None`` entries where a run has no such key (shown as "missing")."""
    delta: float | None
    """Numeric keys: the largest |replay - original|; None otherwise."""


@dataclass(frozen=True)
class RunFacts:
    """What is compared of one run dir."""

    path: Path
    manifest: Manifest
    metrics: dict[str, Any] | None
    sample_hashes: list[str] | None

    @property
    def outcome(self) -> str:
        r = self.manifest.result
        if r.ok is None:
            return "unfinished"
        return "ok" if r.ok else f"failed at {r.failed_stage or '?'}"

    def stage_outcomes(self) -> dict[str, bool]:
        """Each stage that ended: ok only when every run of it in this session was ok."""
        out: dict[str, bool] = {}
        for stage in self.manifest.stages:
            if stage.ok is not None:
                out[stage.stage] = out.get(stage.stage, True) and stage.ok
        return out


@dataclass
class Comparison:
    """The original run against one or more replays."""

    runs: list[RunFacts]
    outcome_differs: bool = False
    metrics: list[ValueDiff] = field(default_factory=list)
    metric_keys: int = 0
    samples_differ: bool = False
    sample_lines: list[int] = field(default_factory=list)
    """1-based line numbers whose hash is not the same in every run."""
    flaky: dict[str, list[bool | None]] = field(default_factory=dict)
    """stage -> ok in each run (None: it did not run), for stages that both passed and failed."""
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.outcome_differs or self.metrics or self.samples_differ or self.flaky)

    @property
    def exit_code(self) -> int:
        return EXIT_IDENTICAL if self.identical else EXIT_DIFFERENT


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def diff_metrics(all_metrics: list[dict[str, Any] | None]) -> tuple[list[ValueDiff], int]:
    """Keys whose value differs in any run, and how many keys there were in all."""
    flat = [_flatten(m) if m is not None else {} for m in all_metrics]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    diffs: list[ValueDiff] = []
    for key in keys:
        values = [f.get(key, _MISSING) for f in flat]
        if all(_same(values[0], v) for v in values[1:]):
            continue
        nums = [_number(v) for v in values]
        first = nums[0]
        delta = (
            max(abs(n - first) for n in nums[1:] if n is not None)
            if first is not None and all(n is not None for n in nums[1:])
            else None
        )
        shown = tuple(None if v is _MISSING else v for v in values)
        diffs.append(ValueDiff(key, shown, delta))
    return diffs, len(keys)


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same score; True and 1 are not the same value.
    return (type(a) is type(b) and a == b) or (_number(a) is not None and _number(a) == _number(b))


def sample_hashes(path: Path) -> list[str]:
    """sha256 of each non-blank line of a samples JSONL file."""
    with open(path, "rb") as fh:
        return [hashlib.sha256(line.rstrip(b"\r\n")).hexdigest() for line in fh if line.strip()]


def load_facts(run_dir: Path) -> RunFacts:
    """The manifest, metrics and sample hashes of a run dir.

    Raises:
        ReplayError: no readable manifest.
    """
    try:
        manifest = load_manifest(run_dir)
    except FileNotFoundError as exc:
        raise ReplayError(
            f"{run_dir}: no manifest.json (not a run dir, or it never closed)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{run_dir}/manifest.json: unreadable: {exc}") from exc
    metrics: dict[str, Any] | None = None
    if manifest.outputs.metrics is not None:
        try:
            data = parse_json((run_dir / manifest.outputs.metrics.path).read_text(encoding="utf-8"))
            metrics = data if isinstance(data, dict) else {"<value>": data}
        except (OSError, ValueError):
            metrics = None
    hashes = None
    if manifest.outputs.samples is not None:
        try:
            hashes = sample_hashes(run_dir / manifest.outputs.samples.path)
        except OSError:
            hashes = None
    return RunFacts(run_dir, manifest, metrics, hashes)


def compare_runs(original: Path, replays: list[Path]) -> Comparison:
    """Diff the original run dir against each replay's (all must hold a manifest)."""
    runs = [load_facts(original), *(load_facts(p) for p in replays)]
    cmp = Comparison(runs)
    cmp.outcome_differs = len({r.outcome for r in runs}) > 1
    if any(r.metrics is not None for r in runs):
        cmp.metrics, cmp.metric_keys = diff_metrics([r.metrics for r in runs])
    hashes = [r.sample_hashes for r in runs]
    if any(h is not None for h in hashes):
        longest = max(len(h or []) for h in hashes)
        for i in range(longest):
            line = {(h[i] if h is not None and i < len(h) else None) for h in hashes}
            if len(line) > 1:
                cmp.sample_lines.append(i + 1)
        cmp.samples_differ = bool(cmp.sample_lines) or len({h is None for h in hashes}) > 1
    outcomes = [r.stage_outcomes() for r in runs]
    for stage in dict.fromkeys(s for o in outcomes for s in o):
        seen = [o.get(stage) for o in outcomes]
        if True in seen and False in seen:
            cmp.flaky[stage] = seen
    cmp.notes = _input_notes(runs)
    return cmp


def _input_notes(runs: list[RunFacts]) -> list[str]:
    """Inputs of each replay that are not those of the original."""
    notes: list[str] = []
    first = runs[0].manifest
    for n, run in enumerate(runs[1:], 1):
        m = run.manifest
        tag = f"replay {n}" if len(runs) > 2 else "replay"
        if m.target.workspace_sha256 != first.target.workspace_sha256:
            notes.append(f"{tag}: the workspace differs from the original's (files changed since)")
        if m.target.commit != first.target.commit:
            notes.append(
                f"{tag}: commit {m.target.commit} is not the original's {first.target.commit}"
            )
        # The base image only: a bootstrap snapshot is that base plus the same bootstrap,
        # and whether one is saved or reused depends on timing and other runs.
        base, was = _base_id(m), _base_id(first)
        if base != was:
            notes.append(f"{tag}: base image {base} is not the original's {was}")
        if m.determinism != first.determinism:
            notes.append(f"{tag}: determinism settings differ: {m.determinism}")
        notes += [f"{tag}: {line}" for line in _env_differences(first, m)]
    return notes


def _base_id(m: Manifest) -> str | None:
    return next((i.id or i.ref for i in m.images if i.role == "base"), None)


def _env_differences(a: Manifest, b: Manifest) -> list[str]:
    """Stage env keys (first command of each stage) whose values differ; masked ones skipped."""
    first_a = {c.stage: c.env for c in reversed(a.commands)}
    first_b = {c.stage: c.env for c in reversed(b.commands)}
    out: list[str] = []
    for stage in first_a.keys() & first_b.keys():
        ea, eb = first_a[stage], first_b[stage]
        for key in sorted((ea.keys() | eb.keys()) - _RUN_SPECIFIC_ENV):
            va, vb = ea.get(key), eb.get(key)
            if va != vb and "***" not in (va, vb):
                out.append(f"{stage} env {key}: {va!r} -> {vb!r}")
    return out


# -- running the replay ---------------------------------------------------------------------


def target_of(manifest: Manifest) -> str:
    """What to pass to ``setup()`` to get the same target at the same commit."""
    t = manifest.target
    if t.source == "git" and t.url:
        return f"{t.url}@{t.commit or t.ref}" if (t.commit or t.ref) else t.url
    if t.source == "hf_dataset" and t.dataset_id:
        rev = t.commit or t.ref
        return f"hf://datasets/{t.dataset_id}" + (f"@{rev}" if rev else "")
    return t.repo
