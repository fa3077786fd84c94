"""`make demo`: run the tiny example contract end to end inside a container.

The example is copied to `.cache/demo/tiny` first, so its outputs and run dir do not
dirty the repository; the paths printed at the end point there.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import runner_env
from runner.session.results import VerificationResult

ROOT = Path(__file__).resolve().parent.parent
STAGES = (
    "bootstrap",
    "auth",
    "tests",
    "deploy_setup",
    "deploy_health",
    "rollout",
    "evaluation",
    "benchmark",
    "deploy_teardown",
)


def show(verify: VerificationResult) -> None:
    for name in STAGES:
        stage = getattr(verify, name, None)
        if stage is None:
            continue
        print(f"\n== {name} (network={stage.network}, ok={stage.ok})")
        for cmd in stage.results:
            print(f"$ {cmd.cmd}   -> rc={cmd.rc} in {cmd.duration_s:.2f}s")
            for line in (cmd.stdout + cmd.stderr).strip().splitlines()[-6:]:
                print(f"    {line}")


def main() -> int:
    work = ROOT / ".cache" / "demo" / "tiny"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(ROOT / "examples" / "tiny", work)
    sess = runner_env.setup(work, progress=lambda m: print(f"· {m}", flush=True))
    roll = sess.rollout(llm="demo-model", mode="smoke", require_samples=True, repair_iters=0)
    show(roll.verify)
    if not roll.ok:
        sess.close()
        print(f"\nrollout failed at {roll.failed_stage}: {roll.reason}")
        return 1
    res = sess.evaluate(mode="smoke", repair_iters=0)
    show(res.verify)
    print(f"\nok={res.ok}  metrics={res.metrics}")
    print(f"samples: {roll.samples}  run dir: {sess.artifacts_dir}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
