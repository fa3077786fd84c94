"""What the Docker sandbox costs compared with the plain ``docker`` CLI.

Run: ``python -m benchmarks.sandbox_overhead`` (``make bench``); ``--quick`` for a smoke
run (n=5), ``--json`` to print only the saved result path. See docs/performance.md.

Two measurements, each interleaved round by round with its baseline:

* ``exec_true``: ``DockerSandbox.exec("true")`` on an open sandbox vs
  ``docker exec <same container> true`` run as a subprocess. Target ratio <= 1.0.
* ``open_close``: ``open_sandbox(SandboxSpec(workspace_src=<200-file repo>)).close()`` vs
  ``docker run --rm`` with the same limits, capabilities, tmpfs and mounts, the repo
  bind-mounted, running ``true``. Target ratio <= 1.2.

A missed target is printed as MISSED and followed by a breakdown of where our time
goes (``benchmarks/engine_profile.py``); the exit code stays 0.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from sandbox import SandboxSpec, open_sandbox
from sandbox.base import Limits
from sandbox.images import ensure_image

from .common import (
    Comparison,
    Stats,
    add_runs_per_side,
    machine_facts,
    print_breakdown,
    print_comparisons,
    progress,
    reporting_parser,
    run_header,
    run_interleaved,
    save_payload,
)
from .engine_profile import profile_exec_true, profile_open_close

NAME = "sandbox_overhead"
TARGET_EXEC_TRUE = 1.0
TARGET_OPEN_CLOSE = 1.2
DEFAULT_RUNS = 20
QUICK_RUNS = 5

REPO_DIRS = 10
REPO_FILES_PER_DIR = 20
REPO_BYTES = 10 * 1024 * 1024


# -- inputs ----------------------------------------------------------------------------


def make_repo(
    dest: Path,
    *,
    dirs: int = REPO_DIRS,
    files_per_dir: int = REPO_FILES_PER_DIR,
    total_bytes: int = REPO_BYTES,
    seed: int = 0,
) -> Path:
    """A synthetic repo: ``dirs`` x ``files_per_dir`` files, ``total_bytes`` in all.

    Every other file is random bytes (incompressible), the rest is text, as in
    notes/docker.md section 6. Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    count = dirs * files_per_dir
    size = max(1, total_bytes // count)
    dest.mkdir(parents=True, exist_ok=True)
    for d in range(dirs):
        folder = dest / f"pkg{d:02d}"
        folder.mkdir(exist_ok=True)
        for f in range(files_per_dir):
            if (d * files_per_dir + f) % 2:
                (folder / f"blob{f:02d}.bin").write_bytes(rng.randbytes(size))
            else:
                line = f"# module {d}.{f}: value = {rng.random():.12f}\n".encode()
                text = (line * (size // len(line) + 1))[:size]
                (folder / f"mod{f:02d}.py").write_bytes(text)
    return dest


def docker_cli() -> str:
    """The ``docker`` CLI on PATH (the baseline).

    Raises:
        RuntimeError: no ``docker`` binary on PATH.
    """
    path = shutil.which("docker")
    if path is None:
        raise RuntimeError("no `docker` CLI on PATH: the baseline needs it")
    return path


def cli_run_args(docker_bin: str, image: str, repo: Path, spec: SandboxSpec) -> list[str]:
    """``docker run --rm ... true`` with the container settings DockerSandbox uses.

    Mirrors ``DockerSandbox._create``: network none, init, memory = memory-swap, cpus,
    pids, nofile, cap-drop ALL + the same caps, no-new-privileges, the /tmp tmpfs, shm
    size, SIGKILL stop signal, the host CA bundle read-only (plus its env), workdir.
    The one difference: the repo is bind-mounted instead of copied in.
    """
    from sandbox.docker import CA_ENV, CAPS, HOST_CA_BUNDLE

    lim: Limits = spec.limits
    args = [
        docker_bin,
        "run",
        "--rm",
        "--network",
        "none",
        "--init",
        "--memory",
        lim.memory,
        "--memory-swap",
        lim.memory,
        "--cpus",
        f"{lim.cpus:g}",
        "--pids-limit",
        str(lim.pids),
        "--ulimit",
        f"nofile={lim.nofile}:{lim.nofile}",
        "--cap-drop",
        "ALL",
    ]
    for cap in CAPS:
        args += ["--cap-add", cap]
    args += [
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        f"/tmp:rw,exec,nosuid,nodev,size={lim.tmp_size}",
        "--shm-size",
        lim.shm_size,
        "--stop-signal",
        "SIGKILL",
        "--workdir",
        spec.workspace,
    ]
    if Path(HOST_CA_BUNDLE).is_file():
        args += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        for name in CA_ENV:
            args += ["--env", f"{name}={HOST_CA_BUNDLE}"]
    args += ["--volume", f"{repo.resolve()}:{spec.workspace}", image, "true"]
    return args


def _run_cli(args: Sequence[str]) -> None:
    proc = subprocess.run(
        list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"baseline command failed (rc {proc.returncode}): {' '.join(args)}\n{proc.stderr}"
        )


@contextlib.contextmanager
def _repo_or_temp(repo: Path | None) -> Iterator[Path]:
    if repo is not None:
        yield repo
        return
    with tempfile.TemporaryDirectory(prefix="fsm-bench-repo-") as tmp:
        yield make_repo(Path(tmp) / "repo")


def _repo_facts(repo: Path) -> dict[str, Any]:
    files = [p for p in repo.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


# -- measurements ----------------------------------------------------------------------


def measure_exec_true(
    n: int,
    *,
    warmup: int = 2,
    image: str | None = None,
    docker_bin: str | None = None,
) -> Comparison:
    """Our ``exec("true")`` vs ``docker exec <same id> true``, interleaved, on one container."""
    docker_bin = docker_bin or docker_cli()
    tag = image or ensure_image()
    from sandbox.docker import DockerSandbox

    with open_sandbox(SandboxSpec(image=tag)) as sb:
        if not isinstance(sb, DockerSandbox):
            raise RuntimeError(f"expected the docker backend, got {type(sb).__name__}")
        cid = sb.container_id

        def ours() -> None:
            res = sb.exec("true")
            if res.exit_code != 0:
                raise RuntimeError(f"sandbox exec('true') returned {res.exit_code}: {res.stderr}")

        cli = [docker_bin, "exec", cid, "true"]
        timings = run_interleaved(
            {"ours": ours, "baseline": lambda: _run_cli(cli)}, n, warmup=warmup
        )
    return Comparison(
        name="exec_true",
        ours_label='DockerSandbox.exec("true") (engine API over the unix socket, in-process)',
        baseline_label=f"subprocess: {docker_bin} exec <same container id> true",
        ours=Stats(tuple(timings["ours"])),
        baseline=Stats(tuple(timings["baseline"])),
        target=TARGET_EXEC_TRUE,
        notes=(
            "ours runs `sh -c true` with our env + a per-exec marker, reads the exit code "
            "and diffs the cgroup oom_kill counter; the CLI runs `true` directly",
            "the baseline includes starting the docker CLI process (its real cost to a caller)",
        ),
    )


def measure_open_close(
    n: int,
    *,
    warmup: int = 2,
    image: str | None = None,
    repo: Path | None = None,
    docker_bin: str | None = None,
) -> Comparison:
    """``open_sandbox(...) + close()`` on a 200-file repo vs ``docker run --rm ... true``."""
    docker_bin = docker_bin or docker_cli()
    tag = image or ensure_image()
    with _repo_or_temp(repo) as src:
        spec = SandboxSpec(workspace_src=src, image=tag)
        cli = cli_run_args(docker_bin, tag, src, spec)

        def ours() -> None:
            open_sandbox(spec).close()

        timings = run_interleaved(
            {"ours": ours, "baseline": lambda: _run_cli(cli)}, n, warmup=warmup
        )
        facts = _repo_facts(src)
    return Comparison(
        name="open_close",
        ours_label=(
            "open_sandbox(SandboxSpec(workspace_src=repo, image=tag)) + close() "
            "(create with a fresh workspace volume, copy the repo into it while the "
            "container starts, remove both; put_archive when not root or the engine is remote)"
        ),
        baseline_label=(
            f"subprocess: {docker_bin} run --rm <same limits/caps/tmpfs/CA mount> "
            f"-v repo:/workspace {tag} true"
        ),
        ours=Stats(tuple(timings["ours"])),
        baseline=Stats(tuple(timings["baseline"])),
        target=TARGET_OPEN_CLOSE,
        notes=(
            f"repo: {facts['files']} files, {facts['bytes'] / 1e6:.1f} MB (half random bytes)",
            "ours COPIES the repo into the container (workspace_mode='copy', the default: "
            "container code never writes host files); the baseline BIND-MOUNTS it",
            "ours leaves `sleep infinity` running and removes it with force; the baseline "
            "runs `true` and --rm removes it after it exits",
        ),
        extra={"repo": facts, "baseline_argv": cli},
    )


# -- command line ----------------------------------------------------------------------


def run_all(
    n: int,
    *,
    warmup: int,
    profile: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Both measurements (and breakdowns per ``profile``: never / missed / always)."""
    started = datetime.now(UTC)
    docker_bin = docker_cli()
    tag = ensure_image(progress=say)
    facts = machine_facts()
    comparisons: list[Comparison] = []
    profiles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fsm-bench-repo-") as tmp:
        repo = make_repo(Path(tmp) / "repo")
        say(f"exec_true: {warmup} warm-up + {n} interleaved rounds")
        comparisons.append(measure_exec_true(n, warmup=warmup, image=tag, docker_bin=docker_bin))
        say(f"open_close: {warmup} warm-up + {n} interleaved rounds")
        comparisons.append(
            measure_open_close(n, warmup=warmup, image=tag, repo=repo, docker_bin=docker_bin)
        )
        prof_n = min(n, 10)
        for comp in comparisons:
            if profile == "always" or (profile == "missed" and not comp.met):
                say(f"profiling {comp.name} ({prof_n} traced runs)")
                if comp.name == "exec_true":
                    profiles[comp.name] = profile_exec_true(prof_n, image=tag)
                else:
                    profiles[comp.name] = profile_open_close(prof_n, image=tag, repo=repo)
    return {
        **run_header(NAME, started),
        "runs_per_side": n,
        "warmup_rounds": warmup,
        "image": tag,
        "machine": facts,
        "results": [c.to_dict() for c in comparisons],
        "all_targets_met": all(c.met for c in comparisons),
        "profiles": profiles,
        "_comparisons": comparisons,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = reporting_parser(
        NAME,
        "Docker sandbox overhead vs the plain docker CLI (see docs/performance.md).",
        quick=f"smoke run: n={QUICK_RUNS}",
    )
    add_runs_per_side(parser, warmup=None)
    parser.add_argument(
        "--profile",
        choices=("missed", "always", "never"),
        default="missed",
        help="per-call breakdown of our side (default: for measurements that miss their target)",
    )
    args = parser.parse_args(argv)
    n = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    payload = run_all(n, warmup=warmup, profile=args.profile, say=progress(args))
    path = save_payload(NAME, payload, args)
    if path is None:
        return 0
    comparisons: list[Comparison] = payload["_comparisons"]
    out = Console()
    machine = payload["machine"]
    engine = machine.get("engine", {})
    print_comparisons(
        f"sandbox overhead (median of {n} per side, interleaved) - "
        f"{machine['nproc']} CPU, kernel {machine['kernel']}, engine {engine.get('version')}",
        comparisons,
        out,
    )
    for comp in comparisons:
        if not comp.met:
            out.print(
                f"[bold red]MISSED[/bold red]: {comp.name} ratio {comp.ratio:.2f} > target "
                f"{comp.target:.2f}"
            )
    for name, prof in payload["profiles"].items():
        print_breakdown(
            f"{name}: where our time goes ({prof['runs']} traced runs)", prof["steps"], out
        )
        if "bind_mode_median_ms" in prof:
            out.print(
                f"  {name} with workspace_mode='bind' (no copy): "
                f"{prof['bind_mode_median_ms']:.1f} ms median"
            )
    out.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
