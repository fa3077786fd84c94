"""What an official command looks like: one line of a README fence or CI script, read.

``Hint`` (a command and where it was found), a command line's tokens, segments and
program, whether it looks like a test/evaluation run rather than setup, and the logical
lines of a script (continuations joined, prompts and comments dropped). Generic on
purpose (notes/predecessor.md 6.1 and 14.5): interest words, never rules tuned to one
project. Standard library only: imported inside the sandbox through ``runner.trust.hints``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_INTEREST = re.compile(
    r"(?<![a-z])(?:eval|bench)|\bleaderboard\b|\bpy\.?test\b|\bunittest\b"
    r"|\b(?:make|just)\s+(?:tests?|check|evals?|bench\w*)\b"
    r"|\b(?:npm|pnpm|yarn)\s+(?:run\s+)?test\b"
    r"|(?:^|&&|;|\|\|)\s*(?:tox|nox|go\s+test|cargo\s+test)\b",
    re.IGNORECASE,
)
_SETUP = re.compile(
    r"^(?:(?:python3?\s+-m\s+)?(?:pip3?|uv\s+pip|conda|mamba|poetry|pdm|npm|yarn|pnpm|"
    r"apt(?:-get)?|brew|pipx)\s+(?:install|uninstall|add|ci|i|sync|update|upgrade)\b"
    r"|(?:source|\.)\s|(?:git\s+clone|cd|export|mkdir|uv\s+(?:sync|venv)|pre-commit\s+install"
    r"|docker\s+(?:pull|build|push|login)|conda\s+(?:create|activate)|set)\b"
    r"|(?:python3?\s+-m\s+)?(?:venv|virtualenv)\b)"
)
_PASSIVE = words(
    "echo printf cat ls head tail grep rg sed awk jq wc rm cp mv touch true false test "
    "which pwd sleep date tee"
)
_PROGRAMS = words(
    "bash sh zsh python python3 pip pip3 uv uvx poetry conda pdm hatch make just pytest "
    "py.test tox nox docker git npm npx yarn pnpm node go cargo accelerate torchrun "
    "deepspeed inspect coverage"
)
_PROMPT = re.compile(r"^(?:\$|%)\s+")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=\S*$")
_SEGMENT = re.compile(r"\s*(?:&&|\|\||;)\s*")
_KEYVAL = re.compile(r"^\w+\s*=\s*[{\"]")  # BibTeX fields and similar non-commands


@dataclass(frozen=True)
class Hint:
    """One official command and where it was found (``README.md:42``, a workflow path)."""

    command: str
    source: str


# --- line-level filters -------------------------------------------------------------


def tokens(cmd: str) -> list[str]:
    try:
        return shlex.split(cmd, comments=False)
    except ValueError:
        return cmd.split()


def segments(cmd: str) -> list[str]:
    return [s for s in _SEGMENT.split(cmd) if s.strip()]


def program_of(cmd: str) -> str:
    """The program a command line runs: skips ``cd X &&`` segments and ``VAR=value``."""
    for segment in segments(cmd):
        toks = tokens(segment)
        while toks and ASSIGNMENT.match(toks[0]):
            toks.pop(0)
        if toks and toks[0] not in ("cd", "export", "source", ".", "set"):
            return toks[0]
    return ""


def _strip_comment(line: str) -> str:
    """Cut a trailing ``# comment`` that is outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def looks_like_command(line: str) -> bool:
    first = program_of(line)
    if not first or first[0] in "@*[({<#|&-":
        return False
    if first[0] in "./$" or "/" in first or first.endswith((".py", ".sh")):
        return True
    return first in _PROGRAMS or bool(re.fullmatch(r"[a-z][a-z0-9]*(?:[._-][a-z0-9]+)+", first))


def is_setup_only(cmd: str) -> bool:
    """True when every segment only installs, clones, moves around or prints."""
    for segment in segments(cmd):
        words = segment.split()
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        body = " ".join(words)
        if body and not (_SETUP.match(body) or words[0] in _PASSIVE):
            return False
    return True


def is_interesting(cmd: str) -> bool:
    """Whether a command looks like a test/evaluation run (not setup, not shell plumbing)."""
    if re.search(r"\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b", cmd) or _KEYVAL.match(cmd):
        return False
    if program_of(cmd) == "eval":  # the shell builtin: `eval "$(pyenv init -)"`
        return False
    return bool(_INTEREST.search(cmd)) and not is_setup_only(cmd)


def logical_lines(lines: Iterable[str], *, prompt_only: bool = False) -> Iterator[tuple[int, str]]:
    """(index of first physical line, command): ``\\`` continuations joined, prompts,
    comments and REPL lines dropped."""
    pending, first = "", 0
    for index, raw in enumerate(lines):
        line = raw.strip()
        prompt = _PROMPT.match(line)
        if prompt_only and not prompt and not pending:
            continue
        if prompt:
            line = line[prompt.end() :]
        if line.startswith((">>>", "...")) and not pending:
            continue
        if pending:
            line, pending = f"{pending} {line}", ""
        else:
            first = index
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        line = _strip_comment(line)
        if line:
            yield first, re.sub(r"[ \t]+", " ", line)
    if pending:
        yield first, pending
