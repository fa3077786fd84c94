"""Where official commands are found: README/docs fences, CI steps, tox, nox, Make, npm.

Each reader yields :class:`Hint` objects with their source; which lines count as a
test/evaluation command is ``hint_lines``'s call. Generic on purpose (notes/predecessor.md
6.1 and 14.5): file formats, never rules tuned to one project.

Standard library only at module level (imported inside the sandbox through
``runner.trust.hints``); PyYAML is imported lazily for CI files, which are read on the host.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runner.trust.hint_lines import (
    Hint,
    is_interesting,
    is_setup_only,
    logical_lines,
    looks_like_command,
)

MAX_DOC_FILES = 8
MAX_DOC_CHARS = 200_000
MAX_CI_FILES = 8
MAX_FILE_BYTES = 1_000_000

_TASK_NAME = re.compile(r"(?:tests?|check|evals?|evaluate|evaluation|bench|benchmarks?)")
_TEST_STEP = re.compile(r"\b(?:tests?|eval\w*|bench\w*)\b", re.IGNORECASE)
_SHELL_LANGS = frozenset({"", "bash", "sh", "shell", "zsh", "console", "terminal", "cmd"})
_PROMPT_ONLY_LANGS = frozenset({"console", "terminal", "shell-session", "sh-session"})
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*\{?\.?([\w+-]*)")
_RST_CODE = re.compile(r"^(\s*)\.\.\s+(?:code-block|code|sourcecode)::\s*([\w+-]*)\s*$")
_GH_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def read_text(path: Path, limit: int = MAX_FILE_BYTES, *, root: Path | None = None) -> str:
    """At most ``limit`` bytes as text; "" when unreadable or (with ``root``) when a link
    leads outside ``root``: extraction runs on the host and must not read its files."""
    try:
        if root is not None and not path.resolve().is_relative_to(root.resolve()):
            return ""
        with path.open("rb") as fh:
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _markdown_blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(first line number, language, lines) of fenced blocks; blockquote markers removed."""
    fence, lang, start, body = "", "", 0, list[str]()
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"^\s*(?:>\s?)+", "", raw)
        stripped = line.strip()
        if not fence:
            m = _FENCE.match(stripped)
            if m:
                fence, lang, start, body = m.group(1), m.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and not stripped.strip(fence[0]):
            yield start, lang, body
            fence = ""
        else:
            body.append(line)


def _rst_blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _RST_CODE.match(line)
        if not m:
            continue
        indent, body = len(m.group(1)), list[str]()
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            option = nxt.strip().startswith(":") and not any(b.strip() for b in body)
            body.append("" if option else nxt)  # options blanked: line numbers stay right
        yield i + 2, m.group(2).lower(), body


def _doc_hints(root: Path, path: Path) -> Iterator[Hint]:
    text = read_text(path, root=root)[:MAX_DOC_CHARS]
    blocks = _rst_blocks(text) if path.suffix == ".rst" else _markdown_blocks(text)
    rel = path.relative_to(root).as_posix()
    for start, lang, body in blocks:
        if lang not in _SHELL_LANGS and lang not in _PROMPT_ONLY_LANGS:
            continue
        for offset, cmd in logical_lines(body, prompt_only=lang in _PROMPT_ONLY_LANGS):
            if looks_like_command(cmd) and is_interesting(cmd):
                yield Hint(cmd, f"{rel}:{start + offset}")


