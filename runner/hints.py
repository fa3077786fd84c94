"""Official commands ("hints") from a target's README, docs, CI and task files.

A repository says how it is evaluated in its README fences, CI ``run`` steps, tox/nox
sessions and Makefile targets; the evaluation stage must really run one of those
(notes/predecessor.md section 6). Extraction is generic: interest words (eval, bench,
pytest, ``make test``, ``npm test``, tox, nox ...), never rules tuned to one project.

Standard library only at module level: ``runner.generic_evaluation`` imports this module
inside the sandbox, where only the container's python3 exists. PyYAML is imported
lazily for CI files (extraction runs on the host, where it is installed).
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_ANCHORS",
    "MAX_HINTS",
    "Hint",
    "check_hints_evidence",
    "hint_anchors",
    "hint_env",
    "is_interesting",
    "program_of",
    "read_hints_exec",
    "suggest_hints",
]

MAX_HINTS = 20
MAX_ANCHORS = 12
MAX_DOC_FILES = 8
MAX_DOC_CHARS = 200_000
MAX_CI_FILES = 8
MAX_FILE_BYTES = 1_000_000

def suggest_hints(
    repo_root: Path, *, limit: int = MAX_HINTS, python_version: str | None = None
) -> list[Hint]:
    """Official commands, docs first, then CI and task files while fewer than ``limit``.

    ``python_version`` ("3.11") picks the CI matrix entry; default: this interpreter's.
    """
    root = Path(repo_root)
    python = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    found: dict[str, Hint] = {}

    def add(hints: Iterable[Hint]) -> None:
        for hint in hints:
            if len(found) >= limit:
                return
            found.setdefault(hint.command, hint)

    for path in _doc_files(root):
        add(_doc_hints(root, path))
    for source in (
        _workflow_hints(root, python),
        _gitlab_hints(root),
        _tox_hints(root),
        _nox_hints(root),
        _task_hints(root),
    ):
        if len(found) < limit:
            add(source)
    return list(found.values())


# --- anchors, env, evidence ---------------------------------------------------------

_LAUNCHERS = frozenset(
    "bash sh zsh python python3 pip pip3 uv uvx conda poetry pdm hatch node docker git sudo "
    "env accelerate torchrun deepspeed time nohup exec coverage".split()
)
_VERBS = frozenset(
    "install uninstall run start stop setup build download clone create remove update "
    "upgrade launch exec".split()
)


def _anchors_of(cmd: str) -> list[str]:
    """Distinctive tokens of one command (notes 6.2), falling back to its first words."""
    segment = next((s for s in _segments(cmd) if is_interesting(s)), cmd)
    toks = [t for t in _tokens(segment) if not _ASSIGN.match(t)]
    if not toks:
        return []
    if "-m" in toks[:-1]:
        module = toks[toks.index("-m") + 1]
        top = module.split(".")[0]
        return [a for a in dict.fromkeys((module, top)) if len(a) >= 5]
    first = toks[0]
    if first in ("make", "just", "npm", "yarn", "pnpm"):
        target = next((i for i, t in enumerate(toks[1:], 1) if t[0] != "-" and t != "run"), 0)
        return [" ".join(toks[: target + 1])] if target else [first]
    if first == "docker":
        image = r"[a-z0-9][\w.-]*(?:/[\w.-]+)+(?::[\w.-]+)?"
        return [t for t in toks[1:] if re.fullmatch(image, t)][:1] or ["docker"]
    if first in _LAUNCHERS:
        for tok in toks[1:7]:
            if tok.startswith("-") or tok in _VERBS or tok.startswith("requirements"):
                continue
            if tok.endswith((".py", ".sh")) or re.fullmatch(r"[A-Za-z_][\w.-]{5,}", tok):
                return [tok]
    elif re.fullmatch(r"[A-Za-z_][\w.-]{4,}", first):
        top = first.split(".")[0]
        return [first] + ([top] if top != first and len(top) >= 5 else [])
    return [" ".join(toks[:2]) if len(toks) > 1 and not toks[1].startswith("-") else first]


def hint_anchors(commands: Sequence[str], limit: int = MAX_ANCHORS) -> list[str]:
    """Anchors across hints, in order, de-duplicated, at most ``limit``."""
    out: dict[str, None] = {}
    for cmd in commands:
        for anchor in _anchors_of(cmd):
            if len(out) < limit:
                out.setdefault(anchor, None)
    return list(out)


def hint_env(repo_root: Path, *, python_version: str | None = None) -> dict[str, str]:
    """The predecessor's hint variables for stage envs; empty when the repo has no hints."""
    commands = [h.command for h in suggest_hints(repo_root, python_version=python_version)]
    if not commands:
        return {}
    return {
        "AIDER_FSM_HINTS_JSON": json.dumps(commands),
        "AIDER_FSM_HINT_ANCHORS_JSON": json.dumps(hint_anchors(commands)),
        "AIDER_FSM_REQUIRE_HINTS": "1",
    }


def read_hints_exec(path: Path, *, limit: int = 4_000_000) -> list[str]:
    """Commands ``generic_evaluation`` logged as started in ``hints_exec.jsonl`` (self-reported)."""
    out: list[str] = []
    for line in _read(path, limit).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(rec, dict)
            and rec.get("phase") == "start"
            and isinstance(rec.get("cmd"), str)
        ):
            out.append(rec["cmd"])
    return out


def _contains(haystack: str, needle: str) -> bool:
    squeeze = " ".join
    return (
        re.search(rf"(?<!\S){re.escape(squeeze(needle.split()))}(?!\S)", squeeze(haystack.split()))
        is not None
    )


def check_hints_evidence(
    hints_used: Mapping[str, Any], executed: Sequence[str], *, helper_log: Sequence[str] = ()
) -> list[str]:
    """Errors when ``hints_used.json`` claims commands that nothing shows were run.

    ``executed``: what the runner itself recorded (stage commands, shell traces).
    ``helper_log``: ``read_hints_exec()`` of the pass; it is written inside the sandbox,
    so it counts only when ``executed`` shows the runner's helper was invoked. Target
    code shares that container and could forge the log; a helper shadowed by a target's
    own ``runner`` package would too. This check raises the bar, it is not a proof.
    """
    if hints_used.get("ok") is not True:
        return []
    errors: list[str] = []
    helper_ran = any(re.search(r"generic_evaluation|hints_exec", e) for e in executed)
    if helper_log and not helper_ran:
        errors.append(
            "hints_evidence.helper_log_without_helper: hints_exec.jsonl exists but "
            "the runner's records show no generic_evaluation invocation"
        )
    ran = [*executed, *(helper_log if helper_ran else ())]
    chosen = hints_used.get("chosen_command")
    claims = [chosen] if isinstance(chosen, str) else []
    commands = hints_used.get("commands")
    claims += [c for c in commands if isinstance(c, str)] if isinstance(commands, list) else []
    for claim in dict.fromkeys(c.strip() for c in claims if c.strip()):
        if not any(_contains(e, claim) for e in ran):
            errors.append(f"hints_evidence.command_not_executed: {claim}")
    used = hints_used.get("used_anchors")
    anchors = (
        [a.strip() for a in used if isinstance(a, str) and a.strip()]
        if isinstance(used, list)
        else []
    )
    if anchors and not any(a.lower() in e.lower() for a in anchors for e in ran):
        errors.append(
            f"hints_evidence.anchor_not_executed: none of {anchors} appears in an executed command"
        )
    return errors
