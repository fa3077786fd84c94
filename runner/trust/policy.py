"""The command policy: a readable second layer in front of the sandbox.

The container is the real boundary (no engine socket, dropped capabilities, limits).
This layer refuses, with a named rule and before anything runs, commands whose intent
is plain from their text, and :meth:`CommandPolicy.describe` records the rules in force.

Rules, in order (the name goes into ``PolicyViolation.rule``):

1. ``hard-deny``  always: the container engine (``docker``/``podman``/``nerdctl``, any
   mention of ``docker.sock``), ``mount``/``umount``, ``nsenter``, ``unshare``,
   ``chroot``, kernel modules, ``reboot``/``shutdown``/``halt``/``poweroff``, fork-bomb
   shapes, ``rm -r`` of ``/``, ``/*``, ``~``, ``$HOME`` or with ``--no-preserve-root``.
2. ``safe-mode``  mode=safe: ``sudo``/``su``/``doas`` and system package managers outside
   bootstrap (root installs are what the bootstrap image is for); a download run as
   code (``curl ... | sh``, ``bash <(curl ...)``, ``sh -c "$(wget ...)"``); chmod/chown of ``/``.
3. ``denylist``   the contract's ``security.denylist``: case-insensitive search of the text.
4. ``allowlist``  when non-empty, the text must match one entry.
5. ``unattended`` unattended=strict: commands that wait for a human (``read`` without
   ``-t`` on a terminal, ``ssh``/``scp``/``sftp`` without ``BatchMode=yes``, ``passwd``,
   ``vi``/``vim``/``nvim``/``nano``/``less``/``more``/``top``/``htop``, ``python -i``,
   ``gh auth login`` without ``--with-token``, ``huggingface-cli login`` without
   ``--token``). ``docker login`` never gets here: rule 1 refuses it.

An empty command is refused with rule ``empty``.

Rules 1, 2 and 5 look at *command positions*, found by :mod:`runner.trust.shell_words`: the
first word of each simple command (after ``;``, ``&&``, ``||``, ``|``, ``&``, newlines,
``(``, ``$(``, backticks, ``<(``), past assignments, redirections, keywords and wrappers
(sudo, env, nohup, exec, time, xargs, nice, timeout, ...), and inside
``sh -c``/``bash -c``/``su -c``/``eval`` payloads.
Other words are data: ``echo reboot`` and ``./scripts/shutdown_test.py`` pass. Quotes
are resolved with :mod:`shlex` first, so ``s''udo`` and ``/usr/bin/sudo`` are sudo.

Limits, plainly: this is a readability layer, not a sandbox. Anything computed at run
time passes it: ``$(echo rm) -rf /``, ``x=sudo; $x ...``, ``$'\\x73udo'``,
``echo <base64> | base64 -d | sh``, ``eval "$v"``, ``cd / && rm -rf .``, python's
``shutil.rmtree``, heredoc bodies and the scripts a command runs. The container's
limits are what hold when the policy is bypassed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from runner.errors import ContractError, PolicyViolation
from runner.trust.shell_words import MAX_DEPTH, SHELLS, Invocation, Parsed, parse

HARD_DENY_COMMANDS: dict[str, str] = {
    **dict.fromkeys(
        ("docker", "docker-compose", "podman", "nerdctl"), "controls the container engine"
    ),
    **dict.fromkeys(("mount", "umount", "pivot_root"), "changes the mount table"),
    **dict.fromkeys(("nsenter", "unshare", "chroot"), "enters or creates namespaces/roots"),
    **dict.fromkeys(("insmod", "rmmod", "modprobe"), "loads or unloads kernel modules"),
    **dict.fromkeys(("reboot", "shutdown", "halt", "poweroff"), "stops the machine"),
}
"""Commands with no place in an evaluation contract, even inside a container."""
ENGINE_SOCKETS = ("docker.sock", "podman.sock", "containerd.sock")
PRIVILEGED_STAGES = frozenset({"bootstrap"})
PRIVILEGE_COMMANDS = frozenset({"sudo", "su", "doas"})
PACKAGE_MANAGERS = frozenset({"apt", "apt-get", "aptitude", "dpkg"})
DOWNLOADERS = frozenset({"curl", "wget", "fetch"})
INTERACTIVE_TOOLS = frozenset(
    {"passwd", "vi", "vim", "nvim", "nano", "less", "more", "top", "htop"}
)
LIMITS = (
    "readability layer only: commands built at run time (variables, eval, base64 | sh, "
    "$(...) as the command name) bypass it; the container limits are the boundary"
)

_PYTHON_RE = re.compile(r"(?:python|pypy)[\d.]*")
_INTERP_RE = re.compile(rf"{_PYTHON_RE.pattern}|perl|ruby|node")
_RUNNERS_OF_TEXT = SHELLS | {"eval", "source", "."}
_ROOT_TARGETS = frozenset(
    {"/", "/*", "/.", "/.*", "~", "~/*", "$HOME", "${HOME}", "$HOME/*", "${HOME}/*"}
)
# Fork bombs: a function definition whose short body pipes the name into itself. Found
# from the literal `() {` / `function` so the search stays linear on long commands.
_NAME = r"[^\s(){}|;&<>'\"]{1,64}"
_DEF_PARENS_RE = re.compile(r"\(\s*\)\s*\{")
_DEF_FUNCTION_RE = re.compile(rf"\bfunction\s+({_NAME})\s*(?:\(\s*\)\s*)?\{{")
_NAME_BEFORE_RE = re.compile(rf"({_NAME})\s*$")
_PY_INTERACTIVE_RE = re.compile(r"-[bBdEIOPqsSuv]*i")


@dataclass(frozen=True)
class PolicyConfig:
    """The rules' inputs: the contract's ``security`` section and the session's unattended mode."""

    mode: Literal["safe", "system"] = "safe"
    allowlist: tuple[str | re.Pattern[str], ...] = ()
    denylist: tuple[str | re.Pattern[str], ...] = ()
    unattended: Literal["strict", "guided"] = "strict"


