"""Behaviour every sandbox backend promises, run against each backend.

The docker variant runs against the real engine; the local variant only where it can
keep the promise without a container.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import NetworkPolicy, Sandbox, SandboxClosed, SandboxSpec, UnsafeArchive, open_sandbox


@pytest.fixture(params=["docker", "docker-archive", "local"])
def sb(
    request: pytest.FixtureRequest, repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sandbox]:
    backend = request.param
    if backend == "docker-archive":
        # The portable path (non-root / remote engine): copy and read through the archive API.
        monkeypatch.setenv("FSM_RUNNER_WORKSPACE_COPY", "archive")
        backend = "docker"
    if backend == "docker":
        request.applymarker(pytest.mark.docker)
        image = request.getfixturevalue("default_image")
        spec = SandboxSpec(workspace_src=repo_dir, image=image)
    else:
        spec = SandboxSpec(workspace_src=repo_dir, backend="local")
    with open_sandbox(spec) as box:
        yield box


def test_exit_code_is_data_and_streams_are_separate(sb: Sandbox) -> None:
    res = sb.exec("cat README.md; echo oops >&2; exit 3")
    assert res.exit_code == 3
    assert res.stdout == "# demo\n"
    assert res.stderr == "oops\n"
    assert not res.timed_out and not res.truncated and not res.ok


def test_env_and_cwd(sb: Sandbox) -> None:
    res = sb.exec('echo "$GREETING"; pwd', env={"GREETING": "hi there"}, cwd="src")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0] == "hi there"
    assert lines[1].endswith("/src")


def _unique_sleep() -> str:
    """A ``sleep`` no other process has: the local backend's ``ps`` sees the whole host."""
    return f"300.{secrets.randbelow(10**9):09d}"


def test_timeout_kills_whole_tree(sb: Sandbox) -> None:
    t = _unique_sleep()
    res = sb.exec(f"sh -c 'sleep {t} & sleep {t}'", timeout=1.5)
    assert res.timed_out
    assert res.exit_code != 0
    assert res.duration_s < 20
    left = sb.exec(f"ps -eo args | grep '[s]leep {t}' || true")
    assert left.stdout.strip() == "", f"survivors: {left.stdout}"


def test_timeout_kills_setsid_escapes(sb: Sandbox) -> None:
    t = _unique_sleep()
    res = sb.exec(f"setsid sleep {t}1 & setsid sh -c 'sleep {t}2' & sleep {t}3", timeout=1.5)
    assert res.timed_out
    left = sb.exec(f"ps -eo args | grep '[s]leep {t}[123]' || true")
    assert left.stdout.strip() == "", f"survivors: {left.stdout}"


def test_background_process_survives_between_execs(sb: Sandbox) -> None:
    sb.exec("nohup sleep 120 >/dev/null 2>&1 &")
    res = sb.exec("ps -eo args | grep '[s]leep 120'")
    assert res.exit_code == 0 and "sleep 120" in res.stdout


def test_output_is_capped_and_flagged(sb: Sandbox, tmp_path: Path) -> None:
    res = sb.exec(
        "head -c 3000000 /dev/zero | tr '\\0' x", output_limit=1000, stream_to=tmp_path / "out"
    )
    assert res.truncated
    assert len(res.stdout) == 1000
    assert (tmp_path / "out" / "stdout.txt").stat().st_size == 3_000_000


def test_not_truncated_under_limit(sb: Sandbox) -> None:
    res = sb.exec("printf 'abc'", output_limit=3)
    assert res.stdout == "abc" and not res.truncated


