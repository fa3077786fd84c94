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

Rules 1, 2 and 5 look at *command positions*: the first word of each simple command
(after ``;``, ``&&``, ``||``, ``|``, ``&``, newlines, ``(``, ``$(``, backticks, ``<(``),
past assignments, redirections, keywords and wrappers (sudo, env, nohup, exec, time,
xargs, nice, timeout, ...), and inside ``sh -c``/``bash -c``/``su -c``/``eval`` payloads.
Other words are data: ``echo reboot`` and ``./scripts/shutdown_test.py`` pass. Quotes
are resolved with :mod:`shlex` first, so ``s''udo`` and ``/usr/bin/sudo`` are sudo.

Limits, plainly: this is a readability layer, not a sandbox. Anything computed at run
time passes it: ``$(echo rm) -rf /``, ``x=sudo; $x ...``, ``$'\\x73udo'``,
``echo <base64> | base64 -d | sh``, ``eval "$v"``, ``cd / && rm -rf .``, python's
``shutil.rmtree``, heredoc bodies and the scripts a command runs. The container's
limits are what hold when the policy is bypassed.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runner.errors import ContractError, PolicyViolation

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
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish"})
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
_KEYWORDS = frozenset(
    {"!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until"}
)
_ASSIGN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
_REDIR_RE = re.compile(r"\d*(?:&>>?|[<>]&|>>?\|?|<<<|<<-?|<>|<)(.*)", re.S)
_HEREDOC_RE = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|<>()]+))")
# Fork bombs: a function definition whose short body pipes the name into itself. Found
# from the literal `() {` / `function` so the search stays linear on long commands.
_NAME = r"[^\s(){}|;&<>'\"]{1,64}"
_DEF_PARENS_RE = re.compile(r"\(\s*\)\s*\{")
_DEF_FUNCTION_RE = re.compile(rf"\bfunction\s+({_NAME})\s*(?:\(\s*\)\s*)?\{{")
_NAME_BEFORE_RE = re.compile(rf"({_NAME})\s*$")
_PLAIN_RUN_RE = re.compile(r"[^\\`$<>'\"#\n;&|() \t]+")
_PY_INTERACTIVE_RE = re.compile(r"-[bBdEIOPqsSuv]*i")
# Wrapper -> (its options that take a value, positional words before the wrapped command).
_WRAPPERS: dict[str, tuple[str, int]] = {
    "sudo": ("-u -g -h -p -C -D -r -t -U -T --user --group", 0),
    "doas": ("-u -C", 0),
    "env": ("-u -C --unset --chdir", 0),
    "exec": ("-a", 0),
    "time": ("-f -o --format --output", 0),
    "nice": ("-n --adjustment", 0),
    "ionice": ("-c -n -p", 0),
    "stdbuf": ("-i -o -e", 0),
    "timeout": ("-s -k --signal --kill-after", 1),
    "xargs": ("-I -n -P -L -d -E -s -a --max-args --arg-file", 0),
    **dict.fromkeys(("nohup", "command", "builtin", "setsid", "busybox"), ("", 0)),
}
_SHLEX_MAX_CHARS = 32_000
_MAX_DEPTH = 16
"""Deeper nesting of substitutions/payloads is refused: it only serves to hide a command."""


@dataclass(frozen=True)
class PolicyConfig:
    """The rules' inputs: the contract's ``security`` section and the session's unattended mode."""

    mode: Literal["safe", "system"] = "safe"
    allowlist: tuple[str | re.Pattern[str], ...] = ()
    denylist: tuple[str | re.Pattern[str], ...] = ()
    unattended: Literal["strict", "guided"] = "strict"


@dataclass(frozen=True)
class _Inv:
    """One word at command position and the words after it."""

    name: str
    args: tuple[str, ...]
    piped_in: bool = False
    stdin_redirected: bool = False
    loop_condition: bool = False

    def options(self) -> list[str]:
        """Leading ``-x`` words (before the first positional or ``--``)."""
        out: list[str] = []
        for a in self.args:
            if a == "--" or not a.startswith("-") or a == "-":
                break
            out.append(a)
        return out


