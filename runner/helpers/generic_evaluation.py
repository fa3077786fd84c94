"""Stage helper: run the target's official commands (hints) and score what they print.

Runs INSIDE the sandbox with the container's python3 and only the standard library, as
``python -m runner.helpers.generic_evaluation`` or ``$AIDER_FSM_RUNNER_ROOT/runner/
generic_evaluation.py`` from a contract's evaluation script. Input is the environment
only, as with the predecessor (notes/predecessor.md 6.4-6.5): ``AIDER_FSM_HINTS_JSON``,
``AIDER_FSM_HINT_ANCHORS_JSON``, ``AIDER_FSM_REQUIRE_HINTS``, timeouts and limits.

Writes ``.aider_fsm/hints_run.json``, ``hints_used.json`` and the metrics file, and logs
each command it starts to ``$AIDER_FSM_ARTIFACTS_DIR/hints_exec.jsonl``. Trust limit:
all of these are written inside the container, where target code runs too and could
rewrite them. The runner accepts them only next to its own record that this helper ran
(``hints.check_hints_evidence``); it cannot tell a genuine helper run from a target
that shadows the ``runner`` package or forges the log afterwards.

Exit status: 0 scored, 2 hints required but none succeeded, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if not __package__:  # run as a file path: import our own package, not a target's `runner`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runner.trust import hints
from runner.trust.hint_scores import fresh_json_score, parse_test_counts, scan_json, score_from_text

TAIL_CHARS = 4000
"""Output kept per attempt in hints_run.json (the predecessor's tails)."""
PARSE_BYTES = 2_000_000
"""Output read back for score parsing: summaries come last."""
_TRUE = ("1", "true", "yes", "y", "on")


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    return raw in _TRUE if raw else default


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def _json_list(raw: str | None) -> list[str]:
    try:
        data = json.loads(raw or "[]")
    except ValueError:
        return []
    return (
        [s.strip() for s in data if isinstance(s, str) and s.strip()]
        if isinstance(data, list)
        else []
    )


def load_hints(env: Mapping[str, str], repo: Path) -> list[str]:
    """Hints from the env; else the newest scaffold hints file (predecessor compatibility)."""
    found = _json_list(env.get("AIDER_FSM_HINTS_JSON"))
    if found:
        return found
    files = sorted(
        repo.glob(".aider_fsm/artifacts/*/scaffold/scaffold_command_hints.txt"),
        key=lambda p: p.stat().st_mtime,
    )
    if not files:
        return []
    lines = files[-1].read_text(encoding="utf-8", errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# --- running -------------------------------------------------------------------------


def _command_env(env: Mapping[str, str]) -> dict[str, str]:
    """The stage env minus our package on PYTHONPATH: a target's own `runner` must win."""
    ours = {str(Path(__file__).resolve().parents[2]), env.get("AIDER_FSM_RUNNER_ROOT", "")}
    out = dict(env)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in ours]
    out["PYTHONPATH"] = os.pathsep.join(parts)
    if not parts:
        del out["PYTHONPATH"]
    return out


def _tail(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_command(
    cmd: str, *, cwd: Path, env: Mapping[str, str], timeout: float, out_dir: Path, n: int
) -> dict[str, Any]:
    """Run one command in its own process group; a timeout kills the whole group."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = (
        out_dir / f"attempt_{n:02d}.stdout.txt",
        out_dir / f"attempt_{n:02d}.stderr.txt",
    )
    shell = "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [shell, "-c", cmd],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # Grandchildren that call setsid escape this; the runner's exec timeout and
            # the container's end still bound them.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    return {
        "rc": rc,
        "seconds": round(time.monotonic() - started, 3),
        "timed_out": timed_out,
        "stdout": _tail(out_path, PARSE_BYTES),
        "stderr": _tail(err_path, PARSE_BYTES),
    }


def judge(
    result: Mapping[str, Any], fresh: float | None, require_real: bool
) -> tuple[bool, float | None, str, str]:
    """(ok, score, score_source, failure) of one executed attempt."""
    text = f"{result['stdout']}\n{result['stderr']}"
    if result["timed_out"]:
        return False, None, "", "timed_out"
    counts = parse_test_counts(text)
    if counts:  # failing tests are still a measurement
        return True, counts[0] / counts[1], "test_counts", ""
    if result["rc"] != 0:
        return False, None, "", f"exit_code_{result['rc']}"
    if fresh is not None:
        return True, fresh, "metrics_file", ""
    if (scored := score_from_text(text)) is not None:
        return True, scored, "output_text", ""
    if require_real:
        return False, None, "", "no_real_score"
    return True, 1.0, "exit_code", ""  # the predecessor's rule, labelled as such


def _probe(cmd: str, cwd: Path, env: Mapping[str, str]) -> tuple[str, str]:
    """("ok" | "unknown" | "fail", detail) without side effects."""
    program = hints.program_of(cmd)
    if not program or program[0] in "$({[" or program in ("if", "for", "while"):
        return "unknown", "shell construct"
    if "/" in program:
        if re.match(r"\s*cd\s", cmd):
            return "unknown", "path after cd"
        if not ((cwd / program).exists() or Path(program).exists()):
            return "fail", f"not_found: {program}"
    elif shutil.which(program, path=env.get("PATH")) is None:
        return "fail", f"command_not_found: {program}"
    words = cmd.split()
    if re.search(r"python[\d.]*$", program) and "-m" in words[:-1]:
        module = words[words.index("-m") + 1]
        check = "import importlib.util as u,sys; sys.exit(0 if u.find_spec(sys.argv[1]) else 1)"
        try:
            proc = subprocess.run(
                [program, "-c", check, module],
                cwd=cwd,
                env=dict(env),
                timeout=15,
                capture_output=True,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown", f"probe_failed: {module}"
        return ("ok", module) if proc.returncode == 0 else ("fail", f"module_not_found: {module}")
    return "ok", program


# --- the run --------------------------------------------------------------------------


def _log(path: Path | None, record: Mapping[str, Any]) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"ts": time.time(), **record}) + "\n")


def run_hints(env: Mapping[str, str], repo: Path) -> dict[str, Any]:
    """Rank, normalise, probe and run hints until one yields a score (notes 6.4 report)."""
    raw_hints = load_hints(env, repo)
    anchors = _json_list(env.get("AIDER_FSM_HINT_ANCHORS_JSON")) or hints.hint_anchors(raw_hints)
    report: dict[str, Any] = {
        "ok": False,
        "score": 0.0,
        "score_source": "",
        "chosen_command": "",
        "used_anchors": [],
        "executed_attempts": 0,
        "probes": [],
        "attempts": [],
        "reason": "no_hints" if not raw_hints else "",
    }
    artifacts = Path(env["AIDER_FSM_ARTIFACTS_DIR"]) if env.get("AIDER_FSM_ARTIFACTS_DIR") else None
    out_dir = (artifacts or repo / ".aider_fsm" / "artifacts") / "hints"
    exec_log = artifacts / "hints_exec.jsonl" if artifacts else None
    if artifacts:
        artifacts.mkdir(parents=True, exist_ok=True)
    max_attempts = _int(env, "AIDER_FSM_HINT_MAX_ATTEMPTS", 3)
    timeout = _int(env, "AIDER_FSM_HINT_TIMEOUT_SECONDS", 600)
    require_real = _flag(env, "AIDER_FSM_REQUIRE_REAL_SCORE")
    run_env = _command_env(env)

    candidates = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_hints):
        cmd, skip = hints.normalise_hint(raw, run_env)
        if not skip and cmd in seen:
            skip = "duplicate_sanitized_hint"
        seen.add(cmd)
        status, detail = ("fail", skip) if skip else _probe(cmd, repo, run_env)
        priority = hints.hint_priority(cmd or raw, env)
        report["probes"].append(
            {"raw": raw, "sanitized": cmd, "ok": status, "reason": detail, "priority": priority}
        )
        anchored = any(a.lower() in raw.lower() for a in anchors)
        rank = {"ok": 0, "unknown": 1, "fail": 2}[status]
        candidates.append(((not anchored, rank, -priority, index), raw, cmd, status, detail))

    failures: list[str] = []
    for _, raw, cmd, status, detail in sorted(candidates):
        if status == "fail":
            report["attempts"].append({"raw": raw, "sanitized": cmd, "skip_reason": detail})
            continue
        if report["executed_attempts"] >= max_attempts:
            break
        report["executed_attempts"] += 1
        n = report["executed_attempts"]
        print(f"[generic_evaluation] attempt {n}: $ {cmd}", flush=True)
        _log(exec_log, {"phase": "start", "attempt": n, "cmd": cmd, "raw": raw, "cwd": str(repo)})
        before = scan_json(repo)
        result = run_command(cmd, cwd=repo, env=run_env, timeout=timeout, out_dir=out_dir, n=n)
        ok, score, source, failure = judge(result, fresh_json_score(before, repo), require_real)
        _log(
            exec_log,
            {
                "phase": "end",
                "attempt": n,
                "cmd": cmd,
                "rc": result["rc"],
                "seconds": result["seconds"],
                "timed_out": result["timed_out"],
            },
        )
        report["attempts"].append(
            {
                "raw": raw,
                "sanitized": cmd,
                "rc": result["rc"],
                "seconds": result["seconds"],
                "timed_out": result["timed_out"],
                "stdout_tail": result["stdout"][-TAIL_CHARS:],
                "stderr_tail": result["stderr"][-TAIL_CHARS:],
                "skip_reason": "",
                "score": score,
                "score_source": source,
                "failure": failure,
            }
        )
        if ok and score is not None:
            used = [a for a in anchors if a.lower() in f"{raw}\n{cmd}".lower()]
            report.update(ok=True, score=score, score_source=source, chosen_command=cmd)
            report["used_anchors"] = used or hints.hint_anchors([raw])
            return report
        failures.append(failure)
    if raw_hints:
        if not report["executed_attempts"]:
            report["reason"] = "all_hints_unrunnable"
        elif failures and all(f == "no_real_score" for f in failures):
            report["reason"] = "all_hints_no_real_score"
        else:
            report["reason"] = "all_hints_failed"
    return report


def rollout_reward(repo: Path) -> tuple[float | None, int]:
    """Mean ``reward`` over the rollout's samples (the no-hints fallback) and the count."""
    try:
        manifest = json.loads((repo / ".aider_fsm" / "rollout.json").read_text(encoding="utf-8"))
        rel = manifest["paths"]["samples_jsonl"]
        lines = (repo / rel).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, KeyError, TypeError):
        return None, 0
    rewards = []
    for line in lines:
        try:
            value = json.loads(line).get("reward")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            rewards.append(float(value))
    return (sum(rewards) / len(rewards), len(rewards)) if rewards else (None, 0)


def _write(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(env: Mapping[str, str] | None = None) -> int:
    """Run hints (or fall back to rollout rewards) and write the three output files."""
    env = dict(os.environ if env is None else env)
    repo = Path(env.get("AIDER_FSM_REPO_ROOT") or os.getcwd()).resolve()
    required = _flag(env, "AIDER_FSM_REQUIRE_HINTS")
    report = run_hints(env, repo)
    aider = repo / ".aider_fsm"
    executed = [a["sanitized"] for a in report["attempts"] if not a.get("skip_reason")]
    _write(aider / "hints_run.json", report)
    _write(
        aider / "hints_used.json",
        {
            "ok": report["ok"],
            "used_anchors": report["used_anchors"],
            "commands": executed,
            "chosen_command": report["chosen_command"],
            "reason": report["reason"],
        },
    )
    metrics: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": env.get("AIDER_FSM_RUN_ID", ""),
        "ok": report["ok"],
        "score": report["score"],
        "source": "hints",
        "score_source": report["score_source"],
        "chosen_command": report["chosen_command"],
        "reason": report["reason"],
    }
    if report["reason"] == "no_hints" and not required:
        mean, count = rollout_reward(repo)
        metrics.update(
            ok=mean is not None,
            score=mean if mean is not None else 0.0,
            source="rollout_samples",
            score_source="mean_reward",
            counts={"samples": count},
            reason="" if mean is not None else "no_hints_and_no_rollout_samples",
        )
    metrics_rel = env.get("AIDER_FSM_METRICS_PATH") or ".aider_fsm/metrics.json"
    _write(repo / metrics_rel, metrics)
    print(f"[generic_evaluation] ok={metrics['ok']} score={metrics['score']} {metrics['reason']}")
    if metrics["ok"]:
        return 0
    return 2 if required else 1


if __name__ == "__main__":
    sys.exit(main())
