"""The files stages must leave behind, and the checks that decide whether they count.

The predecessor's checks were easy to satisfy by accident (notes/predecessor.md 14.2):
bad sample lines were skipped, one non-empty line passed, rewards and scores were never
type-checked. Here every line of a samples file must be a valid sample, rewards must
be finite numbers (booleans and NaN refused), and ``score`` must be a finite number.

Messages start with the predecessor's reason codes (``missing_rollout_json``,
``evaluation.missing_keys`` style, without the stage prefix) because repair prompts and
people grep for them; the rest of the message and the ContractError fields say more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TypeGuard

from pydantic import AfterValidator, BaseModel, ValidationError

from runner.contract.bounded import omitted_note, parse_json, read_json_object
from runner.contract.samples import (
    LENIENT_CONFIG,
    Sample,
    SamplesReport,
    first_error,
    validate_samples_jsonl,
)
from runner.errors import ContractError

# parse_json, read_json_object and omitted_note live in runner.contract.bounded; the
# session imports them from here.
__all__ = [
    "RolloutCounts",
    "RolloutManifest",
    "RolloutPaths",
    "RuntimeEnv",
    "Sample",
    "SamplesReport",
    "load_runtime_env",
    "omitted_note",
    "parse_json",
    "read_json_object",
    "validate_hints_run",
    "validate_hints_used",
    "validate_metrics",
    "validate_rollout",
    "validate_rollout_manifest",
    "validate_samples_jsonl",
]


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


# --- runtime_env.json ------------------------------------------------------------------


class RuntimeEnv(BaseModel):
    """``.aider_fsm/runtime_env.json``, written by deploy. Free-form: extra keys allowed."""

    model_config = LENIENT_CONFIG

    service: dict[str, Any] | None = None
    """Service info, e.g. base_url, health_url."""
    inference: dict[str, Any] | None = None
    """Inference info, e.g. type, model, openai_base_url / base_url, model_dir."""
    paths: dict[str, Any] | None = None
    """Conventional output paths (rollout_path, metrics_path)."""

    def openai_base_url(self) -> str | None:
        """``inference.openai_base_url`` or ``inference.base_url``, else ``service.base_url``.

        Normalised to end with ``/v1`` as the predecessor exported it.
        """
        for section, key in (
            (self.inference, "openai_base_url"),
            (self.inference, "base_url"),
            (self.service, "base_url"),
        ):
            value = (section or {}).get(key)
            if isinstance(value, str) and value.strip():
                base = value.strip().rstrip("/")
                return base if base.endswith("/v1") else base + "/v1"
        return None

    def openai_model(self) -> str | None:
        """``inference.model`` when it is a non-blank string."""
        value = (self.inference or {}).get("model")
        return value.strip() if isinstance(value, str) and value.strip() else None


def load_runtime_env(path: Path) -> RuntimeEnv | None:
    """Read runtime_env.json; None when absent.

    The predecessor never validated this file, so a caller may downgrade the error to a
    warning to stay compatible.

    Raises:
        ContractError: invalid JSON, not an object, or a section that is not an object.
    """
    if not path.exists():
        return None
    data = read_json_object(
        path, missing="missing_runtime_env_json", not_object="runtime_env_json_not_object"
    )
    try:
        return RuntimeEnv.model_validate(data)
    except ValidationError as exc:
        field, msg = first_error(exc)
        raise ContractError(f"runtime_env_json_invalid: {msg}", file=path, field=field) from exc


# --- rollout.json and samples -----------------------------------------------------------


class RolloutCounts(BaseModel):
    """Counters a rollout reports about itself."""

    model_config = LENIENT_CONFIG
    samples: int | None = None
    """Samples produced."""
    errors: int | None = None
    """Samples that failed; errors >= samples > 0 fails the rollout."""
    correct: int | None = None
    """Samples judged correct (optional)."""


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty path")
    return value.strip()


class RolloutPaths(BaseModel):
    """Where the rollout put its files."""

    model_config = LENIENT_CONFIG
    samples_jsonl: Annotated[str, AfterValidator(_nonblank)]
    """Samples JSONL path, relative to the repository root (or absolute in the sandbox)."""


class RolloutManifest(BaseModel):
    """``.aider_fsm/rollout.json``. Extra keys (dataset, errors, ...) are allowed."""

    model_config = LENIENT_CONFIG
    ok: bool | None = None
    """Self-reported success (not trusted on its own)."""
    mode: str | None = None
    """smoke or full."""
    counts: RolloutCounts | None = None
    """Sample and error counters."""
    paths: RolloutPaths
    """Output paths; `samples_jsonl` is required."""


def validate_rollout(
    repo_root: Path, rollout_json_path: Path, *, workspace: str | None = None, min_samples: int = 1
) -> SamplesReport:
    """Check rollout.json and the samples file it points to.

    Raises:
        ContractError: the predecessor's checks in order (missing/invalid rollout.json,
            counts all errors, missing paths.samples_jsonl, samples not found/empty)
            plus every samples_jsonl check of validate_samples_jsonl().
    """
    samples = validate_rollout_manifest(repo_root, rollout_json_path, workspace=workspace)
    return validate_samples_jsonl(samples, min_samples=min_samples)


def validate_rollout_manifest(
    repo_root: Path, rollout_json_path: Path, *, workspace: str | None = None
) -> Path:
    """Check rollout.json alone; return where its samples file is under ``repo_root``.

    ``paths.samples_jsonl`` is resolved against ``repo_root``. An absolute path is
    accepted only under ``workspace`` (the repo root as the stage saw it, e.g.
    ``/workspace``), and mapped onto ``repo_root``; with ``workspace=None`` (local
    sandbox) absolute paths are read as they are. Relative paths must stay inside.

    Raises:
        ContractError: missing/invalid rollout.json, counts all errors, missing or
            escaping paths.samples_jsonl.
    """
    data = read_json_object(
        rollout_json_path, missing="missing_rollout_json", not_object="rollout_json_not_object"
    )
    try:
        manifest = RolloutManifest.model_validate(data)
    except ValidationError as exc:
        field, msg = first_error(exc)
        code = "rollout_json_missing_paths" if field.startswith("paths") else "rollout_json_invalid"
        if field.startswith("paths.samples_jsonl"):
            code = "rollout_json_missing_paths.samples_jsonl"
        raise ContractError(f"{code}: {msg}", file=rollout_json_path, field=field) from exc
    counts = manifest.counts
    if counts and counts.samples and counts.errors and 0 < counts.samples <= counts.errors:
        raise ContractError(
            f"rollout_counts_all_errors: errors={counts.errors} samples={counts.samples}",
            file=rollout_json_path,
            field="counts",
        )
    samples = _samples_location(repo_root, manifest.paths.samples_jsonl, workspace)
    if samples is None:
        raise ContractError(
            "samples_jsonl_outside_repo: paths.samples_jsonl must point inside the repository",
            file=rollout_json_path,
            field="paths.samples_jsonl",
            found=manifest.paths.samples_jsonl,
        )
    return samples


def _samples_location(repo_root: Path, raw: str, workspace: str | None) -> Path | None:
    target = PurePosixPath(raw)
    if target.is_absolute():
        if workspace is None:
            return Path(raw)
        try:
            target = target.relative_to(workspace)
        except ValueError:
            return None
    root = repo_root.resolve()
    resolved = (root / target).resolve()
    return resolved if resolved.is_relative_to(root) else None


# --- metrics and hints ------------------------------------------------------------------


def validate_metrics(path: Path, required_keys: Sequence[str]) -> dict[str, Any]:
    """Check a metrics JSON object and return it.

    Raises:
        ContractError: metrics_file_missing, invalid_json, metrics_json_not_object,
            missing_keys (names them), ok_not_true (``ok`` required but not exactly
            true), score_invalid (``score`` present but not a finite number).
    """
    data = read_json_object(
        path, missing="metrics_file_missing", not_object="metrics_json_not_object"
    )
    missing = [k for k in required_keys if k not in data]
    if missing:
        raise ContractError(f"missing_keys: {', '.join(missing)}", file=path, found=missing)
    if "ok" in required_keys and data["ok"] is not True:
        raise ContractError(
            "ok_not_true: `ok` must be true", file=path, field="ok", found=data["ok"]
        )
    if "score" in data and not _is_finite_number(data["score"]):
        raise ContractError(
            "score_invalid: `score` must be a finite number",
            file=path,
            field="score",
            found=data["score"],
        )
    return data


def _nonblank_strings(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def _read_hints_file(path: Path, name: str) -> dict[str, Any]:
    """Read ``<name>.json`` and require ``ok: true``, with the ``<name>`` reason codes.

    Raises:
        ContractError: missing, invalid, not an object, or ``ok`` not exactly true.
    """
    data = read_json_object(
        path,
        missing=f"missing_{name}_json",
        not_object=f"{name}_json_not_object",
        invalid=f"{name}_json_invalid",
    )
    if data.get("ok") is not True:
        raise ContractError(f"{name}.ok_not_true", file=path, field="ok", found=data.get("ok"))
    return data


def validate_hints_used(path: Path, expected_anchors: Sequence[str]) -> dict[str, Any]:
    """Check ``.aider_fsm/hints_used.json`` (section 4.5 rules) and return it.

    ``expected_anchors`` comes from AIDER_FSM_HINT_ANCHORS_JSON; empty means any anchor.

    Raises:
        ContractError: with the predecessor's ``hints_used.*`` reason codes.
    """
    data = _read_hints_file(path, "hints_used")
    used = data.get("used_anchors")
    if not isinstance(used, list) or not used:
        raise ContractError(
            "hints_used.used_anchors_missing_or_empty", file=path, field="used_anchors"
        )
    anchors = _nonblank_strings(used)
    if not anchors:
        raise ContractError("hints_used.used_anchors_invalid", file=path, field="used_anchors")
    expected = [a.strip() for a in expected_anchors if a.strip()]
    if expected and not set(anchors) & set(expected):
        raise ContractError(
            "hints_used.no_expected_anchor: no used anchor matches an expected one",
            file=path,
            field="used_anchors",
            found=anchors[0] if len(anchors) == 1 else anchors,
            allowed=expected,
        )
    if "commands" in data and not _nonblank_strings(data["commands"]):
        raise ContractError("hints_used.commands_invalid", file=path, field="commands")
    return data


def validate_hints_run(path: Path) -> dict[str, Any]:
    """Check ``.aider_fsm/hints_run.json`` (section 4.5 rules) and return it.

    Raises:
        ContractError: with the predecessor's ``hints_run.*`` reason codes.
    """
    data = _read_hints_file(path, "hints_run")
    chosen = data.get("chosen_command")
    if not isinstance(chosen, str) or not chosen.strip():
        raise ContractError("hints_run.chosen_command_missing", file=path, field="chosen_command")
    attempts = data.get("executed_attempts")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts <= 0:
        raise ContractError(
            "hints_run.executed_attempts_invalid: must be an integer > 0",
            file=path,
            field="executed_attempts",
            found=attempts,
        )
    score = data.get("score")
    if not _is_finite_number(score):
        raise ContractError("hints_run.score_invalid", file=path, field="score", found=score)
    if not 0.0 <= score <= 1.0:
        raise ContractError(
            "hints_run.score_out_of_range: must be within [0, 1]",
            file=path,
            field="score",
            found=score,
        )
    return data
