"""What a command's output says about its score: test counts, metrics files, printed text.

Used by ``runner.helpers.generic_evaluation`` inside the sandbox: standard library only. Generic
on purpose: pytest/unittest/mocha/jest summaries, any fresh JSON with a pass@1 /
accuracy / score key, or such a key printed; never one benchmark's output format.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "fresh_json_score",
    "parse_test_counts",
    "scan_json",
    "score_from_json",
    "score_from_text",
]

MAX_SCAN_FILES = 5000
"""Files looked at when searching for fresh metrics JSON (bounded walk)."""
MAX_JSON_BYTES = 16_000_000
"""Metrics files larger than this are not parsed."""
_SKIP_DIRS = {".git", ".aider_fsm", "node_modules", ".venv", "venv", ".tox", ".nox", "__pycache__"}


def parse_test_counts(text: str) -> tuple[int, int] | None:
    """(passed, total) from the last pytest / unittest / mocha / jest summary in ``text``."""
    found: tuple[int, int] | None = None
    for line in text.splitlines():
        if re.search(r"\b\d+ (?:passed|failed|errors?)\b", line) and " in " in line:
            n = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?)\b", line)}
            bad = n.get("failed", 0) + n.get("error", 0) + n.get("errors", 0)
            found = (n.get("passed", 0), n.get("passed", 0) + bad)
        elif m := re.match(r"^Tests:\s+(.*\d+ total)", line.strip()):
            n = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed)", m.group(1))}
            found = (n.get("passed", 0), n.get("passed", 0) + n.get("failed", 0))
    if m2 := list(
        re.finditer(r"^Ran (\d+) tests? in .*?\n\s*\n?(OK|FAILED)(?: \((.*)\))?", text, re.M)
    ):
        last = m2[-1]
        extra = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last.group(3) or "")}
        ran = int(last.group(1)) - extra.get("skipped", 0)
        found = (ran - extra.get("failures", 0) - extra.get("errors", 0), ran)
    passing = re.findall(r"^\s*(\d+) passing\b", text, re.M)
    if passing and not found:
        failing = re.findall(r"^\s*(\d+) failing\b", text, re.M)
        found = (int(passing[-1]), int(passing[-1]) + (int(failing[-1]) if failing else 0))
    return found if found and found[1] > 0 else None


def _unit_score(value: float) -> float | None:
    """A score in [0, 1]: fractions as they are, percentages scaled."""
    if 0.0 <= value <= 1.0:
        return value
    return value / 100.0 if 1.0 < value <= 100.0 else None


_SCORE_KEYS = (
    re.compile(r"pass@1\b|pass_at_1\b"),
    re.compile(r"^(?:acc|accuracy|exact_match)(?:,|$|_norm)"),
    re.compile(r"(?:^|_)score$"),
)


def score_from_json(data: Any) -> float | None:
    """The first pass@1, then accuracy, then score value anywhere in a JSON document."""
    for key_re in _SCORE_KEYS:
        stack = [data]
        while stack:
            item = stack.pop(0)
            if isinstance(item, dict):
                for key, value in item.items():
                    k = str(key).lower()
                    numeric = isinstance(value, int | float) and not isinstance(value, bool)
                    if numeric and key_re.search(k) and "stderr" not in k:
                        s = _unit_score(float(value))
                        if s is not None:
                            return s
                    stack.append(value)
            elif isinstance(item, list):
                stack.extend(item[:1000])
    return None


def score_from_text(text: str) -> float | None:
    """The last ``pass@1 / accuracy / score: N`` printed (``N%``, ``N/M``, ``N of M`` too)."""
    found = re.findall(
        r"\b(?:pass@1\+?|pass_at_1|accuracy|exact_match|score)['\"]?\s*[:=]\s*"
        r"(\d+(?:\.\d+)?|\.\d+)(\s*%|\s*(?:/|of)\s*\d+)?",
        text,
        re.IGNORECASE,
    )
    for value, tail in reversed(found):
        tail = tail.strip()
        if tail == "%":
            score: float | None = float(value) / 100.0
        elif tail:
            total = float(re.sub(r"^(?:/|of)\s*", "", tail))
            score = float(value) / total if total > 0 else None
        else:
            score = _unit_score(float(value))
        if score is not None and 0.0 <= score <= 1.0:
            return score
    return None


def scan_json(repo: Path) -> dict[Path, tuple[int, int]]:
    """Candidate metrics files (name mentions metric/result/score/summary/eval) and stamps."""
    out: dict[Path, tuple[int, int]] = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        if len(Path(dirpath).relative_to(repo).parts) > 5:
            dirnames[:] = []
        for name in filenames:
            seen += 1
            if name.endswith(".json") and re.search(
                r"metric|result|score|summary|eval", name, re.I
            ):
                path = Path(dirpath, name)
                try:
                    st = path.stat()
                except OSError:
                    continue
                out[path] = (st.st_mtime_ns, st.st_size)
        if seen > MAX_SCAN_FILES:
            break
    return out


def fresh_json_score(before: Mapping[Path, tuple[int, int]], repo: Path) -> float | None:
    """Score from a metrics-like JSON file the command created or changed."""
    for path, stamp in sorted(scan_json(repo).items()):
        if before.get(path) == stamp or stamp[1] > MAX_JSON_BYTES:
            continue
        try:
            score = score_from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        if score is not None:
            return score
    return None
