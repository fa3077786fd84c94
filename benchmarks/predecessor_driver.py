"""The baseline of ``benchmarks.run_process``: a contract run the way the predecessor ran it.

Run as its own process (``python benchmarks/predecessor_driver.py REPO``), so the figure
includes Python's start-up and the driver's imports, as ``fsm-runner run`` does. It
keeps to what the predecessor did with no isolation (shared/notes/predecessor.md
sections 1.3, 1.4, 3.1, 11), in the predecessor's dependencies (stdlib + PyYAML):

* ``rollout()``: a deploy pass (bootstrap, ``tests`` as ``echo tests_skipped`` when the
  pipeline has tests, deploy.setup, deploy.health), ``runtime_env.json`` read back, then
  a rollout pass (bootstrap again, rollout) and the samples JSONL check;
* ``evaluate()``: the fast path (bootstrap again, evaluation), ``metrics.json`` checked
  for the required keys and ``ok is true``, then the final ``deploy.teardown``.

Every command runs with ``subprocess.run(cmd, shell=True)`` in the repo on the host, its
output captured and written as ``<stage>_cmdCC_tryTT_{cmd,stdout,stderr}.txt`` and
``_result.json`` under ``.aider_fsm/artifacts/<run_id>/env_api/``, as the predecessor did.
It prints one JSON line (ok, score), as ``fsm-runner run --json`` does. Standard library
and PyYAML only: it must not import the runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

STRICT_ENV = {
    "CI": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}


def _cmds(section: dict[str, Any] | None, plural: str, singular: str) -> list[str]:
    if not section:
        return []
    if section.get(plural):
        return [str(c).strip() for c in section[plural]]
    one = section.get(singular)
    return [str(one).strip()] if one else []


class Driver:
    """One session: the repo, its contract, the run's artifacts root and base env."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.pipeline: dict[str, Any] = yaml.safe_load((repo / "pipeline.yml").read_text()) or {}
        boot_path = repo / ".aider_fsm" / "bootstrap.yml"
        self.bootstrap: dict[str, Any] = (
            yaml.safe_load(boot_path.read_text()) if boot_path.exists() else {}
        ) or {}
        run_id = time.strftime("%Y%m%d_%H%M%S")
        self.root = repo / ".aider_fsm" / "artifacts" / run_id / "env_api"
        self.env = {**os.environ, **STRICT_ENV, "AIDER_FSM_REPO_ROOT": str(repo)}
        self.env.setdefault("AIDER_FSM_PYTHON", sys.executable)
        self.env["AIDER_EVAL_MODE"] = "smoke"

    def _run(self, out: Path, stage: str, cmds: list[str], extra: dict[str, str]) -> bool:
        out.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **extra, "AIDER_FSM_STAGE": stage, "AIDER_FSM_ARTIFACTS_DIR": str(out)}
        ok = True
        for i, cmd in enumerate(cmds, 1):
            proc = subprocess.run(
                cmd, shell=True, cwd=self.repo, env=env, capture_output=True, text=True, timeout=300
            )
            stem = out / f"{stage}_cmd{i:02d}_try01"
            (stem.parent / f"{stem.name}_cmd.txt").write_text(cmd)
            (stem.parent / f"{stem.name}_stdout.txt").write_text(proc.stdout)
            (stem.parent / f"{stem.name}_stderr.txt").write_text(proc.stderr)
            result = {"rc": proc.returncode, "timed_out": False}
            (stem.parent / f"{stem.name}_result.json").write_text(json.dumps(result))
            if proc.returncode != 0:
                ok = False
                break
        (out / f"{stage}_summary.json").write_text(json.dumps({"ok": ok}))
        return ok

    def _bootstrap(self, pass_dir: Path) -> dict[str, str]:
        """Bootstrap before every pass; its env (venv python made absolute) reaches stages."""
        applied = {
            k: str(self.repo / v) if k == "AIDER_FSM_PYTHON" and not os.path.isabs(v) else str(v)
            for k, v in (self.bootstrap.get("env") or {}).items()
        }
        cmds = [str(c) for c in self.bootstrap.get("cmds") or []]
        if not self._run(pass_dir / "bootstrap", "bootstrap", cmds, applied):
            raise SystemExit("bootstrap failed")
        return applied

    def _stage(self, pass_dir: Path, env: dict[str, str], stage: str, cmds: list[str]) -> None:
        if cmds and not self._run(pass_dir, stage, cmds, env):
            raise SystemExit(f"{stage} failed")

    def rollout(self) -> None:
        p = self.pipeline
        deploy = p.get("deploy") or {}
        pass_dir = self.root / "deploy_attempt_01"
        env = self._bootstrap(pass_dir)
        if p.get("tests"):
            self._stage(pass_dir, env, "tests", ["echo tests_skipped"])
        self._stage(pass_dir, env, "deploy_setup", _cmds(deploy, "setup_cmds", "setup_cmd"))
        self._stage(pass_dir, env, "deploy_health", _cmds(deploy, "health_cmds", "health_cmd"))
        runtime_env = self.repo / ".aider_fsm" / "runtime_env.json"
        if runtime_env.exists():
            json.loads(runtime_env.read_text())
        pass_dir = self.root / "rollout_attempt_01"
        env = self._bootstrap(pass_dir)
        self._stage(pass_dir, env, "rollout", _cmds(p.get("rollout"), "run_cmds", "run_cmd"))
        manifest = json.loads((self.repo / ".aider_fsm" / "rollout.json").read_text())
        samples = self.repo / manifest["paths"]["samples_jsonl"]
        with samples.open() as fh:
            for line in fh:
                sample = json.loads(line)
                if not {"prompt", "completion", "reward"} <= sample.keys():
                    raise SystemExit("samples contract failed")

    def evaluate(self) -> dict[str, Any]:
        p = self.pipeline
        evaluation = p.get("evaluation") or {}
        pass_dir = self.root / "evaluation_attempt_01"
        try:
            env = self._bootstrap(pass_dir)
            self._stage(pass_dir, env, "evaluation", _cmds(evaluation, "run_cmds", "run_cmd"))
            metrics_rel = evaluation.get("metrics_path") or ".aider_fsm/metrics.json"
            metrics: dict[str, Any] = json.loads((self.repo / metrics_rel).read_text())
            (pass_dir / "metrics.json").write_text(json.dumps(metrics))
            missing = [k for k in evaluation.get("required_keys") or [] if k not in metrics]
            if missing or metrics.get("ok") is not True:
                raise SystemExit(f"metrics failed: missing {missing}")
            return metrics
        finally:
            teardown = _cmds(p.get("deploy"), "teardown_cmds", "teardown_cmd")
            final = self.root / "final_teardown" / "deploy_teardown"
            if teardown:
                self._run(final, "deploy_teardown", teardown, self.env)


def main() -> int:
    driver = Driver(Path(sys.argv[1]).resolve())
    driver.rollout()
    metrics = driver.evaluate()
    print(json.dumps({"ok": True, "score": metrics.get("score")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
