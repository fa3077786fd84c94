"""Stage helper: a rollout that needs nothing from the target but its data.

Runs INSIDE the sandbox with the container's python3 and only the standard library
(pyarrow, when present, reads HF parquet files), as ``python -m runner.helpers.generic_rollout``
or ``$AIDER_FSM_RUNNER_ROOT/runner/generic_rollout.py``. Self-contained on purpose: it
imports no other runner module.

* Hugging Face QA snapshot (``data/hf_manifest.json`` plus a test split with
  ``question``/``answer``): ask the OpenAI-compatible endpoint one question at a time,
  reward 1 when the final number matches the reference exactly (GSM8K ``#### 72`` vs
  ``FINAL: 72``), else 0.
* Anything else: the README fallback. Prompts are README excerpts and rewards are a
  constant 0; ``rollout.json`` says so (``kind: readme_fallback``), because such samples
  are no training signal.

Writes the samples JSONL and ``.aider_fsm/rollout.json``. Exit 0 when samples were
written, 1 otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

PROMPT = (
    "Solve the following problem. Think step by step, then give the final answer as a "
    "number on the last line in the form `FINAL: <answer>`.\n\nQuestion: {question}"
)
README_PROMPT = (
    "Here is an excerpt from a software project's README. In two sentences, say what it "
    "tells a user to do.\n\n{chunk}"
)
REQUEST_TIMEOUT = 120.0
"""Seconds per model request (the predecessor's value)."""
MAX_CONSECUTIVE_FAILURES = 3
"""Stop asking once this many requests in a row failed: the endpoint is down."""

_FINAL = re.compile(r"FINAL(?:\s+ANSWER)?\s*[:\uff1a]\s*([^\n]*)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


# --- answers and rewards --------------------------------------------------------------


def to_number(text: str) -> Fraction | None:
    """The first number in ``text`` ($, thousands commas, fractions allowed), exactly."""
    m = _NUMBER.search(text.replace("$", ""))
    if not m:
        return None
    raw = m.group(0).replace(",", "")
    try:
        return Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None


def reference_answer(answer: str) -> str:
    """The gold answer: what follows the last ``####`` (GSM8K), else the whole text."""
    found = _HASHES.findall(answer)
    return (found[-1] if found else answer).strip()


def final_answer(completion: str) -> str | None:
    """The model's final answer: last ``FINAL:``, else ``####``, ``\\boxed{}``, "answer is",
    else the last number in the text."""
    for pattern in (_FINAL, _HASHES, _BOXED, _ANSWER_IS):
        found = pattern.findall(completion)
        if found and found[-1].strip():
            return str(found[-1]).strip()
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def _norm_text(text: str) -> str:
    return re.sub(r"[\s.,;:!]+", " ", text).strip().casefold()


def reward(completion: str, answer: str) -> float:
    """1.0 when the final answer equals the reference (numerically when it is a number)."""
    gold = reference_answer(answer)
    predicted = final_answer(completion)
    if predicted is None:
        return 0.0
    gold_number = to_number(gold)
    if gold_number is not None:
        return 1.0 if to_number(predicted) == gold_number else 0.0
    return 1.0 if _norm_text(predicted) == _norm_text(gold) else 0.0


# --- data -----------------------------------------------------------------------------


def _qa_files(repo: Path) -> list[Path]:
    """Test splits, the conventional HF path first; parquet or JSON lines."""
    found = sorted(
        p
        for pattern in ("test-*.parquet", "test*.jsonl")
        for p in repo.rglob(pattern)
        if ".aider_fsm" not in p.parts and ".git" not in p.parts
    )
    preferred = repo / "main" / "test-00000-of-00001.parquet"
    return sorted(found, key=lambda p: p != preferred)


def load_qa(repo: Path, limit: int) -> tuple[Path, list[dict[str, str]], int] | str | None:
    """(file, first ``limit`` rows, total rows) of an HF QA snapshot; None when this is not
    one; an error string when it is but cannot be read (never a silent fallback)."""
    if not (repo / "data" / "hf_manifest.json").is_file():
        return None
    files = _qa_files(repo)
    try:
        pq: Any = importlib.import_module("pyarrow.parquet")
    except ImportError:
        pq = None
    for path in files:
        if path.suffix == ".parquet":
            if pq is None:
                continue
            table = pq.read_table(path)
            if not {"question", "answer"} <= set(table.column_names):
                continue
            rows = table.slice(0, limit).select(["question", "answer"]).to_pylist()
            total = int(table.num_rows)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            records = [json.loads(x) for x in lines if x.strip()]
            if not records or not {"question", "answer"} <= set(records[0]):
                continue
            rows, total = records[:limit], len(records)
        qa = [{"question": str(r["question"]), "answer": str(r["answer"])} for r in rows]
        return path, qa, total
    parquet = [p for p in files if p.suffix == ".parquet"]
    if parquet and pq is None:
        return (
            f"pyarrow_missing: {parquet[0].relative_to(repo)} needs pyarrow; install it in "
            "bootstrap and run this helper with that python, or provide a test*.jsonl copy"
        )
    return None


def readme_chunks(repo: Path, limit: int) -> list[str]:
    """README sections in order (deterministic), for the fallback prompts."""
    readme = next((p for p in sorted(repo.glob("*")) if p.name.lower().startswith("readme")), None)
    text = readme.read_text(encoding="utf-8", errors="replace")[:200_000] if readme else ""
    sections = re.split(r"\n(?=#{1,3} )", text)
    return [s.strip()[:2000] for s in sections if len(s.strip()) > 40][:limit]


# --- the model ------------------------------------------------------------------------


def ask(base: str, model: str, key: str, prompt: str, max_tokens: int) -> str:
    """One chat completion (temperature 0); retries 429/5xx and connection errors.

    Raises:
        RuntimeError: the request still failed after retries (the message says why).
    """
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    error = ""
    for attempt in range(3):
        request = urllib.request.Request(f"{base}/chat/completions", body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                data = json.loads(response.read())
            return str(((data.get("choices") or [{}])[0].get("message") or {}).get("content") or "")
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
            if exc.code != 429 and exc.code < 500:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(error)


def _endpoint(env: Mapping[str, str]) -> tuple[str, str, str]:
    base = (env.get("OPENAI_API_BASE") or env.get("OPENAI_BASE_URL") or "").strip().rstrip("/")
    base = base.removesuffix("/chat/completions")
    if base and re.fullmatch(r"https?://[^/]+", base):
        base += "/v1"
    model = env.get("OPENAI_MODEL") or env.get("AIDER_LLM_MODEL") or ""
    return base, model, env.get("OPENAI_API_KEY", "")


# --- the run --------------------------------------------------------------------------


def _limit(env: Mapping[str, str]) -> int:
    raw = env.get("AIDER_EVAL_LIMIT", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return 64 if env.get("AIDER_EVAL_MODE", "smoke") == "full" else 8


def main(env: Mapping[str, str] | None = None) -> int:
    """Run the QA rollout or the README fallback; write samples and rollout.json."""
    env = dict(os.environ if env is None else env)
    repo = Path(env.get("AIDER_FSM_REPO_ROOT") or os.getcwd()).resolve()
    limit = _limit(env)
    base, model, key = _endpoint(env)
    raw_tokens = env.get("AIDER_FSM_MAX_TOKENS", "").strip()
    max_tokens = int(raw_tokens) if raw_tokens.isdigit() and int(raw_tokens) > 0 else 1024
    artifacts = env.get("AIDER_FSM_ARTIFACTS_DIR")
    samples_path = (
        Path(artifacts) / "samples.jsonl" if artifacts else repo / ".aider_fsm" / "samples.jsonl"
    )
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"mode": env.get("AIDER_EVAL_MODE", "smoke"), "model": model}

    qa = load_qa(repo, limit)
    jobs: list[tuple[str, dict[str, str] | None]] = []
    errors: list[str] = []
    if isinstance(qa, str):
        manifest["kind"] = "hf_qa"
        errors.append(qa)
    elif qa is not None:
        path, rows, total = qa
        manifest["kind"] = "hf_qa"
        manifest["dataset"] = {"path": str(path.relative_to(repo)), "rows": total, "limit": limit}
        jobs = [(PROMPT.format(question=r["question"]), r) for r in rows]
    else:
        manifest["kind"] = "readme_fallback"
        manifest["note"] = (
            "no QA dataset found: prompts are README excerpts and every reward is 0; "
            "these samples are not a training or evaluation signal"
        )
        jobs = [(README_PROMPT.format(chunk=c), None) for c in readme_chunks(repo, limit)]

    if not jobs and not errors:
        errors.append("nothing to ask: no QA dataset and no README text")
    written = correct = 0
    failures_in_row = 0
    with samples_path.open("w", encoding="utf-8") as out:
        for index, (prompt, row) in enumerate(jobs):
            if not base or not model:
                errors.append("no model endpoint: set OPENAI_API_BASE and OPENAI_MODEL")
                break
            if failures_in_row >= MAX_CONSECUTIVE_FAILURES:
                errors.append(f"stopped after {failures_in_row} failed requests in a row")
                break
            try:
                completion = ask(base, model, key, prompt, max_tokens)
            except RuntimeError as exc:
                errors.append(f"sample {index}: {exc}")
                failures_in_row += 1
                continue
            failures_in_row = 0
            sample: dict[str, Any] = {"id": index, "prompt": prompt, "completion": completion}
            if row is not None:
                sample["reward"] = reward(completion, row["answer"])
                sample.update(
                    question=row["question"],
                    answer=reference_answer(row["answer"]),
                    prediction=final_answer(completion),
                )
                correct += int(sample["reward"] == 1.0)
            else:
                sample["reward"] = 0.0
            out.write(json.dumps(sample, ensure_ascii=False) + "\n")
            written += 1

    rel = samples_path.relative_to(repo) if samples_path.is_relative_to(repo) else samples_path
    manifest.update(
        ok=written > 0,
        counts={"samples": written, "errors": len(errors), "correct": correct},
        paths={"samples_jsonl": str(rel)},
        errors=errors[:3],
        ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    rollout = repo / ".aider_fsm" / "rollout.json"
    rollout.parent.mkdir(parents=True, exist_ok=True)
    rollout.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(
        f"[generic_rollout] kind={manifest['kind']} samples={written} correct={correct} "
        f"errors={len(errors)}"
    )
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