@dataclass
class _Parsed:
    pipelines: list[list[list[_Inv]]]  # pipeline -> simple command -> wrapper chain
    subs: dict[str, _Parsed] = field(default_factory=dict)  # placeholder -> $(...) etc.
    payloads: list[_Parsed] = field(default_factory=list)  # sh -c / su -c / eval texts
    too_deep: bool = False

    def walk(self) -> Iterator[_Parsed]:
        yield self
        for child in (*self.subs.values(), *self.payloads):
            yield from child.walk()

    def invocations(self) -> Iterator[_Inv]:
        for part in self.walk():
            for pipe in part.pipelines:
                for chain in pipe:
                    yield from chain


def _close(text: str, i: int, closer: str) -> int:
    """Index of the ``closer`` ending a substitution that starts at ``i`` (or len(text))."""
    depth, quote = 1, ""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"" and closer == ")":
            quote = c
        elif c == closer and (closer == "`" or depth == 1):
            return i
        elif closer == ")" and c in "()":
            depth += 1 if c == "(" else -1
        i += 1
    return len(text)


def _split(text: str, ids: Iterator[int]) -> tuple[list[list[str]], dict[str, str]]:
    """Cut shell text into pipelines of simple-command texts; pull out substitutions.

    Quote-, comment- and heredoc-aware; never raises (unbalanced input is read to the end).
    """
    pipelines: list[list[str]] = [[]]
    subs: dict[str, str] = {}
    buf: list[str] = []
    heredocs: list[tuple[str, bool]] = []
    quote, word_start, i, n = "", True, 0, len(text)

    def cut(end_pipeline: bool) -> None:
        seg = "".join(buf).strip()
        buf.clear()
        if seg:
            pipelines[-1].append(seg)
        if end_pipeline and pipelines[-1]:
            pipelines.append([])

    while i < n:
        c, nxt = text[i], text[i + 1 : i + 2]
        if quote == "'":
            buf.append(c)
            quote = "" if c == "'" else quote
            i += 1
        elif c == "\\":
            buf.append(text[i : i + 2] if nxt != "\n" else "")
            i, word_start = i + 2, False
        elif c == "`" or (nxt == "(" and (c == "$" or (c in "<>" and not quote))):
            closer, start = ("`", i + 1) if c == "`" else (")", i + 2)
            end = _close(text, start, closer)
            key = f"__fsm_sub{next(ids)}__"
            subs[key] = text[start:end]
            buf.append(key)
            i, word_start = end + 1, False
        elif quote == '"' or c in "'\"":
            quote = "" if c == quote else (c if c in "'\"" and not quote else quote)
            buf.append(c)
            i, word_start = i + 1, False
        elif c == "#" and word_start:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "\n":
            cut(True)
            i, word_start = _skip_heredocs(text, i + 1, heredocs), True
            heredocs.clear()
        elif c == "<" and (m := _HEREDOC_RE.match(text, i)) and not text.startswith("<<<", i):
            heredocs.append((m.group(2) or m.group(3) or m.group(4) or "", m.group(1) == "-"))
            buf.append(m.group(0))
            i = m.end()
        elif (c in "<>" and nxt in "&|") or (c == "&" and nxt == ">"):
            buf.append(c + nxt)  # redirections: 2>&1, >|, &>
            i += 2
        elif c in ";&|()":
            pipe = c == "|" and nxt != "|"
            cut(end_pipeline=not pipe and c not in "()")
            i += 2 if nxt == c or (pipe and nxt == "&") else 1
            word_start = True
        elif run := _PLAIN_RUN_RE.match(text, i):  # ordinary characters, in one step
            buf.append(run.group())
            i, word_start = run.end(), False
        else:
            buf.append(c)
            word_start = c in " \t"
            i += 1
    cut(True)
    return [p for p in pipelines if p], subs


def _skip_heredocs(text: str, i: int, heredocs: list[tuple[str, bool]]) -> int:
    """Skip heredoc bodies (data, not commands) that start at ``i``."""
    for delim, strip_tabs in heredocs:
        while i < len(text):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            line = text[i:end]
            i = end + 1
            if (line.lstrip("\t") if strip_tabs else line) == delim:
                break
    return i