def _root_target(arg: str) -> bool:
    return (re.sub(r"/+", "/", arg).rstrip("/") or "/") in _ROOT_TARGETS


def _rm_root(args: tuple[str, ...]) -> bool:
    if "--no-preserve-root" in args:
        return True
    flags = [a for a in args if a.startswith("-")]
    recursive = any(
        a == "--recursive" or (not a.startswith("--") and set(a[1:]) & {"r", "R"}) for a in flags
    )
    return recursive and any(_root_target(a) for a in args if not a.startswith("-"))


def _runs_stdin(inv: Invocation) -> bool:
    """Would this shell/interpreter execute what arrives on stdin?"""
    shell = inv.name in SHELLS
    if not shell and not _INTERP_RE.fullmatch(inv.name):
        return False
    for a in inv.args:
        if a == "-":
            return True
        if not a.startswith("-"):
            return False  # a script file: stdin is its data
        letters = "" if a.startswith("--") else a[1:]
        if shell and "s" in letters:
            return True
        if "c" in letters or "m" in letters or (not shell and "e" in letters):
            return False  # the program is on the command line; stdin is data
    return True


def _downloads(parsed: Parsed) -> bool:
    return any(inv.name in DOWNLOADERS for inv in parsed.invocations())


class CommandPolicy:
    """Checks one command against the rules; refusals raise :class:`PolicyViolation`."""

    def __init__(self, config: PolicyConfig) -> None:
        """Compile the allow/deny patterns.

        Raises:
            ContractError: an allowlist/denylist entry is not a valid regex (the contract
                loader normally catches this first).
        """
        self.config = config
        self._allow = _compile(config.allowlist, "allowlist")
        self._deny = _compile(config.denylist, "denylist")

    def check(self, command: str, *, stage: str) -> None:
        """Refuse ``command`` for ``stage`` if a rule matches; return quietly otherwise.

        Raises:
            PolicyViolation: a rule refused the command (``rule`` names it).
        """
        if not command.strip():
            raise PolicyViolation(command, "empty", "the command is empty")
        parsed = parse(command)
        reason = _hard_deny(command, parsed)
        if reason:
            raise PolicyViolation(command, "hard-deny", reason)
        reason = _safe_mode(parsed, stage) if self.config.mode == "safe" else None
        if reason:
            raise PolicyViolation(command, "safe-mode", reason)
        for p in self._deny:
            if p.search(command):
                raise PolicyViolation(command, "denylist", f"matches denylist entry {p.pattern!r}")
        if self._allow and not any(p.search(command) for p in self._allow):
            raise PolicyViolation(command, "allowlist", "matches no allowlist entry")
        reason = _interactive(parsed) if self.config.unattended == "strict" else None
        if reason:
            raise PolicyViolation(command, "unattended", reason)

    def describe(self) -> dict[str, object]:
        """The rules in force, for the run dir."""
        cfg = self.config
        return {
            "mode": cfg.mode,
            "unattended": cfg.unattended,
            "rules": ["empty", "hard-deny"]
            + (["safe-mode"] if cfg.mode == "safe" else [])
            + (["denylist"] if self._deny else [])
            + (["allowlist"] if self._allow else [])
            + (["unattended"] if cfg.unattended == "strict" else []),
            "hard_deny_commands": sorted(HARD_DENY_COMMANDS),
            "engine_sockets": list(ENGINE_SOCKETS),
            "safe_mode_privileged_stages": sorted(PRIVILEGED_STAGES),
            "safe_mode_outside_bootstrap": sorted(PRIVILEGE_COMMANDS | PACKAGE_MANAGERS),
            "denylist": [p.pattern for p in self._deny],
            "allowlist": [p.pattern for p in self._allow],
            "interactive_tools": sorted(INTERACTIVE_TOOLS),
            "limits": LIMITS,
        }


