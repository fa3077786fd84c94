"""The rollout's samples check (``rollout(require_samples=True)``).

rollout.json names a samples file inside the sandbox; it is pulled into the pass's
outputs mirror without following links and validated on the host, so a sample the
rollout did not write in this run (or a link out of the workspace) can never pass.
"""

from __future__ import annotations

from pathlib import Path

from runner.contract import SamplesReport, validate_rollout_manifest, validate_samples_jsonl
from runner.contract.outputs import parse_json
from runner.contract.paths import ROLLOUT_JSON, to_sandbox_rel
from runner.errors import ContractError
from runner.runs.run_dir import RunDir
from runner.session.passes import Pass
from runner.session.results import RolloutResult
from sandbox import OMITTED_SUFFIX, Sandbox
from sandbox.errors import SandboxError as SandboxLayerError

SAMPLES_COPY = "samples"
"""The samples file's share of its pass's copy caps."""


def check_samples(
    sb: Sandbox, run_dir: RunDir, p: Pass, rollout_mirror: Path | None
) -> SamplesReport:
    """Pull the samples file rollout.json names and validate both.

    Raises:
        ContractError: no rollout.json, a refused samples file, or invalid samples.
    """
    if rollout_mirror is None:
        raise ContractError(
            "missing_rollout_json: the rollout stage did not write .aider_fsm/rollout.json",
            file=ROLLOUT_JSON,
        )
    outputs = p.host_dir / "outputs"
    try:
        manifest = parse_json(rollout_mirror.read_text())
        raw = manifest.get("paths", {}).get("samples_jsonl") if isinstance(manifest, dict) else None
    except (OSError, ValueError, AttributeError):
        raw = None  # validate_rollout_manifest below says what is wrong with it
    rel = to_sandbox_rel(str(raw), sb.workspace) if isinstance(raw, str) and raw.strip() else None
    if rel is not None:
        dest = outputs / rel
        try:
            sb.pull(rel, dest.parent, **p.copy_caps(SAMPLES_COPY))
        except FileNotFoundError:
            pass  # validate_rollout_manifest/validate_samples_jsonl report it
        except (SandboxLayerError, FileExistsError) as exc:  # a link, fifo or folder
            raise ContractError(
                f"samples file refused: {exc}",
                file=ROLLOUT_JSON,
                field="paths.samples_jsonl",
                found=raw,
            ) from exc
        if dest.is_file() and not dest.is_symlink():
            p.copied[SAMPLES_COPY] = (dest.stat().st_size, 1)
    try:
        samples = validate_rollout_manifest(outputs, rollout_mirror, workspace=sb.workspace)
        if rel is not None and samples.with_name(samples.name + OMITTED_SUFFIX).exists():
            # Too big to copy: checked as it streams out of the sandbox (bounded memory,
            # stops at the first bad line), and named by its path in the sandbox.
            return validate_samples_jsonl(Path(sb.workspace, rel), opener=lambda: sb.open_file(rel))
        return validate_samples_jsonl(samples)
    finally:
        run_dir.scrub_tree(outputs)  # a secret echoed into a sample stays masked


def samples_hold(
    sb: Sandbox, run_dir: RunDir, p: Pass, rollout_mirror: Path | None, result: RolloutResult
) -> bool:
    """:func:`check_samples` into the result; a failure is recorded in the pass dir."""
    try:
        report = check_samples(sb, run_dir, p, rollout_mirror)
    except ContractError as exc:
        p.verify.fail("rollout")
        result.reason = str(exc)
        run_dir.write_text(f"env_api/{p.name}/rollout_contract_error.txt", str(exc))
        return False
    result.samples = report.samples
    copied = Path(report.path)
    result.samples_path = copied if copied.is_relative_to(run_dir.path) else None
    return True
