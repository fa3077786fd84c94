"""Copying a 5,000-file workspace into a sandbox vs ``docker cp`` of the same tree.

Run: ``python -m benchmarks.workspace_copy`` (part of ``make bench``); ``--quick`` for n=3.

The tree: 5,000 files in 121 nested folders, sizes log-uniform between 64 B and 32 KiB
(about 26 MB, like a mid-sized source checkout), generated with seed 0.

* ours: ``copy_tree(tree, volume)`` (``sandbox/volume_fill.py``), what ``open_sandbox``
  does to fill a fresh container's anonymous workspace volume on its host mountpoint;
* baseline: ``docker cp <tree>/. <container>:/workspace`` into an identical fresh
  container (the CLI tars the tree, the engine unpacks it into the same kind of volume);
* before: the copy as it was before issue 17 (``os.walk`` + ``shutil.copy2`` per file),
  kept here for comparison only.

Each round creates and starts one container per side (outside the timing), times the
copy alone, then removes the container (outside the timing); sides alternate and the
order flips every round; ``sync`` runs before each timed copy, so no side pays for the
writeback of another's files. Target (issue 17): ours / ``docker cp`` <= 1.0. The page
cache holds the source tree after the warm-up round, for every side alike.
"""

from __future__ import annotations

import os
import posixpath
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from docker.types import Mount

from benchmarks.common import Comparison, machine_facts, parse_runs, save_comparisons, stats_of
from sandbox.archive import _excluded
from sandbox.engine import creator_labels, get_client
from sandbox.images import ensure_image
from sandbox.volume_fill import copy_tree

NAME = "workspace_copy"
FILES = 5000


def make_tree(root: Path, n_files: int = FILES, seed: int = 0) -> Path:
    """``n_files`` files in 121 nested folders, 64 B - 32 KiB each (log-uniform)."""
    rng = random.Random(seed)
    dirs = [root]
    root.mkdir(parents=True)
    for i in range(120):
        folder = rng.choice(dirs) / f"pkg{i:03d}"
        folder.mkdir()
        dirs.append(folder)
    blob = rng.randbytes(1 << 20)
    for i in range(n_files):
        size = int(2 ** rng.uniform(6, 15))
        offset = rng.randrange(0, len(blob) - size)
        (rng.choice(dirs) / f"mod{i:05d}.py").write_bytes(blob[offset : offset + size])
    return root


def legacy_copy_tree(src: Path, dest: Path, exclude: Iterable[str] = ()) -> None:
    """The volume fill before issue 17 (git a252bfa ``sandbox/archive.py``), for comparison."""
    exclude = tuple(exclude)
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        rel_root = "" if rel_root == "." else rel_root
        dirs[:] = [
            d for d in dirs if not _excluded(posixpath.join(rel_root, d).lstrip("/"), exclude)
        ]
        target_root = dest / rel_root if rel_root else dest
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                os.symlink(os.readlink(full), target_root / name)
            else:
                (target_root / name).mkdir(exist_ok=True)
        for name in files:
            rel = posixpath.join(rel_root, name) if rel_root else name
            if _excluded(rel, exclude):
                continue
            full = os.path.join(root, name)
            if os.path.islink(full):
                os.symlink(os.readlink(full), target_root / name)
            elif os.path.isfile(full):
                shutil.copy2(full, target_root / name, follow_symlinks=False)


class Containers:
    """Fresh containers shaped like a sandbox's workspace (an anonymous volume)."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.client = get_client()

    def fresh(self) -> tuple[Any, Path]:
        ct = self.client.containers.create(
            self.image,
            ["sleep", "infinity"],
            init=True,
            labels=creator_labels("container"),  # gc-able if this process dies
            network_mode="none",
            mounts=[Mount(target="/workspace", source="", type="volume")],
        )
        ct.start()
        mount = next(m for m in ct.attrs["Mounts"] if m["Destination"] == "/workspace")
        return ct, Path(mount["Source"])


def measure(n: int, warmup: int = 1) -> tuple[list[Comparison], dict[str, Any]]:
    image = ensure_image()
    boxes = Containers(image)
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise RuntimeError("the docker CLI is not on PATH: it is the baseline")
    with tempfile.TemporaryDirectory(prefix="fsm-bench-copy-") as tmp:
        tree = make_tree(Path(tmp) / "tree")
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())

        def ours(ct: Any, volume: Path) -> None:
            copy_tree(tree, volume)

        def before(ct: Any, volume: Path) -> None:
            legacy_copy_tree(tree, volume)

        def docker_cp(ct: Any, volume: Path) -> None:
            subprocess.run([docker_cli, "cp", f"{tree}/.", f"{ct.id}:/workspace"], check=True)

        sides: dict[str, Callable[[Any, Path], None]] = {
            "ours": ours,
            "docker_cp": docker_cp,
            "before": before,
        }
        samples: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for round_no in range(warmup + n):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                ct, volume = boxes.fresh()
                try:
                    # Dirty pages of the previous side (or of anyone else) are written
                    # back first, so no side pays for another's writeback.
                    os.sync()
                    started = time.perf_counter()
                    sides[name](ct, volume)
                    elapsed = time.perf_counter() - started
                    copied = sum(1 for p in volume.rglob("*") if p.is_file())
                    if copied != FILES:
                        raise RuntimeError(f"{name} copied {copied} files, not {FILES}")
                finally:
                    ct.remove(force=True, v=True)
                if round_no >= warmup:
                    samples[name].append(elapsed)
    stats = stats_of(samples)
    comps = [
        Comparison(
            name="workspace_copy_5000",
            ours_label="copy_tree into a fresh container's workspace volume (volume_fill.py)",
            baseline_label="docker cp <tree>/. <container>:/workspace into an identical one",
            ours=stats["ours"],
            baseline=stats["docker_cp"],
            target=1.0,
            notes=(f"{FILES} files, {size / 1e6:.1f} MB, 121 folders",),
        ),
        Comparison(
            name="workspace_copy_vs_before",
            ours_label="copy_tree (this tree)",
            baseline_label="os.walk + shutil.copy2 per file (before issue 17)",
            ours=stats["ours"],
            baseline=stats["before"],
            target=1.0,
        ),
    ]
    return comps, {"files": FILES, "bytes": size, "image": image}


def main(argv: Sequence[str] | None = None) -> int:
    _, n = parse_runs(NAME, argv, quick=3, full=10)
    facts = machine_facts()
    comps, extra = measure(n)
    title = f"workspace copy (median of {n}, interleaved)"
    path = save_comparisons(NAME, title, comps, argv=argv, facts=facts, **extra)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