def _compile(patterns: Sequence[str | re.Pattern[str]], name: str) -> tuple[re.Pattern[str], ...]:
    out: list[re.Pattern[str]] = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append(re.compile(p.pattern, p.flags | re.IGNORECASE))
            continue
        try:
            out.append(re.compile(p, re.IGNORECASE))
        except re.error as exc:
            raise ContractError(f"invalid regex: {exc}", field=f"security.{name}", found=p) from exc
    return tuple(out)


def _fork_bomb(command: str) -> bool:
    heads = [(m.group(1), m.end()) for m in _DEF_FUNCTION_RE.finditer(command)]
    for m in _DEF_PARENS_RE.finditer(command):
        before = _NAME_BEFORE_RE.search(command, max(0, m.start() - 80), m.start())
        if before:
            heads.append((before.group(1), m.end()))
    for name, body_start in heads:
        body = command[body_start : body_start + 200].split("}", 1)[0]
        n = re.escape(name)
        if re.search(rf"(?<![^\s;&|(]){n}\s*\|\s*{n}(?![^\s&;|)])", body):
            return True
    return False


def _hard_deny(command: str, parsed: Parsed) -> str | None:
    low = command.lower()
    for sock in ENGINE_SOCKETS:
        if sock in low:
            return f"mentions the container engine socket {sock!r}"
    if any(part.too_deep for part in parsed.walk()):
        return f"substitutions or sh -c payloads nested more than {MAX_DEPTH} levels deep"
    if _fork_bomb(command):
        return "fork bomb: a function that pipes itself into itself in the background"
    for inv in parsed.invocations():
        if inv.name in HARD_DENY_COMMANDS:
            return f"`{inv.name}` {HARD_DENY_COMMANDS[inv.name]}"
        if inv.name == "rm" and _rm_root(inv.args):
            return "`rm -r` of the root or home directory"
    return None


def _safe_mode(parsed: Parsed, stage: str) -> str | None:
    for inv in parsed.invocations():
        if stage not in PRIVILEGED_STAGES and inv.name in PRIVILEGE_COMMANDS | PACKAGE_MANAGERS:
            return f"`{inv.name}` is allowed only in bootstrap in safe mode (stage {stage!r})"
        if inv.name in ("chmod", "chown", "chgrp") and any(
            _root_target(a) for a in inv.args if not a.startswith("-")
        ):
            return f"`{inv.name}` of the root directory"
    for part in parsed.walk():
        for pipe in part.pipelines:
            downloaded = False
            for chain in pipe:
                if downloaded and any(_runs_stdin(inv) for inv in chain):
                    return "a download piped into a shell or interpreter (curl ... | sh)"
                downloaded = downloaded or any(inv.name in DOWNLOADERS for inv in chain)
                for inv in chain:
                    runs_text = inv.name in _RUNNERS_OF_TEXT or _INTERP_RE.fullmatch(inv.name)
                    words = (inv.name, *inv.args) if runs_text else (inv.name,)
                    for key, sub in part.subs.items():
                        if any(key in w for w in words) and _downloads(sub):
                            return "downloaded text run as code ($(curl ...), <(curl ...))"
    return None


def _interactive(parsed: Parsed) -> str | None:
    for inv in parsed.invocations():
        opts = inv.options()
        letters = "".join(o[1:] for o in opts if not o.startswith("--"))
        if inv.name == "read" and not ({"t", "u"} & set(letters)):
            if not (inv.piped_in or inv.stdin_redirected or inv.loop_condition):
                return "`read` without -t waits for input"
        elif inv.name in ("ssh", "scp", "sftp") and not re.search(
            r"batchmode[\s=]+yes", " ".join(inv.args), re.I
        ):
            return f"`{inv.name}` without -o BatchMode=yes may prompt for a password"
        elif inv.name in INTERACTIVE_TOOLS and not (inv.name == "top" and "b" in letters):
            return f"`{inv.name}` is interactive"
        elif _PYTHON_RE.fullmatch(inv.name) and any(_PY_INTERACTIVE_RE.match(o) for o in opts):
            return f"`{inv.name} -i` opens an interactive prompt"
        elif (
            inv.name == "gh"
            and inv.args[:2] == ("auth", "login")
            and "--with-token" not in inv.args
        ):
            return "`gh auth login` without --with-token prompts"
        elif (inv.name, *inv.args[:1]) == ("huggingface-cli", "login") and not any(
            a.startswith("--token") for a in inv.args
        ):
            return "`huggingface-cli login` without --token prompts"
    return None
