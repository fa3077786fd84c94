"""Official commands ("hints"): which to export, how to run them here, what proves they ran.

A repository says how it is evaluated in its README fences, CI ``run`` steps, tox/nox
sessions and Makefile targets (``hint_sources``, read line by line with ``hint_lines``);
the evaluation stage must really run one of them (notes/predecessor.md section 6).
Ranking and normalisation are generic: fill the blanks a README leaves (``--model
<name>``), adapt to the sandbox's Python, refuse what cannot run unattended; never flags
or datasets of one particular tool.

Standard library only: ``runner.helpers.generic_evaluation`` imports this module inside the
sandbox, where only the container's python3 exists.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.trust import shell_words
from runner.trust.hint_lines import (
    ASSIGNMENT,
    Hint,
    is_interesting,
    program_of,
    segments,
    tokens,
    words,
)
from runner.trust.hint_sources import iter_hints, read_text

__all__ = [
    "MAX_ANCHORS",
    "MAX_HINTS",
    "Hint",
    "check_hints_evidence",
    "hint_anchors",
    "hint_env",
    "hint_priority",
    "is_interesting",
    "normalise_hint",
    "program_of",
    "read_hints_exec",
    "suggest_hints",
]

MAX_HINTS = 20
"""Hints exported to stages (the predecessor's cap)."""
MAX_ANCHORS = 12
"""Anchors exported to stages (the predecessor's cap)."""


def suggest_hints(
    repo_root: Path, *, limit: int = MAX_HINTS, python_version: str | None = None
) -> list[Hint]:
    """Official commands: docs first, then CI and task files while fewer than ``limit``.

    ``python_version`` ("3.11") picks the CI matrix entry; default: this interpreter's.
    """
    python = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    found: dict[str, Hint] = {}
    for source in iter_hints(Path(repo_root), python):
        for hint in source:
            if len(found) >= limit:
                return list(found.values())
            found.setdefault(hint.command, hint)
    return list(found.values())


# --- normalisation and ranking (run inside the sandbox) ------------------------------

_PLACEHOLDER = re.compile(
    r"<[A-Za-z](?:[^<>]*[^<>\s])?>"  # <model_name>, not redirections (`< in > out`)
    r"|(?<![$\w])\{[A-Za-z_][\w-]*\}"  # {yourip}, not ${VAR}
    r"|(?<!\S)\[[^\]\s]+\](?!\S)"  # a lone [OPTIONS] token, not .[extras]
    r"|\b(?:YOUR|your)[-_]\w+|/path/to/"
)
_FLAG_VALUE = re.compile(
    r"(--(?:model|model[-_]name|model[-_]id|base[-_]url|api[-_]base|api[-_]key))(=|\s+)(\S+)"
)
_PIPE_TO_SHELL = re.compile(r"\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b")
_COMMAND_POSITION = re.compile(
    r"(^|&&\s*|\|\|?\s*|;\s*)((?:[A-Za-z_]\w*=\S*\s+)*)"
    r"(python3?|pip3?|py\.?test|[a-z]\w*(?:\.[a-z_]\w*)+)(?=\s|$)"
)
_PYTEST_PARALLEL = re.compile(r"\s(?:-n|--numprocesses|--dist)(?:=|\s+)\S+")


def _fill_flag(m: re.Match[str], env: Mapping[str, str]) -> str:
    """Fill a placeholder value the README left for the user; explicit values stay."""
    flag, sep, value = m.groups()
    if not (_PLACEHOLDER.fullmatch(value) or value in ("...", "xxx", "XXX")):
        return m.group(0)
    if "key" in flag:
        fill = '"$OPENAI_API_KEY"'  # expanded by the shell: never written into hint files
    elif "url" in flag or "base" in flag:
        fill = env.get("OPENAI_API_BASE") or env.get("OPENAI_BASE_URL") or ""
    else:
        fill = env.get("OPENAI_MODEL") or env.get("AIDER_LLM_MODEL") or ""
    return f"{flag}{sep}{fill}" if fill else m.group(0)


def normalise_hint(
    raw: str, env: Mapping[str, str], which: Callable[[str], str | None] = shutil.which
) -> tuple[str, str]:
    """``(command, "")`` ready to run in this sandbox, or ``("", skip_reason)``.

    ``which`` looks programs up on the stage's PATH (the helper runs in the sandbox).
    """
    cmd = re.sub(r"^\s*(?:\$|%)\s+", "", raw).strip()
    cmd = re.sub(r"[ \t]+", " ", cmd)
    if not cmd:
        return "", "empty_hint"
    if "${{" in cmd:
        return "", "unresolved_ci_expression"
    if _PIPE_TO_SHELL.search(cmd):
        return "", "blocked_pipe_to_shell"
    if re.search(r"(?:^|[;&|]\s*)sudo\s", cmd):
        return "", "needs_sudo"
    cmd = re.sub(r"\[([^\[\]|\s]+)(?:\|[^\[\]|\s]+)+\]", r"\1", cmd)  # [a|b|c] -> a
    cmd = _FLAG_VALUE.sub(lambda m: _fill_flag(m, env), cmd)
    if _PLACEHOLDER.search(cmd):
        return "", "unresolved_placeholder"
    strip_parallel = env.get("AIDER_FSM_HINT_STRIP_PYTEST_N", "1").strip().lower()
    if re.search(r"\bpy\.?test\b", cmd) and strip_parallel not in ("0", "false", "no", "off"):
        # xdist flags need a plugin and fight the sandbox's CPU/pids limits; same result.
        cmd = _PYTEST_PARALLEL.sub("", cmd)
    return _rewrite_tools(cmd, env, which), ""


def _rewrite_tools(cmd: str, env: Mapping[str, str], which: Callable[[str], str | None]) -> str:
    """Use the stage's Python (a bootstrap venv, or python3 where no ``python`` exists)."""
    py = env.get("AIDER_FSM_PYTHON") or env.get("PYTHON") or ""
    py = py or ("python" if which("python") else "python3")
    explicit = "/" in py

    def fix(m: re.Match[str]) -> str:
        lead, assigns, tool = m.groups()
        missing = which(tool) is None
        if tool in ("python", "python3"):
            new = py if (explicit or missing) else tool
        elif tool in ("pip", "pip3"):
            new = f"{py} -m pip" if (explicit or missing) else tool
        elif tool in ("pytest", "py.test"):
            new = f"{py} -m pytest" if (explicit or missing) else tool
        elif missing and not tool.endswith((".py", ".sh", ".js")):
            new = f"{py} -m {tool}"  # a dotted console-script name is usually a module
        else:
            new = tool
        return f"{lead}{assigns}{new}"

    return _COMMAND_POSITION.sub(fix, cmd)


def hint_priority(cmd: str, env: Mapping[str, str]) -> int:
    """Higher runs first (notes 6.4 points, without the tool-specific ones)."""
    low = cmd.lower()
    points = 0
    if re.search(r"\bpy\.?test\b", low):
        points += 50
    if re.search(
        r"\b(?:make|just)\s+(?:tests?|check)\b|\b(?:npm|yarn|pnpm)\s+(?:run\s+)?test"
        r"|\b(?:tox|nox|unittest)\b|\b(?:go|cargo)\s+test\b",
        low,
    ):
        points += 30
    if re.search(r"(?<![a-z])eval", low):
        points += 20
    if "bench" in low:
        points += 10
    if program_of(cmd) == "docker":
        points -= 20  # no container engine inside the sandbox
    if "openai" in low and (env.get("OPENAI_API_BASE") or env.get("OPENAI_BASE_URL")):
        points += 5
    if re.search(r"anthropic|bedrock|vertex|gemini|cohere|vllm", low):
        points -= 5
    return points


# --- anchors, env, evidence ---------------------------------------------------------

_LAUNCHERS = words(
    "bash sh zsh python python3 pip pip3 uv uvx conda poetry pdm hatch node docker git "
    "sudo env accelerate torchrun deepspeed time nohup exec coverage"
)
_VERBS = words(
    "install uninstall run start stop setup build download clone create remove update "
    "upgrade launch exec"
)


def _anchors_of(cmd: str) -> list[str]:
    """Distinctive tokens of one command (notes 6.2), falling back to its first words."""
    segment = next((s for s in segments(cmd) if is_interesting(s)), cmd)
    toks = [t for t in tokens(segment) if not ASSIGNMENT.match(t)]
    if not toks:
        return []
    first = toks[0]
    launcher = first in _LAUNCHERS or re.search(r"python[\d.]*$", first) is not None
    if launcher and "-m" in toks[:-1]:  # not pytest's own `-m MARKEXPR`
        module = toks[toks.index("-m") + 1]
        found = [a for a in dict.fromkeys((module, module.split(".")[0])) if len(a) >= 5]
        if found:
            return found
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


def hint_env(
    repo_root: Path, *, python_version: str | None = None, require: bool = True
) -> dict[str, str]:
    """The predecessor's hint variables for stage envs; empty when the repo has no hints.

    ``require`` sets ``AIDER_FSM_REQUIRE_HINTS`` (1 or 0): the session decides it
    (``runner/trust/hint_check.py``), where the predecessor turned it on for any hint.
    """
    commands = [h.command for h in suggest_hints(repo_root, python_version=python_version)]
    if not commands:
        return {}
    return {
        "AIDER_FSM_HINTS_JSON": json.dumps(commands),
        "AIDER_FSM_HINT_ANCHORS_JSON": json.dumps(hint_anchors(commands)),
        "AIDER_FSM_REQUIRE_HINTS": "1" if require else "0",
    }


def read_hints_exec(path: Path, *, limit: int = 4_000_000) -> list[str]:
    """Commands ``generic_evaluation`` logged as started in ``hints_exec.jsonl`` (self-reported)."""
    out: list[str] = []
    for line in read_text(path, limit).splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # a 100000-deep line (issue 15 item 12)
            continue
        if (
            isinstance(rec, dict)
            and rec.get("phase") == "start"
            and isinstance(rec.get("cmd"), str)
        ):
            out.append(rec["cmd"])
    return out


_INERT = frozenset({"echo", "printf", ":", "true", "false", "test", "[", "[["})
"""Commands that only print or test their words: a claim in their arguments never ran."""


def _invocations(text: str) -> list[tuple[str, ...]]:
    """The commands ``text`` runs, as words (the command's basename first), read the way
    bash reads them: a claim that only sits in an ``echo``, a ``:`` or a comment is out."""
    return [
        (inv.name, *inv.args)
        for inv in shell_words.parse(text).invocations()
        if inv.name not in _INERT
    ]


def _ran(claim: str, ran: Sequence[tuple[str, ...]]) -> bool:
    """Every command of ``claim`` was seen run, with at least the claimed arguments first."""
    wanted = _invocations(claim)
    return bool(wanted) and all(any(r[: len(w)] == w for r in ran) for w in wanted)


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
    seen = [words for text in executed for words in _invocations(text)]
    helper_ran = any(
        re.search(r"generic_evaluation|hints_exec", word) for words in seen for word in words
    )
    if helper_log and not helper_ran:
        errors.append(
            "hints_evidence.helper_log_without_helper: hints_exec.jsonl exists but "
            "the runner's records show no generic_evaluation invocation"
        )
    ran = [*seen, *(w for t in (helper_log if helper_ran else ()) for w in _invocations(t))]
    chosen = hints_used.get("chosen_command")
    claims = [chosen] if isinstance(chosen, str) else []
    commands = hints_used.get("commands")
    claims += [c for c in commands if isinstance(c, str)] if isinstance(commands, list) else []
    for claim in dict.fromkeys(c.strip() for c in claims if c.strip()):
        if not _ran(claim, ran):
            errors.append(f"hints_evidence.command_not_executed: {claim}")
    used = hints_used.get("used_anchors")
    anchors = (
        [a.strip() for a in used if isinstance(a, str) and a.strip()]
        if isinstance(used, list)
        else []
    )
    if anchors and not any(a.lower() in " ".join(r).lower() for a in anchors for r in ran):
        errors.append(
            f"hints_evidence.anchor_not_executed: none of {anchors} appears in an executed command"
        )
    return errors