def test_read_file_push_pull(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("payload")
    sb.push(src, "pushed")
    assert sb.read_file("pushed/d/f.txt") == b"payload"
    assert sb.read_file("pushed/d/f.txt", limit=3) == b"pay"
    sb.exec("mkdir -p out/sub && echo result > out/sub/r.txt")
    names = sb.pull("out", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "r.txt").read_text() == "result\n"
    assert "sub/r.txt" in names
    with pytest.raises(FileNotFoundError):
        sb.read_file("no/such/file")
    with pytest.raises(FileNotFoundError):
        sb.pull("no/such/dir", tmp_path / "x")


def test_pull_leaves_oversized_files_behind_with_a_note(sb: Sandbox, tmp_path: Path) -> None:
    sb.exec("mkdir -p big && echo small > big/s.txt && truncate -s 10M big/sparse.bin")
    names = sb.pull("big", tmp_path / "big", max_file_bytes=1024 * 1024)
    assert (tmp_path / "big" / "s.txt").read_text() == "small\n"
    assert not (tmp_path / "big" / "sparse.bin").exists()
    note = (tmp_path / "big" / "sparse.bin.omitted").read_text()
    assert "10485760 bytes" in note
    assert sorted(names) == ["s.txt", "sparse.bin.omitted"]
    # A single file pulled on its own obeys the cap too.
    assert sb.pull("big/sparse.bin", tmp_path / "one", max_file_bytes=1024) == [
        "sparse.bin.omitted"
    ]


def test_open_file_streams_a_file_and_never_follows_links(sb: Sandbox) -> None:
    sb.exec("head -c 3000000 /dev/zero | tr '\\0' x > stream.txt && echo end >> stream.txt")
    with sb.open_file("stream.txt") as fh:
        assert fh.read(5) == b"xxxxx"
        rest = fh.read()
    assert len(rest) == 3_000_000 - 5 + 4 and rest.endswith(b"xend\n")
    # Stopping early is fine: a reader that refuses a huge file need not drain it.
    sb.exec("truncate -s 256M sparse.bin")
    with sb.open_file("sparse.bin") as fh:
        assert fh.read(4) == b"\0\0\0\0"
    sb.exec("ln -s /etc/passwd passwd_link && mkdir -p adir")
    for refused in ("passwd_link", "adir", "no/such/file"):
        with pytest.raises(FileNotFoundError), sb.open_file(refused) as fh:
            fh.read()
    assert sb.exec("true").exit_code == 0  # the sandbox is still usable after all that


def test_on_output_sees_output_as_it_arrives_and_cannot_break_the_command(sb: Sandbox) -> None:
    seen: list[tuple[int, bytes]] = []
    res = sb.exec("echo one; echo two >&2; echo three", on_output=lambda s, d: seen.append((s, d)))
    assert res.exit_code == 0
    assert b"".join(d for s, d in seen if s == 1) == b"one\nthree\n"
    assert b"".join(d for s, d in seen if s == 2) == b"two\n"

    calls = []

    def broken(stream: int, data: bytes) -> None:
        calls.append(data)
        raise RuntimeError("watcher bug")

    res = sb.exec("echo a; sleep 0.2; echo b; exit 4", on_output=broken)
    assert res.exit_code == 4 and res.stdout == "a\nb\n"
    assert len(calls) == 1  # called once, then left alone


def test_read_file_never_follows_links(sb: Sandbox) -> None:
    sb.exec("ln -s /etc/passwd passwd_link")
    with pytest.raises(FileNotFoundError):
        sb.read_file("passwd_link")


def test_pull_refuses_link_to_etc_passwd(sb: Sandbox, tmp_path: Path) -> None:
    sb.exec(
        "mkdir -p art && echo ok > art/a.txt && ln -s /etc/passwd art/evil && ln -s ../../.. art/up"
    )
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive):
        sb.pull("art", dest)
    # Nothing at all is written when any member is unsafe.
    assert not (dest / "a.txt").exists()
    assert not (dest / "evil").exists()


def test_pull_refuses_fifo(sb: Sandbox, tmp_path: Path) -> None:
    sb.exec("mkdir -p art2 && mkfifo art2/pipe")
    with pytest.raises(UnsafeArchive):
        sb.pull("art2", tmp_path / "d2")


def test_pull_lists_inner_links_and_never_creates_them(sb: Sandbox, tmp_path: Path) -> None:
    sb.exec(
        "mkdir -p art3/d && echo x > art3/t.txt && ln -s t.txt art3/inner && ln art3/t.txt art3/d/hard"
    )
    names = sb.pull("art3", tmp_path / "d3")
    dest = tmp_path / "d3"
    links = json.loads((dest / ".links.json").read_text())["links"]
    assert {"path": "inner", "kind": "symlink", "target": "t.txt"} in links
    assert not (dest / "inner").exists() and not (dest / "inner").is_symlink()
    assert (dest / "t.txt").read_text() == "x\n" and ".links.json" in names
    # A hard link comes back as a file of its own: never linked on the host.
    assert (dest / "d" / "hard").read_text() == "x\n"
    assert all(p.lstat().st_nlink == 1 for p in dest.rglob("*") if p.is_file())
    # A second copy never goes into the first one's folder.
    with pytest.raises(FileExistsError):
        sb.pull("art3", dest)


def test_close_is_idempotent_and_final(sb: Sandbox) -> None:
    sb.close()
    sb.close()
    with pytest.raises(SandboxClosed):
        sb.exec("true")
    with pytest.raises(SandboxClosed):
        sb.set_network(NetworkPolicy.NONE)


def test_unknown_backend_lists_known() -> None:
    from sandbox import SandboxError

    with pytest.raises(SandboxError, match="known: docker, local"):
        open_sandbox(SandboxSpec(backend="podman"))  # type: ignore[arg-type]


def _tar(members: list[tarfile.TarInfo]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("/etc/evil", tarfile.REGTYPE, ""),
        ("a/../../evil", tarfile.REGTYPE, ""),
        ("lnk", tarfile.SYMTYPE, "/etc/passwd"),
        ("d/lnk", tarfile.SYMTYPE, "../../outside"),
        ("hard", tarfile.LNKTYPE, "../outside"),
        ("dev", tarfile.CHRTYPE, ""),
        ("fifo", tarfile.FIFOTYPE, ""),
    ],
)
def test_safe_extract_refuses_hostile_members(
    tmp_path: Path, name: str, kind: bytes, link: str
) -> None:
    from sandbox.archive import safe_extract

    ok = tarfile.TarInfo("fine.txt")
    ok.size = 1
    bad = tarfile.TarInfo(name)
    bad.type = kind
    bad.linkname = link
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive):
        safe_extract(_tar([ok, bad]), dest)
    assert not (dest / "fine.txt").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()
