"""Shell text read as commands: which words sit at command position, and what they run.

:func:`parse` cuts a command line the way bash would read it, without running anything:
quotes (resolved with :mod:`shlex`), comments, line continuations, heredocs (their bodies
are data and skipped), pipelines and lists (``;``, ``&&``, ``||``, ``|``, ``&``,
newlines, ``(``), substitutions (``$(...)``, backticks, ``<(...)``, ``>(...)``, each
parsed on its own), and the commands that wrappers (``sudo``, ``env``, ``timeout``,
``xargs``, ...) and ``sh -c``/``su -c``/``eval`` payloads run. It never raises:
unbalanced input is read to its end.
The rules that judge the result live in :mod:`runner.trust.policy`.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish"})
_KEYWORDS = frozenset(
    {"!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until"}
)
_ASSIGN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
_REDIR_RE = re.compile(r"\d*(?:&>>?|[<>]&|>>?\|?|<<<|<<-?|<>|<)(.*)", re.S)
_HEREDOC_RE = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|<>()]+))")
_PLAIN_RUN_RE = re.compile(r"[^\\`$<>'\"#\n;&|() \t]+")
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
MAX_DEPTH = 16
"""Deeper nesting of substitutions/payloads is refused: it only serves to hide a command."""


@dataclass(frozen=True)
class Invocation:
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
class Parsed:
    """One shell text: its pipelines, and the texts it runs parsed in turn."""

    pipelines: list[list[list[Invocation]]]  # pipeline -> simple command -> wrapper chain
    subs: dict[str, Parsed] = field(default_factory=dict)  # placeholder -> $(...) etc.
    payloads: list[Parsed] = field(default_factory=list)  # sh -c / su -c / eval texts
    too_deep: bool = False

    def walk(self) -> Iterator[Parsed]:
        yield self
        for child in (*self.subs.values(), *self.payloads):
            yield from child.walk()

    def invocations(self) -> Iterator[Invocation]:
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


def _chain(words: Sequence[str], piped_in: bool) -> list[Invocation]:
    """The command at command position, and the commands its wrappers run."""
    redirected = any(
        _REDIR_RE.fullmatch(w) and w.lstrip("0123456789").startswith("<") for w in words
    )
    chain: list[Invocation] = []
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
        chain.append(Invocation(name, tuple(words[i + 1 :]), piped_in, redirected, loop))
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


def _payloads(inv: Invocation) -> list[str]:
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


def parse(text: str) -> Parsed:
    """Read ``text`` as bash would, down to :data:`MAX_DEPTH` levels of nesting."""
    return _parse(text, itertools.count())


def _parse(text: str, ids: Iterator[int], depth: int = 0) -> Parsed:
    pipes, subs = _split(text, ids)
    pipelines = [[_chain(_words(seg), k > 0) for k, seg in enumerate(p)] for p in pipes]
    parsed = Parsed(pipelines, too_deep=depth >= MAX_DEPTH)
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
