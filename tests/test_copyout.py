"""The host side of copy-out (issue 15 items 1 and 4) without an engine: the writer that
creates a fresh folder, never makes a link and never writes through one, its caps, and a
workspace folder changed under the copy between listing and reading."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from sandbox import copyout, hostfs
from sandbox.copyout import LINKS_FILE, OMITTED_FILE, CopyLimits, HostTree, replace_file_beneath
from sandbox.errors import UnsafeArchive


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            assert not path.is_symlink(), path
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def test_a_copy_creates_its_folder_and_never_enters_an_earlier_one(tmp_path: Path) -> None:
    tree = HostTree(tmp_path / "copy", CopyLimits())
    tree.add_dir("a")
    tree.add_file("a/f.txt", 3, io.BytesIO(b"abcdef"))  # a file that grew: cut at its size
    tree.add_link("a/l", "f.txt", "symlink")
    assert sorted(tree.finish()) == [LINKS_FILE, "a", "a/f.txt"]
    assert _files(tmp_path / "copy")["a/f.txt"] == b"abc"
    with pytest.raises(FileExistsError):
        HostTree(tmp_path / "copy", CopyLimits())


def test_entries_outside_folders_this_copy_made_stay_behind(tmp_path: Path) -> None:
    """A tar that names ``x/f`` without ``x`` (or after ``x`` was refused) writes nothing there."""
    (tmp_path / "outside").mkdir()
    tree = HostTree(tmp_path / "copy", CopyLimits(max_entries=1))
    tree.add_file(".omitted", 1, io.BytesIO(b"x"))  # reserved for the runner's note
    tree.add_dir("kept")
    tree.add_dir("big")  # over the entry cap: left behind, and so is all it holds
    tree.add_file("big/f", 1, io.BytesIO(b"x"))
    tree.add_file("never/f", 1, io.BytesIO(b"x"))
    tree.finish()
    note = (tmp_path / "copy" / OMITTED_FILE).read_text()
    assert ".omitted\tthe name is reserved" in note
    assert "big/\tover the 1-entry limit" in note
    assert "... and 2 more entries not copied" in note
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [OMITTED_FILE, "kept"]


def test_a_name_taken_by_an_earlier_entry_is_never_overwritten(tmp_path: Path) -> None:
    tree = HostTree(tmp_path / "copy", CopyLimits(max_file_bytes=2))
    tree.add_file("x.omitted", 5, io.BytesIO(b"mine!"))  # over the cap, so not this one...
    tree.add_file("x.omitted", 1, io.BytesIO(b"1"))
    tree.add_file("x", 10, io.BytesIO(b"0123456789"))  # ...whose note now has no room
    tree.add_file("x.omitted", 1, io.BytesIO(b"2"))
    tree.finish()
    files = _files(tmp_path / "copy")
    assert files["x.omitted"] == b"1"
    assert "x\t10 bytes, over the 2-byte limit for one file" in files[OMITTED_FILE].decode()


def test_bytes_are_counted_by_apparent_size(tmp_path: Path) -> None:
    """A sparse file is what it becomes on the host: its full size counts against the cap."""
    tree = HostTree(tmp_path / "copy", CopyLimits(max_total_bytes=100))
    assert tree.add_file("a", 60, io.BytesIO(b"\0" * 60))
    assert not tree.add_file("b", 60, io.BytesIO(b"\0" * 60))
    tree.finish()
    assert "b\t60 bytes, over the 100-byte limit" in (tmp_path / "copy" / OMITTED_FILE).read_text()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    tree = HostTree(tmp_path / "copy", CopyLimits())
    tree.add_dir("a")
    tree.add_file("a/f", 1, io.BytesIO(b"x"))
    tree.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("swap", ["file", "folder"])
def test_an_entry_swapped_for_a_link_after_the_listing_fails_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """The sandbox races the copy: the listing saw a file, the read finds a link out."""
    secret = tmp_path / "host" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("HOST-SECRET\n")
    volume = tmp_path / "volume"
    (volume / "art" / "sub").mkdir(parents=True)
    (volume / "art" / "sub" / "secret.txt").write_text("inside\n")
    real_collect = hostfs._collect
    depth = [0]

    def collect_then_swap(*args: object, **kwargs: object) -> None:
        depth[0] += 1
        real_collect(*args, **kwargs)  # type: ignore[arg-type]
        depth[0] -= 1
        if depth[0]:
            return  # the swap happens once the whole listing is taken
        if swap == "file":
            (volume / "art" / "sub" / "secret.txt").unlink()
            (volume / "art" / "sub" / "secret.txt").symlink_to(secret)
        else:
            (volume / "art" / "sub" / "secret.txt").unlink()
            (volume / "art" / "sub").rmdir()
            (volume / "art" / "sub").symlink_to(secret.parent)

    monkeypatch.setattr(hostfs, "_collect", collect_then_swap)
    with pytest.raises(UnsafeArchive, match="changed while being copied"):
        hostfs.copy_beneath(volume, "art", tmp_path / "dest", CopyLimits())
    assert not (tmp_path / "dest").exists()


def test_hostfs_copy_lists_links_and_refuses_the_escaping_ones(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "art").mkdir(parents=True)
    (volume / "art" / "f").write_text("x")
    (volume / "art" / "in").symlink_to("f")
    names = hostfs.copy_beneath(volume, "art", tmp_path / "d1", CopyLimits())
    assert sorted(names) == [LINKS_FILE, "f"]
    listed = json.loads((tmp_path / "d1" / LINKS_FILE).read_text())["links"]
    assert listed == [{"path": "in", "kind": "symlink", "target": "f"}]
    with pytest.raises(UnsafeArchive, match="never copied"):
        hostfs.copy_beneath(volume, "art/in", tmp_path / "d2", CopyLimits())
    (volume / "art" / "up").symlink_to("../../..")
    with pytest.raises(UnsafeArchive, match="outside"):
        hostfs.copy_beneath(volume, "art", tmp_path / "d3", CopyLimits())
    assert not (tmp_path / "d3").exists()


def test_runner_writes_never_pass_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "dir_link").symlink_to(outside)
    (root / "file_link").symlink_to(outside / "victim")
    with pytest.raises(OSError):
        replace_file_beneath(root, "dir_link/x", b"x")
    replace_file_beneath(root, "file_link", b"new")  # the link is replaced, not followed
    assert not (root / "file_link").is_symlink()
    assert list(outside.iterdir()) == []
    assert (root / "file_link").read_bytes() == b"new"


def test_replace_tree_swaps_whole_copies(tmp_path: Path) -> None:
    for name, text in (("a", "first"), ("b", "second")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(text)
    copyout.replace_tree(tmp_path, "a", "current")
    copyout.replace_tree(tmp_path, "b", "current")
    assert (tmp_path / "current" / "f").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


# -- the disk budget's parts that need no engine -------------------------------------------


@pytest.mark.parametrize("bad", ["0", "0g", "-1g", "512k", "1e29", "2p", "10 gigabytes", ""])
def test_a_disk_budget_that_is_no_budget_is_refused_at_once(bad: str) -> None:
    from sandbox import Limits

    with pytest.raises(ValueError, match="disk budget"):
        Limits(disk=bad)


def test_disk_budgets_parse_like_memory_limits() -> None:
    from sandbox import Limits
    from sandbox.disk import human, parse_size

    assert Limits().disk == "10g"
    assert Limits(disk=None).disk is None  # the caller's explicit "no budget"
    assert parse_size("64m") == 64 << 20 and parse_size("10G") == 10 << 30
    assert human(int(10.3 * (1 << 30))) == "10.3g"


def test_a_budget_that_cannot_be_measured_refuses_to_open() -> None:
    """No writable layer visible (another storage driver, a remote engine): fail closed."""
    from sandbox.disk import install
    from sandbox.errors import SandboxError

    attrs = {"GraphDriver": {"Name": "btrfs", "Data": {}}}
    with pytest.raises(SandboxError, match=r"disk budget 10g cannot be enforced.*btrfs"):
        install("10g", attrs, None, Path("/proc/self/cgroup"), os.getpid())
    assert install(None, attrs, None, None, os.getpid()) is None


@pytest.mark.parametrize("name", ["FSM_RUNNER_MAX_PASS_BYTES", "FSM_RUNNER_MAX_PASS_ENTRIES"])
def test_pass_caps_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from runner.errors import RunnerError
    from runner.runs.run_dir import max_pass_bytes, max_pass_entries

    read = max_pass_bytes if name.endswith("BYTES") else max_pass_entries
    assert read() == (256 << 20 if name.endswith("BYTES") else 10_000)
    monkeypatch.setenv(name, "123")
    assert read() == 123
    for bad in ("0", "-5", "lots"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(RunnerError, match=name):
            read()


def test_deep_trees_and_odd_names_stay_bounded_and_readable(tmp_path: Path) -> None:
    tree = HostTree(tmp_path / "copy", CopyLimits(max_entries=70, max_total_bytes=50))
    rel = "d"
    for _ in range(70):  # a 1500-level tree arrives the same way, level by level
        tree.add_dir(rel)
        rel += "/d"
    tree.add_file("x\nfake\tline", 5, io.BytesIO(b"x" * 5))
    tree.add_file("y\nnext", 99, io.BytesIO(b"y" * 99))  # over the cap: named, escaped
    tree.finish()
    note = (tmp_path / "copy" / OMITTED_FILE).read_text()
    assert f"\tdeeper than {copyout.MAX_DEPTH} levels" in note
    assert "y\\nnext\t" in note and "\ny\n" not in note
