"""Did the evaluation run one of the repository's official commands? The runner decides.

The predecessor turned ``AIDER_FSM_REQUIRE_HINTS`` on whenever a README, CI file, tox.ini
or Makefile named a command, then believed ``hints_used.json`` as the stage wrote it: a
contract running ``python -m pytest`` failed with ``missing_hints_used_json`` although
its tests passed (issue 16.2). Here the runner reads its own record of what ran (the
stage's commands, the shell trace of its scripts, the helper's log when the helper is
seen running) and decides; it writes ``hints_used.json`` itself.

Modes: ``require`` fails the evaluation when no official command ran; ``report`` says
which were found and whether one ran, and never fails a run. ``auto`` (the default)
requires for a contract the OpenCode agent wrote or repaired, and reports otherwise.
A stage that writes its own ``hints_used.json`` is checked in every mode: a claim that
nothing shows was run fails the evaluation (``hints_evidence.*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from runner.trust import shell_words
from runner.trust.hints import hint_anchors

HintsOption = Literal["auto", "require", "report"]
HINTS_OPTIONS: tuple[str, ...] = ("auto", "require", "report")

_TASK_RUNNERS = frozenset({"make", "just", "npm", "yarn", "pnpm", "go", "cargo", "nox"})
_WRAPPERS = {  # launchers whose real command follows, and their options that take a value
    "uvx": frozenset({"--with", "--from", "-p", "--python"}),
    "uv": frozenset({"--with", "--from", "-p", "--python", "--extra", "--group"}),
    "poetry": frozenset(),
    "pdm": frozenset(),
    "hatch": frozenset({"-e", "--env"}),
    "pipenv": frozenset(),
    "coverage": frozenset({"--rcfile", "--include", "--omit", "--source", "--data-file"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "env": frozenset({"-u", "--unset", "-C", "--chdir"}),
    "nohup": frozenset(),
    "exec": frozenset(),
    "time": frozenset(),
}
_RUN_VERBS = frozenset({"run", "exec"})
_VERB_WRAPPERS = frozenset({"uv", "poetry", "pdm", "hatch", "pipenv", "coverage"})
_INERT = frozenset({"echo", "printf", ":", "true", "false", "test", "[", "[["})
_SETUP_STEPS = frozenset(
    [
        "cd",
        "pushd",
        "popd",
        "export",
        "set",
        "source",
        ".",
        "mkdir",
        "cp",
        "mv",
        "rm",
        "ls",
        "cat",
        "chmod",
        "sleep",
        "git",
        "pip",
        "uv",
        "conda",
        "apt",
        "apt-get",
        "sudo",
        "curl",
        "wget",
        "virtualenv",
    ]
)
"""Steps around an official command (``cd docs && make test``): running them proves nothing."""


def _program(word: str) -> str:
    name = PurePosixPath(word.strip("'\"")).name.lower()
    if "python" in name:  # python3.11, "$AIDER_FSM_PYTHON", {envpython}
        return "python"
    if name in ("py.test", "pytest"):
        return "pytest"
    return re.sub(r"\d+(?:\.\d+)*$", "", name) or name  # pip3 -> pip


def _unwrap(name: str, args: list[str]) -> tuple[str, list[str]]:
    """``uvx --with tox-uv tox -e py`` -> ``tox -e py``; ``python -m pytest`` -> ``pytest``."""
    for _ in range(6):
        if name == "python" and "-m" in args[:3]:
            i = args.index("-m")
            if i + 1 < len(args):
                name, args = _program(args[i + 1]), args[i + 2 :]
                continue
        if name == "runner.helpers.test_suite" and "--" in args:
            i = args.index("--")
            if i + 1 < len(args):
                name, args = _program(args[i + 1]), args[i + 2 :]
                continue
        if name in _WRAPPERS:
            takes_value = _WRAPPERS[name]
            rest = list(args)
            if name in _VERB_WRAPPERS:
                if not rest or rest[0] not in _RUN_VERBS:
                    return name, args
                rest = rest[1:]
            if name == "timeout" and rest and not rest[0].startswith("-"):
                rest = rest[1:]  # the duration
            while rest and (rest[0].startswith("-") or (name == "env" and "=" in rest[0])):
                flag = rest.pop(0)
                if flag in takes_value and rest:
                    rest.pop(0)
            if rest:
                name, args = _program(rest[0]), rest[1:]
                continue
        break
    return name, args


_VALUE_FLAGS = frozenset({"-C", "-f", "--directory", "--file", "-I", "-o", "-W", "--prefix"})
"""Task-runner options whose value is not the target (``make -C docs test``)."""


def _target(args: list[str]) -> str | None:
    """The first argument that names what a task runner runs (``test`` of ``npm run test``)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-") and arg != "run":
            return arg
    return None


