"""Every fenced code block in docs/*.md and README.md is run or checked, so docs cannot rot.

Blocks of one page run in order in one work dir (``tmp_path/work``, holding a copy of
``examples/tiny``), with ``.venv/bin`` first on PATH and ``CI=true``:

- ``python``: run in a subprocess; must exit 0.
- ``bash``: run with ``set -eo pipefail``, but only when every command is known to be
  safe here (``fsm-runner`` run/validate/schema/init/runs/show/images list|build, and
  file basics); anything else must be marked.
- ``yaml <file>`` / ``json <file>`` / ``jsonl <file>``: written to a scratch repo and
  checked by the runner's own loaders and validators (``... invalid`` must be refused).
- A block preceded by ``<!-- not-run: reason -->`` is illustrative; those are counted
  and must stay few.

``/path/to/repo`` in a block stands for the copy of ``examples/tiny``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.contract import (
    RolloutManifest,
    load_actions,
    load_bootstrap,
    load_pipeline,
    load_runtime_env,
    validate_hints_run,
    validate_hints_used,
    validate_metrics,
    validate_samples_jsonl,
)
from runner.errors import ContractError
from tests.contract_repos import copy_example

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
MAX_NOT_RUN = 12
PLACEHOLDERS = {"/path/to/repo": "examples/tiny"}
SAFE_COMMANDS = {"cat", "cd", "cp", "echo", "grep", "head", "ls", "mkdir", "printf", "python3"}
SAFE_FSM = {
    *("run", "validate", "schema", "init", "runs", "show", "images list", "images build"),
    *("verify", "replay", "manifest-schema"),
}
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    hint: str
    code: str
    not_run: str | None

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.lang} {self.hint})".strip()


def blocks(page: Path) -> list[Block]:
    """Fenced blocks at the start of a line (indented ones are not fences here)."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        info = lines[i][3:].strip().split(maxsplit=1)
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = [ln.strip() for ln in lines[: start - 1] if ln.strip()]
        marker = _NOT_RUN.match(before[-1]) if before else None
        lang, hint = (info[0], info[1] if len(info) > 1 else "") if info else ("", "")
        code = "\n".join(body) + "\n"
        found.append(Block(page.name, start, lang, hint, code, marker[1] if marker else None))
        i += 1
    return found


def _needs_engine(page: Path) -> bool:
    runnable = [b for b in blocks(page) if b.not_run is None]
    return any(
        (b.lang == "bash" and "fsm-runner run" in b.code)
        or (b.lang == "python" and ("rollout(" in b.code or "evaluate(" in b.code))
        for b in runnable
    )


def _params() -> list[object]:
    return [
        pytest.param(p, id=p.name, marks=[pytest.mark.docker] if _needs_engine(p) else [])
        for p in PAGES
    ]


def _unsafe(code: str) -> str | None:
    """The first command that is not known to be safe to run in a test, or None."""
    for line in code.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in (";", "&&", "||", "|", "&"):
                command.append(token)
                continue
            if command and not _safe(command):
                return " ".join(command)
            command = []
    return None


def _safe(words: list[str]) -> bool:
    if words[0] in SAFE_COMMANDS:
        return True
    sub = [w for w in words[1:3] if not w.startswith("-")]
    return (
        words[0] == "fsm-runner" and bool(sub) and (sub[0] in SAFE_FSM or " ".join(sub) in SAFE_FSM)
    )


def _check_file(block: Block, scratch: Path) -> None:
    """Write a yaml/json(l) block where its hint says and run the matching check."""
    name, _, expect = block.hint.partition(" ")
    if not name:
        raise AssertionError(f"{block}: name the file after the language, or mark it not-run")
    path = scratch / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.code)
    checks: dict[str, Callable[[], object]] = {
        "pipeline.yml": lambda: load_pipeline(path),
        "bootstrap.yml": lambda: load_bootstrap(path),
        "actions.yml": lambda: load_actions(path),
        "runtime_env.json": lambda: load_runtime_env(path),
        "rollout.json": lambda: RolloutManifest.model_validate_json(path.read_text()),
        "metrics.json": lambda: validate_metrics(path, ["ok", "score"]),
        "hints_used.json": lambda: validate_hints_used(path, []),
        "hints_run.json": lambda: validate_hints_run(path),
        "events.jsonl": lambda: [json.loads(ln)["kind"] for ln in block.code.splitlines()],
    }
    check: Callable[[], object] | None = checks.get(path.name)
    if check is None and path.suffix == ".jsonl":
        check = lambda: validate_samples_jsonl(path)  # noqa: E731
    if check is None:
        raise AssertionError(f"{block}: no check for a file named {path.name}")
    if expect == "invalid":
        with pytest.raises(ContractError):
            check()
    else:
        assert expect == "", f"{block}: unknown expectation {expect!r}"
        check()


@pytest.mark.parametrize("page", _params())
def test_every_code_block_runs(page: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    copy_example("tiny", work / "examples" / "tiny")
    env = {
        **os.environ,
        "CI": "true",
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    for n, block in enumerate(blocks(page)):
        if block.not_run is not None:
            continue
        code = block.code
        for placeholder, value in PLACEHOLDERS.items():
            code = code.replace(placeholder, value)
        if block.lang == "python":
            script = tmp_path / f"block_{n}.py"
            script.write_text(code)
            cmd = [str(ROOT / ".venv" / "bin" / "python"), str(script)]
        elif block.lang == "bash":
            unsafe = _unsafe(code)
            assert unsafe is None, f"{block}: {unsafe!r} is not safe to run here; mark it not-run"
            cmd = ["bash", "-c", "set -eo pipefail\n" + code]
        elif block.lang in ("yaml", "json", "jsonl"):
            _check_file(block, tmp_path / f"scratch_{n}")
            continue
        else:
            raise AssertionError(f"{block}: unknown language {block.lang!r}; mark it not-run")
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, (
            f"{block} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )


def test_illustrative_blocks_are_few_and_say_why() -> None:
    marked = [b for p in PAGES for b in blocks(p) if b.not_run is not None]
    assert len(marked) <= MAX_NOT_RUN, "\n".join(f"{b}: {b.not_run}" for b in marked)
    assert all(len(b.not_run or "") >= 8 for b in marked), "say why a block is not run"


def test_pages_are_linked_and_every_page_has_runnable_blocks() -> None:
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    for name in ("quickstart.md", "pipeline.md", "bootstrap.md", "outputs.md", "api.md",
                 "cli.md", "migrating.md"):  # fmt: skip
        assert name in docs
        assert any(b.not_run is None for b in blocks(ROOT / "docs" / name)), name
    index = (ROOT / "docs" / "quickstart.md").read_text()
    for name in docs:
        assert name == "quickstart.md" or f"({name})" in index, f"quickstart does not link {name}"
