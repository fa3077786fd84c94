"""The host copy that fills a workspace volume (``sandbox/volume_fill.py``), on plain folders.

It must copy exactly what the tar path would (``selected_files``), keep modes, times and
links, and never write through a link it finds in the destination (a volume starts
with the image's ``/workspace``, which an image can fill with links to host paths).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.archive import selected_files
from sandbox.errors import SandboxError
from sandbox.volume_fill import copy_tree

EXCLUDE = (".git", ".aider_fsm/artifacts", ".aider_fsm/metrics.json")


def _repo(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    (root / ".aider_fsm" / "artifacts" / "old").mkdir(parents=True)
    (root / ".aider_fsm" / "artifacts" / "old" / "x").write_text("old run\n")
    (root / ".aider_fsm" / "metrics.json").write_text("{}")
    (root / ".aider_fsm" / "stage.sh").write_text("echo hi\n")
    (root / "README.md").write_text("# repo\n")
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    for i in range(300):
        (root / "pkg" / ("sub" if i % 3 else "") / f"m{i}.py").write_text(f"x = {i}\n" * i)
    run = root / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o751)
    os.utime(root / "README.md", ns=(1_000_000_000_123, 1_500_000_000_456_789_000))
    (root / "link-to-readme").symlink_to("README.md")
    (root / "pkg-link").symlink_to("pkg")
    (root / "dangling").symlink_to("/nowhere/at/all")
    os.mkfifo(root / "fifo")
    return root


def test_copies_what_the_tar_path_selects_with_modes_times_and_links(tmp_path: Path) -> None:
    src = _repo(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    copy_tree(src, dest, EXCLUDE, workers=3)
    copied = sorted(
        str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_symlink() or p.is_file()
    )
    assert copied == sorted(selected_files(src, EXCLUDE))
    assert not (dest / ".git").exists() and not (dest / ".aider_fsm" / "artifacts").exists()
    assert not (dest / ".aider_fsm" / "metrics.json").exists() and not (dest / "fifo").exists()
    for rel in copied:
        s, d = src / rel, dest / rel
        if s.is_symlink():
            assert d.is_symlink() and os.readlink(d) == os.readlink(s), rel
            continue
        assert d.read_bytes() == s.read_bytes(), rel
        assert d.stat().st_mode == s.stat().st_mode, rel
        assert d.stat().st_mtime_ns == s.stat().st_mtime_ns, rel
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o751


def test_refuses_to_copy_through_a_link_planted_in_the_volume(tmp_path: Path) -> None:
    src = _repo(tmp_path / "src")
    outside = tmp_path / "host-dir"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "pkg").symlink_to(outside)  # absolute: on the host it leaves the volume
    with pytest.raises(SandboxError, match="'pkg' is not a plain directory"):
        copy_tree(src, dest, EXCLUDE)
    assert list(outside.iterdir()) == []


def test_refuses_to_write_a_file_through_a_planted_link(tmp_path: Path) -> None:
    src = _repo(tmp_path / "src")
    victim = tmp_path / "host-file"
    victim.write_text("precious\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "README.md").symlink_to(victim)
    with pytest.raises(SandboxError, match=r"'README\.md' is a link"):
        copy_tree(src, dest, EXCLUDE)
    assert victim.read_text() == "precious\n"