def command_keys(text: str) -> list[tuple[str, ...]]:
    """What makes each command of ``text`` the same official command, however it is launched.

    A program (``pytest``, whether run as ``pytest``, ``python -m pytest``, under ``uvx``
    or ``coverage run``), plus the target for task runners (``make test``, ``npm test``).
    Commands that only print or test their words (``echo``, ``:``) are not commands run.
    """
    keys: list[tuple[str, ...]] = []
    try:
        invocations = list(shell_words.parse(text).invocations())
    except (ValueError, RecursionError):
        return keys
    for inv in invocations:
        if inv.name in _INERT:
            continue
        name, args = _unwrap(_program(inv.name), list(inv.args))
        target = _target(args)
        if name in _TASK_RUNNERS or name == "python":
            keys.append((name, PurePosixPath(target).name) if target else (name,))
        else:
            keys.append((name,))
    return keys


def _matches(official: tuple[str, ...], ran: tuple[str, ...]) -> bool:
    return official[0] == ran[0] and (len(official) == 1 or official[1:2] == ran[1:2])


def official_commands_run(found: Sequence[str], executed: Iterable[str]) -> list[str]:
    """The official commands (``found``) of which the runner saw an equivalent run."""
    seen = [key for text in executed for key in command_keys(text)]
    out: list[str] = []
    for command in found:
        wanted = [k for k in command_keys(command) if k[0] not in _SETUP_STEPS]
        if wanted and any(_matches(w, r) for w in wanted for r in seen):
            out.append(command)
    return out


@dataclass(frozen=True)
class HintsDecision:
    """Which mode applies to this session's evaluation, and why (for validate, run, report)."""

    mode: Literal["require", "report", "none"]
    why: str
    found: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.mode == "none":
            return f"hints: none ({self.why})"
        shown = ", ".join(self.found[:3]) + (", ..." if len(self.found) > 3 else "")
        return f"hints: {self.mode} ({self.why}); official commands found: {shown}"


def decide(
    option: str, found: Sequence[str], *, agent_wrote: bool, contract_asks: bool
) -> HintsDecision:
    """``require`` or ``report`` for a session, with the reason a user can act on."""
    cmds = tuple(found)
    if not cmds:
        if option == "require":
            return HintsDecision("require", "asked for, but no official command was found")
        return HintsDecision(
            "none", "no official command found in README, docs, CI, tox, nox, Make"
        )
    if option == "require":
        return HintsDecision("require", "asked for (hints='require' / --require-hints)", cmds)
    if option == "report":
        return HintsDecision("report", "asked for (hints='report')", cmds)
    if contract_asks:
        return HintsDecision("require", "the contract sets AIDER_FSM_REQUIRE_HINTS", cmds)
    if agent_wrote:
        return HintsDecision("require", "the OpenCode agent wrote or repaired this contract", cmds)
    return HintsDecision(
        "report", "you wrote this contract; --require-hints makes one official command a must", cmds
    )


@dataclass
class HintsVerdict:
    """What the runner found about official commands in one evaluation."""

    mode: str
    why: str
    found: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.errors:
            return False
        return self.mode != "require" or bool(self.ran)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "why": self.why,
            "found": self.found,
            "ran": self.ran,
            "ok": self.ok,
            "errors": self.errors,
        }

    def hints_used(self) -> dict[str, Any]:
        """``hints_used.json`` in the predecessor's shape, written by the runner itself."""
        reason = "" if self.ran else "no official command ran in this evaluation"
        return {
            "ok": bool(self.ran),
            "used_anchors": hint_anchors(self.ran),
            "commands": self.ran,
            "reason": reason,
            "found": self.found,
            "mode": self.mode,
            "written_by": "fsm-runner (from its own record of the commands that ran)",
        }

    def failure(self) -> str:
        """Why the requirement failed ("" when it holds)."""
        if self.errors:
            return "; ".join(self.errors)
        if self.ok:
            return ""
        if not self.found:
            return "evaluation.hints_requirement_failed: no official command was found to run"
        return (
            "evaluation.hints_requirement_failed: none of the official commands ran "
            f"({', '.join(self.found[:5])}); hints mode require: {self.why}"
        )
