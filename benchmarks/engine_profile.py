"""Where the Docker sandbox's time goes: each engine HTTP call, the tar packing, the rest.

``benchmarks.sandbox_overhead`` prints this breakdown for a measurement that misses its
target (or always, with ``--profile always``). Instrumentation only: the docker SDK's
request methods and two of ours are wrapped while tracing, then restored.
"""

from __future__ import annotations

import contextlib
import functools
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import SandboxSpec, open_sandbox

from .common import time_once

_API_PREFIX = re.compile(r"^.*?//[^/]+(/v\d+(\.\d+)?)?")
_HEX_ID = re.compile(r"/[0-9a-f]{64}")
_IMAGE_REF = re.compile(r"^/images/.+/json$")


def engine_step(method: str, url: str) -> str:
    """``POST /containers/{id}/start`` from a docker SDK request (method + full URL)."""
    path = _API_PREFIX.sub("", url.split("?", 1)[0])
    path = _HEX_ID.sub("/{id}", path)
    if _IMAGE_REF.match(path):
        path = "/images/{ref}/json"
    path = re.sub(r"^/containers/fsm-[0-9a-f]+", "/containers/{name}", path)
    return f"{method} {path}"


@dataclass
class CallTracer:
    """Per-run wall time of each engine HTTP call and of named client-side phases."""

    runs: list[dict[str, list[float]]] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)

    def record(self, step: str, seconds: float) -> None:
        if self.runs:
            self.runs[-1].setdefault(step, []).append(seconds)

    def run(self, fn: Callable[[], object]) -> None:
        self.runs.append({})
        self.totals.append(time_once(fn))

    def rows(self) -> list[dict[str, Any]]:
        """One row per step (median over runs of that step's per-run sum), plus the rest."""
        steps: dict[str, list[float]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        remainders: list[float] = []
        for run, total in zip(self.runs, self.totals, strict=True):
            remainders.append(total - sum(sum(v) for v in run.values()))
            for step, values in run.items():
                steps[step].append(sum(values))
                counts[step] += len(values)
        runs = max(1, len(self.runs))
        total_median = statistics.median(self.totals) if self.totals else 0.0
        rows: list[dict[str, Any]] = [
            {
                "step": step,
                "calls_per_run": counts[step] / runs,
                "median_ms": statistics.median(values + [0.0] * (runs - len(values))) * 1000,
            }
            for step, values in steps.items()
        ]
        rows.sort(key=lambda r: -float(r["median_ms"]))
        rows.append(
            {
                "step": "everything else (client-side Python between the calls)",
                "calls_per_run": None,
                "median_ms": statistics.median(remainders) * 1000 if remainders else 0.0,
            }
        )
        rows.append(
            {"step": "TOTAL (median)", "calls_per_run": None, "median_ms": total_median * 1000}
        )
        for row in rows:
            row["share"] = row["median_ms"] / (total_median * 1000) if total_median else 0.0
            row["median_ms"] = round(float(row["median_ms"]), 2)
        return rows


def _timed(tracer: CallTracer, step: Callable[..., str], fn: Callable[..., Any]) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            tracer.record(step(*args, **kwargs), time.perf_counter() - started)

    return wrapper


@contextlib.contextmanager
def trace_engine_calls(tracer: CallTracer) -> Iterator[CallTracer]:
    """Time every docker SDK HTTP call and our tar packing / exec stream reading.

    Instrumentation only (wraps, then restores): nothing the sandbox does changes.
    """
    import docker.api.client as api_client

    import sandbox.docker as sandbox_docker

    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, attr: str, step: Callable[..., str]) -> None:
        original = getattr(owner, attr)
        patches.append((owner, attr, original))
        setattr(owner, attr, _timed(tracer, step, original))

    try:
        for attr in ("_get", "_post", "_put", "_delete"):
            method = attr[1:].upper()
            patch(
                api_client.APIClient,
                attr,
                lambda _self, url, *a, _m=method, **k: engine_step(_m, str(url)),
            )
        patch(sandbox_docker, "pack_dir", lambda *a, **k: "client: pack_dir (build workspace tar)")
        patch(
            sandbox_docker.DockerSandbox,
            "_pump",
            lambda *a, **k: "client: read exec output stream (_pump, until EOF)",
        )
        yield tracer
    finally:
        for owner, attr, original in reversed(patches):
            setattr(owner, attr, original)


def profile_exec_true(n: int, *, image: str) -> dict[str, Any]:
    """Where ``exec("true")`` spends its time, call by call."""
    tracer = CallTracer()
    with open_sandbox(SandboxSpec(image=image)) as sb:
        sb.exec("true")
        with trace_engine_calls(tracer):
            for _ in range(n):
                tracer.run(lambda: sb.exec("true"))
    return {"runs": n, "steps": tracer.rows()}


def profile_open_close(n: int, *, image: str, repo: Path) -> dict[str, Any]:
    """Where open+close spends its time, call by call; plus the same with a bind mount."""
    tracer = CallTracer()
    spec = SandboxSpec(workspace_src=repo, image=image)
    bind = SandboxSpec(workspace_src=repo, image=image, workspace_mode="bind")
    open_sandbox(spec).close()
    with trace_engine_calls(tracer):
        for _ in range(n):
            tracer.run(lambda: open_sandbox(spec).close())
    bind_times = [time_once(lambda: open_sandbox(bind).close()) for _ in range(n)]
    return {
        "runs": n,
        "steps": tracer.rows(),
        "bind_mode_median_ms": round(statistics.median(bind_times) * 1000, 2),
        "bind_mode_note": "same open+close with workspace_mode='bind' (no copy), untraced",
    }
