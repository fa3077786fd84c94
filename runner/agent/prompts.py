"""The texts sent to the agent. Plain functions of their inputs, so tests can read them.

The predecessor's prompts (notes/predecessor.md 9.5) carried a home-made tool syntax and
benchmark-specific tips; here OpenCode's own tools do the work, and the prompt states
the contract, the scope rule and the evidence, nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from runner.contract import pipeline_json_schema

MAX_LAYOUT_ENTRIES = 200
MAX_README_CHARS = 4000
MAX_EVIDENCE_CHARS = 6000
MAX_FILE_CHARS = 8000

SCOPE_RULE = """\
Scope rule (enforced by the runner, not by trust): you work on a disposable copy of the
repository inside a sandbox. Afterwards ONLY `{pipeline}` and files under `.aider_fsm/`
are copied back; every other change (application code, tests, data, files outside the
repository) is thrown away and reported. Stage outputs (`.aider_fsm/runtime_env.json`,
`rollout.json`, `metrics.json`, `hints_*.json`) and `.aider_fsm/artifacts/` are never
copied back either: the stages must produce them when they run. Do not edit application
code, do not hardcode results, do not fake scores."""

CONTRACT_RULES = """\
The contract (fixed, used by existing repositories):
- `{pipeline}`: YAML, version 1, following the JSON schema below. Every command runs with
  cwd = the repository root, inside a container, non-interactively, with a timeout.
  Conventional shape: each stage calls one script, e.g. `bash .aider_fsm/stages/rollout.sh`.
- `.aider_fsm/stages/*.sh`: the stage scripts (bash; `set -euo pipefail` recommended).
- deploy (setup_cmds / health_cmds / teardown_cmds): start what the evaluation needs and
  write `.aider_fsm/runtime_env.json` (a JSON object, e.g. {{"service": {{...}},
  "inference": {{"model": ..., "openai_base_url": ...}}}}).
- rollout: produce samples and write `.aider_fsm/rollout.json`:
  {{"ok": true, "counts": {{"samples": N, "errors": 0}}, "paths": {{"samples_jsonl": PATH}}}},
  where PATH is a JSONL file (put it under "$AIDER_FSM_ARTIFACTS_DIR") whose lines are
  {{"prompt": str, "completion": str, "reward": number}}.
- evaluation: write the metrics file named by `evaluation.metrics_path` (conventionally
  `.aider_fsm/metrics.json`): a JSON object with at least `"ok": true|false` and
  `"score": number`, computed from what really ran. When nothing real can be evaluated,
  write ok=false with a reason and exit non-zero.
- Environment every stage gets: AIDER_FSM_REPO_ROOT, AIDER_FSM_ARTIFACTS_DIR (write
  files there), AIDER_FSM_RUN_ID, AIDER_FSM_STAGE, AIDER_FSM_PYTHON (use it, or
  python3; never bare `python`), AIDER_EVAL_MODE (smoke|full; smoke must be small and
  fast), AIDER_RUNTIME_ENV_PATH. Stages that call the model also get AIDER_LLM_KIND,
  AIDER_LLM_MODEL, OPENAI_MODEL, OPENAI_API_BASE / OPENAI_BASE_URL and OPENAI_API_KEY.
- `.aider_fsm/bootstrap.yml` (optional): environment preparation run once before the
  stages (`version: 1`, `cmds: [...]`, `env: {{...}}`), e.g. creating a venv.
- Scripts: bounded and non-interactive, no secrets written to files, no `sed -i` on
  repository files, no `&>/dev/null` hiding errors."""


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} chars cut ...]\n{text[-half:]}"


def layout(paths: Sequence[str]) -> str:
    """The repository's files, one per line, capped."""
    shown = sorted(paths)[:MAX_LAYOUT_ENTRIES]
    more = len(paths) - len(shown)
    return "\n".join(shown) + (f"\n... and {more} more files" if more > 0 else "")


def _rules(pipeline_rel: str) -> str:
    return (
        SCOPE_RULE.format(pipeline=pipeline_rel)
        + "\n\n"
        + CONTRACT_RULES.format(pipeline=pipeline_rel)
    )


def _schema() -> str:
    return json.dumps(pipeline_json_schema(), separators=(",", ":"))


def scaffold_prompt(
    *,
    repo_name: str,
    files: Sequence[str],
    readme: str,
    hints: Sequence[str],
    pipeline_rel: str = "pipeline.yml",
    attempt: int = 1,
    attempts: int = 1,
    previous_failure: str | None = None,
) -> str:
    """Ask for a new contract for a repository that has none."""
    parts = [
        f"You are the contract scaffolder for the repository `{repo_name}`. Write its "
        f"evaluation contract: `{pipeline_rel}` and the stage scripts under "
        "`.aider_fsm/stages/`, using your write tool. Inspect the repository first (read, "
        "bash: ls, cat, running its own cheap commands is fine). There is no network except "
        "the model endpoint: do not install from the internet.",
        _rules(pipeline_rel),
        "Repository files:\n" + layout(files),
    ]
    if readme.strip():
        parts.append("README (start):\n" + _clip(readme, MAX_README_CHARS))
    if hints:
        parts.append(
            "Official commands found in the README/docs/CI (prefer them in the stages):\n"
            + "\n".join(f"- {h}" for h in hints[:20])
        )
    parts.append(f"JSON schema of `{pipeline_rel}`:\n" + _schema())
    if previous_failure:
        parts.append(
            f"This is attempt {attempt} of {attempts}. The previous attempt failed:\n"
            + _clip(previous_failure, 3000)
            + "\nFix exactly that; write the files again with your write tool."
        )
    parts.append(
        "Done means: the files exist, `bash -n` passes for each script, and the YAML follows "
        "the schema. Finish with a short summary of what each stage does."
    )
    return "\n\n".join(parts)


def repair_prompt(
    *,
    repo_name: str,
    failed_stage: str,
    reason: str,
    evidence: Mapping[str, str],
    contract_files: Mapping[str, str],
    pipeline_rel: str = "pipeline.yml",
    attempt: int = 1,
) -> str:
    """Ask for the smallest contract change that makes the failed stage pass."""
    parts = [
        f"You are the contract repair agent for the repository `{repo_name}`. The stage "
        f"`{failed_stage}` failed. Find the cause and fix the contract (`{pipeline_rel}` or "
        "files under `.aider_fsm/`) with your edit/write tools; you may run the failing "
        "script with bash to check your fix. Change as little as possible; keep what works.",
        _rules(pipeline_rel),
        f"Repair attempt: {attempt}\nFailed stage: {failed_stage}\nReason: {_clip(reason, 3000)}",
    ]
    for name, text in evidence.items():
        if text and text.strip():
            parts.append(f"[{name}]\n{_clip(text, MAX_EVIDENCE_CHARS)}")
    for rel, text in contract_files.items():
        parts.append(f"[current file: {rel}]\n{_clip(text, MAX_FILE_CHARS)}")
    parts.append(
        "A repair that edits nothing counts as a failed attempt. Finish with a short summary "
        "of the cause and the change."
    )
    return "\n\n".join(parts)
