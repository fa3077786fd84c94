"""A session whose bootstrap builds a venv and pip-installs a real package: cold vs warm.

Run: ``python -m benchmarks.bootstrap_cache`` (part of ``make bench``); ``--quick`` for
n=2. Both sides are a full ``setup() -> evaluate()`` of the same target with
``cache="on"``. Cold: a key never seen (a comment line with a fresh nonce in
``requirements.txt`` changes the hash), so bootstrap runs (venv + ``pip install`` from
PyPI) and the snapshot is committed. Warm: the key of a snapshot saved before timing,
so the session starts from it and skips bootstrap. Target: warm/cold <= 0.1 (warm at
least 10x faster). Needs PyPI reachable from the sandbox (bootstrap's egress network).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import runner_env
from benchmarks.common import Comparison, Stats, parse_runs, report_comparison, run_interleaved
from sandbox.snapshots import LABEL_SNAPSHOT_KEY, prune_snapshots

NAME = "bootstrap_cache"
PACKAGE = "requests==2.32.3"

PIPELINE = """\
version: 1
evaluation:
  run_cmds:
    - .aider_fsm/venv/bin/python .aider_fsm/score.py
  metrics_path: .aider_fsm/metrics.json
  required_keys: [score, ok]
"""

BOOTSTRAP = """\
version: 1
cmds:
  - python3 -m venv .aider_fsm/venv
  - .aider_fsm/venv/bin/pip install -q -r requirements.txt
"""

SCORE = """\
import json
import requests

json.dump({"ok": True, "score": float(bool(requests.__version__))}, open(".aider_fsm/metrics.json", "w"))
"""


def make_target(root: Path, nonce: str) -> Path:
    repo = root / f"target-{nonce}"
    (repo / ".aider_fsm").mkdir(parents=True)
    (repo / "pipeline.yml").write_text(PIPELINE)
    (repo / ".aider_fsm" / "bootstrap.yml").write_text(BOOTSTRAP)
    (repo / ".aider_fsm" / "score.py").write_text(SCORE)
    (repo / "requirements.txt").write_text(f"# {nonce}\n{PACKAGE}\n")
    return repo


def session(repo: Path) -> dict[str, object]:
    """One full session; returns its bootstrap_cache event."""
    sess = runner_env.setup(repo, cache="on", audit="off")
    try:
        res = sess.evaluate(llm="bench-model", repair_iters=0)
    finally:
        sess.close()
    if not res.ok:
        raise RuntimeError(f"session failed: {res.reason}")
    events = (sess.artifacts_dir / "events.jsonl").read_text().splitlines()
    return next(e for e in map(json.loads, events) if e["kind"] == "bootstrap_cache")


def main(argv: Sequence[str] | None = None) -> int:
    _, n = parse_runs(NAME, argv, quick=2, full=4)
    keys: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fsm-bench-cache-") as tmp:
        base = Path(tmp)
        warm_repo = make_target(base, "warm")
        first = session(warm_repo)  # saves the warm key (or finds it from an earlier run)
        keys.append(str(first["key"]))

        def cold() -> None:
            event = session(make_target(base, uuid.uuid4().hex[:12]))
            if event["hit"]:
                raise RuntimeError("a fresh key hit the cache")
            keys.append(str(event["key"]))

        def warm() -> None:
            if not session(warm_repo)["hit"]:
                raise RuntimeError("the warm key missed the cache")

        try:
            timings = run_interleaved({"warm": warm, "cold": cold}, n, warmup=0)
        finally:
            for key in keys:
                prune_snapshots(keep=0, label=f"{LABEL_SNAPSHOT_KEY}={key}")
    comp = Comparison(
        name="bootstrap_cache",
        ours_label="warm: setup + evaluate, starting from the bootstrap snapshot",
        baseline_label=f"cold: the same session running bootstrap (venv + pip install {PACKAGE})",
        ours=Stats(tuple(timings["warm"])),
        baseline=Stats(tuple(timings["cold"])),
        target=0.1,
        notes=("cold includes committing the snapshot; both include container start/stop",),
    )
    report_comparison(NAME, f"bootstrap cache (median of {n}, interleaved)", comp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
