"""The evaluation audit: is the score something this run computed?

Judged from the runner's own records, not from what the stage says about itself: the
commands the runner executed, the shell trace of the stage's bash scripts, and the text
of the scripts the evaluation commands name. One finding so far, chosen because it is
the cheat the predecessor's audit was meant to catch and missed whenever the literal
sat outside ``evaluation.sh``:

* ``audit.hard_coded_score``: the reported score appears as a literal next to the
  metrics file on one line of what ran (``echo '{"score": 0.93}' > metrics.json``,
  ``json.dump({"score": 1.0}, open("metrics.json", "w"))``).

It is a heuristic with a narrow trigger (literal + metrics file on the same line), so a
computed score that happens to equal an initial value is not flagged; a determined
cheat can still assemble the number at run time. ``audit="warn-only"`` records findings
without failing; ``audit="off"`` skips the audit.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

SCRIPT_LIMIT = 1_000_000
"""Bytes of each named script read for the audit."""


def _score_forms(score: float) -> list[str]:
    forms = {repr(score), str(score)}
    if float(score).is_integer():
        forms |= {str(int(score)), f"{int(score)}.0"}
    if 0 < abs(score) < 1:
        forms.add(repr(score).replace("0.", ".", 1))
    return sorted(forms, key=len, reverse=True)


def _literal_re(score: float) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(f) for f in _score_forms(score))
    return re.compile(rf"""["']?score["']?\s*[:=]\s*(?:{alternatives})(?![0-9.])""")


def scripts_named(commands: Iterable[str], repo_root: Path) -> list[tuple[str, str]]:
    """(path, text) of repo files the evaluation commands name (``bash .aider_fsm/stages/x.sh``)."""
    found: list[tuple[str, str]] = []
    root = repo_root.resolve()
    for cmd in commands:
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = cmd.split()
        for word in words:
            if word.startswith("-") or ("/" not in word and not word.endswith((".sh", ".py"))):
                continue
            path = (root / PurePosixPath(word.removeprefix("./"))).resolve()
            if root not in path.parents or not path.is_file():
                continue
            with open(path, "rb") as fh:
                found.append((word, fh.read(SCRIPT_LIMIT).decode("utf-8", errors="replace")))
    return found


def audit_evaluation(
    metrics: Mapping[str, Any],
    *,
    metrics_rel: str,
    executed: Sequence[str],
    scripts: Sequence[tuple[str, str]],
) -> list[str]:
    """Findings (empty when nothing looks wrong)."""
    score = metrics.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return []
    literal = _literal_re(float(score))
    target = PurePosixPath(metrics_rel).name
    sources = [("executed command", line) for line in executed]
    for name, text in scripts:
        sources.extend((f"{name}:{n}", line) for n, line in enumerate(text.splitlines(), 1))
    for where, line in sources:
        if target in line and literal.search(line):
            return [
                f"audit.hard_coded_score: score {score} is written as a literal next to "
                f"{target} ({where}: {line.strip()[:200]}); a score must be computed by the run"
            ]
    return []