def _words(segment: str) -> list[str]:
    # shlex is quadratic on long words (it grows each token one character at a time), so
    # very long segments (inline scripts) get the rough split bash-invalid input gets.
    if len(segment) <= _SHLEX_MAX_CHARS:
        try:
            return shlex.split(segment)
        except ValueError:  # unbalanced quotes: bash would refuse it too
            pass
    return re.sub(r"[\"']", "", segment).split()


def _chain(words: Sequence[str], piped_in: bool) -> list[_Inv]:
    """The command at command position, and the commands its wrappers run."""
    redirected = any(
        _REDIR_RE.fullmatch(w) and w.lstrip("0123456789").startswith("<") for w in words
    )
    chain: list[_Inv] = []
    loop, i = False, 0
    while i < len(words):
        w = words[i]
        if w in _KEYWORDS:
            loop = loop or w in ("while", "until")
            i += 1
            continue
        redir = _REDIR_RE.fullmatch(w)
        if _ASSIGN_RE.match(w) or redir:
            i += 1 if not redir or redir.group(1) else 2
            continue
        name = w.rstrip("/").rsplit("/", 1)[-1] or w
        chain.append(_Inv(name, tuple(words[i + 1 :]), piped_in, redirected, loop))
        spec = _WRAPPERS.get(name)
        if spec is None:
            break
        takes_value, positional = spec
        i += 1
        while i < len(words) and (
            words[i].startswith("-") or (name == "env" and _ASSIGN_RE.match(words[i]))
        ):
            if words[i] == "--":
                i += 1
                break
            if name == "command" and words[i] in ("-v", "-V"):
                return chain  # a lookup, not a run
            i += 2 if words[i] in takes_value.split() else 1
        i += positional
    return chain


def _payloads(inv: _Inv) -> list[str]:
    """Texts a shell, ``su -c`` or ``eval`` will run as commands."""
    if inv.name == "eval":
        return [" ".join(inv.args)] if inv.args else []
    if inv.name not in SHELLS and inv.name != "su":
        return []
    args = inv.args
    for j, a in enumerate(args):
        if a.startswith("--command="):
            return [a.split("=", 1)[1]]
        is_c = a == "--command" or (a.startswith("-") and not a.startswith("--") and "c" in a[1:])
        if is_c:
            rest = [x for x in args[j + 1 :] if not x.startswith("-")]
            return rest[:1]
        if (
            inv.name != "su"
            and not a.startswith(("-", "+"))
            and args[j - 1 : j] not in (("-o",), ("+o",))
        ):
            return []  # a script path: its text is not ours to read
    return []


def _parse(text: str, ids: Iterator[int], depth: int = 0) -> _Parsed:
    pipes, subs = _split(text, ids)
    pipelines = [[_chain(_words(seg), k > 0) for k, seg in enumerate(p)] for p in pipes]
    parsed = _Parsed(pipelines, too_deep=depth >= _MAX_DEPTH)
    if not parsed.too_deep:
        parsed.subs = {key: _parse(inner, ids, depth + 1) for key, inner in subs.items()}
        parsed.payloads = [
            _parse(pl, ids, depth + 1)
            for pipe in pipelines
            for chain in pipe
            for inv in chain
            for pl in _payloads(inv)
        ]
    return parsed


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


def _runs_stdin(inv: _Inv) -> bool:
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


def _downloads(parsed: _Parsed) -> bool:
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
        parsed = _parse(command, itertools.count())
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


def _hard_deny(command: str, parsed: _Parsed) -> str | None:
    low = command.lower()
    for sock in ENGINE_SOCKETS:
        if sock in low:
            return f"mentions the container engine socket {sock!r}"
    if any(part.too_deep for part in parsed.walk()):
        return f"substitutions or sh -c payloads nested more than {_MAX_DEPTH} levels deep"
    if _fork_bomb(command):
        return "fork bomb: a function that pipes itself into itself in the background"
    for inv in parsed.invocations():
        if inv.name in HARD_DENY_COMMANDS:
            return f"`{inv.name}` {HARD_DENY_COMMANDS[inv.name]}"
        if inv.name == "rm" and _rm_root(inv.args):
            return "`rm -r` of the root or home directory"
    return None


def _safe_mode(parsed: _Parsed, stage: str) -> str | None:
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


def _interactive(parsed: _Parsed) -> str | None:
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