def _doc_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    readmes = sorted(
        p
        for p in root.iterdir()
        if p.name.lower().startswith("readme") and p.suffix.lower() in (".md", ".rst", "")
    )
    docs = root / "docs"
    more = sorted(
        p
        for ext in ("*.md", "*.rst")
        for p in (docs.rglob(ext) if docs.is_dir() else ())
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    return [p for p in [*readmes, *more] if p.is_file()][:MAX_DOC_FILES]


def _load_yaml(path: Path, root: Path) -> Any:
    try:
        import yaml  # lazy: the sandbox image may not have PyYAML; extraction runs on the host
    except ImportError:
        return None
    try:
        return yaml.safe_load(read_text(path, root=root))
    except yaml.YAMLError:
        return None


def _matrix_pick(matrix: Any, python: str) -> dict[str, str]:
    """One matrix combination: the entry matching ``python`` where a key names Python."""
    if not isinstance(matrix, dict):
        return {}

    def pythonish(key: str) -> bool:
        return "python" in key.lower() or key.lower() == "py"

    pick: dict[str, str] = {}
    for key, values in matrix.items():
        if key in ("include", "exclude") or not isinstance(values, list) or not values:
            continue
        strs = [str(v) for v in values if not isinstance(v, dict | list)]
        if strs:
            pick[str(key)] = python if pythonish(str(key)) and python in strs else strs[0]
    entries = [e for e in matrix.get("include") or [] if isinstance(e, dict)]
    matching = [
        e for e in entries if any(pythonish(str(k)) and str(v) == python for k, v in e.items())
    ]
    if entries:
        pick.update({str(k): str(v) for k, v in (matching or entries)[0].items()})
    return pick


def _resolve_ci_expr(cmd: str, matrix: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("matrix."):
            return matrix.get(expr[len("matrix.") :], "")
        return "$" + expr[4:] if expr.startswith("env.") else ""

    return _GH_EXPR.sub(sub, cmd).strip()


def _script_hints(script: str, source: str, *, keep_all: bool, cwd: str = "") -> Iterator[Hint]:
    """Hints from one CI script: interesting lines (all non-setup lines in a test step)."""
    for _, line in logical_lines(script.splitlines()):
        if re.fullmatch(r"cd\s+\S+", line):
            cwd = line[3:].strip()
            continue
        wanted = is_interesting(line) or (keep_all and looks_like_command(line))
        if wanted and not is_setup_only(line):
            yield Hint(f"cd {cwd} && {line}" if cwd else line, source)


def _workflow_hints(root: Path, python: str) -> Iterator[Hint]:
    wf = root / ".github" / "workflows"
    files = sorted([*wf.glob("*.yml"), *wf.glob("*.yaml")]) if wf.is_dir() else []
    for path in files[:MAX_CI_FILES]:
        data = _load_yaml(path, root)
        jobs = data.get("jobs") if isinstance(data, dict) else None
        for job in (jobs or {}).values() if isinstance(jobs, dict) else ():
            if not isinstance(job, dict):
                continue
            matrix = _matrix_pick((job.get("strategy") or {}).get("matrix"), python)
            for step in job.get("steps") or []:
                if not isinstance(step, dict) or not isinstance(step.get("run"), str):
                    continue
                named = str(step.get("name") or "")  # a job name is too broad a signal
                cwd = step.get("working-directory")
                for hint in _script_hints(
                    step["run"],
                    path.relative_to(root).as_posix(),
                    keep_all=bool(_TEST_STEP.search(named)),
                    cwd=cwd if isinstance(cwd, str) else "",
                ):
                    yield Hint(_resolve_ci_expr(hint.command, matrix), hint.source)


def _gitlab_hints(root: Path) -> Iterator[Hint]:
    path = root / ".gitlab-ci.yml"
    data = _load_yaml(path, root) if path.is_file() else None
    for name, job in data.items() if isinstance(data, dict) else ():
        script = job.get("script") if isinstance(job, dict) else None
        lines = [script] if isinstance(script, str) else script
        if isinstance(lines, list):
            text = "\n".join(s for s in lines if isinstance(s, str))
            yield from _script_hints(text, ".gitlab-ci.yml", keep_all=bool(_TEST_STEP.search(name)))


def _tox_hints(root: Path) -> Iterator[Hint]:
    path = root / "tox.ini"
    if not path.is_file():
        return
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(read_text(path, root=root))
    except configparser.Error:
        return
    known = {"toxinidir": ".", "envpython": "python", "posargs": ""}
    for section in parser.sections():
        if section != "testenv" and not section.startswith("testenv:"):
            continue
        lines = parser.get(section, "commands", fallback="").splitlines()
        for _, cmd in logical_lines(lines):
            cmd = re.sub(r"\{posargs:([^{}]*)\}", r"\1", cmd.lstrip("- "))
            cmd = re.sub(r"\{(\w+)\}", lambda m: known.get(m.group(1), "{?}"), cmd)
            cmd = " ".join(t for t in cmd.split() if "{?}" not in t)
            if is_interesting(cmd):
                yield Hint(cmd, "tox.ini")


def _nox_hints(root: Path) -> Iterator[Hint]:
    path = root / "noxfile.py"
    try:
        tree = ast.parse(read_text(path, root=root)) if path.is_file() else None
    except SyntaxError:
        return
    sessions: list[str] = []
    calls: list[tuple[int, str]] = []
    for node in ast.walk(tree) if tree else ():
        if (
            isinstance(node, ast.FunctionDef)
            and _TASK_NAME.fullmatch(node.name)
            and any("session" in ast.unparse(d) for d in node.decorator_list)
        ):
            sessions.append(node.name)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"
            and ast.unparse(node.func.value).endswith("session")
        ):
            # Only literal arguments: computed ones (*posargs, f-strings) are dropped.
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if args and all(isinstance(a, str) for a in args):
                calls.append((node.lineno, shlex.join(str(a) for a in args)))
    for _, cmd in sorted(calls):
        if is_interesting(cmd):
            yield Hint(cmd, "noxfile.py")
    for name in sessions:
        yield Hint(f"nox -s {name}", "noxfile.py")


def _task_hints(root: Path) -> Iterator[Hint]:
    for name in ("Makefile", "makefile", "GNUmakefile"):
        for line in read_text(root / name, root=root).splitlines():
            m = re.match(r"^([A-Za-z][\w.-]*)\s*::?(?!=)", line)
            if m and _TASK_NAME.fullmatch(m.group(1)):
                yield Hint(f"make {m.group(1)}", name)
    try:
        package = json.loads(read_text(root / "package.json", root=root) or "{}")
    except ValueError:
        return
    scripts = package.get("scripts") if isinstance(package, dict) else None
    for name, body in scripts.items() if isinstance(scripts, dict) else ():
        if name == "test" and "no test specified" not in str(body):
            yield Hint("npm test", "package.json")
        elif _TASK_NAME.fullmatch(name) and name != "test":
            yield Hint(f"npm run {name}", "package.json")


def iter_hints(root: Path, python: str) -> Iterator[Iterator[Hint]]:
    """Readers in priority order: docs first (the predecessor's order), then CI and tasks."""
    for path in _doc_files(root):
        yield _doc_hints(root, path)
    yield _workflow_hints(root, python)
    yield _gitlab_hints(root)
    yield _tox_hints(root)
    yield _nox_hints(root)
    yield _task_hints(root)
