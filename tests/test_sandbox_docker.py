"""Promises only a container can keep, each attacked against the real engine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import EngineUnavailable, Limits, NetworkPolicy, SandboxSpec, open_sandbox
from sandbox.docker import DockerSandbox, find_sandbox_containers
from sandbox.engine import LABEL_CREATOR_PID, LABEL_SANDBOX, get_client

pytestmark = pytest.mark.docker


def _in_container(sb: object) -> DockerSandbox:
    """Destructive fixtures must never run on the host: prove it before anything else."""
    assert isinstance(sb, DockerSandbox), "destructive test refused: not a DockerSandbox"
    canary = f"/fsm-canary-{uuid.uuid4().hex}"
    res = sb.exec(f"touch {canary} && test -f {canary}")
    assert res.exit_code == 0
    assert not os.path.exists(canary), "canary appeared on the host: NOT isolated, aborting"
    return sb


def test_one_container_reused_by_every_exec(docker_sandbox: DockerSandbox) -> None:
    ids = {docker_sandbox.exec("hostname").stdout for _ in range(3)}
    assert len(ids) == 1
    assert len(find_sandbox_containers(docker_sandbox.sandbox_id)) == 1


def test_copy_mode_never_writes_host(docker_sandbox: DockerSandbox, repo_dir: Path) -> None:
    res = docker_sandbox.exec("echo pwned > README.md && rm src/main.py && touch new.txt")
    assert res.exit_code == 0
    assert (repo_dir / "README.md").read_text() == "# demo\n"
    assert (repo_dir / "src" / "main.py").exists()
    assert not (repo_dir / "new.txt").exists()


def test_bind_mode_writes_host_on_request(default_image: str, repo_dir: Path) -> None:
    with open_sandbox(
        SandboxSpec(workspace_src=repo_dir, image=default_image, workspace_mode="bind")
    ) as sb:
        assert sb.exec("echo from-container > bound.txt").exit_code == 0
    assert (repo_dir / "bound.txt").read_text() == "from-container\n"


def test_close_removes_container(default_image: str) -> None:
    sb = open_sandbox(SandboxSpec(image=default_image))
    sid = sb.sandbox_id
    assert find_sandbox_containers(sid)
    sb.close()
    assert find_sandbox_containers(sid) == []


def test_oom_is_reported(default_image: str) -> None:
    with open_sandbox(SandboxSpec(image=default_image, limits=Limits(memory="128m"))) as sb:
        bomb = "python3 -c 'x=[]\nwhile True: x.append(bytearray(8<<20))'"
        res = sb.exec(bomb, timeout=60)
        assert res.oom_killed, res
        assert res.exit_code == 137
        after = sb.exec("echo alive")
        assert after.ok and not after.oom_killed


def test_memory_limit_has_no_swap_on_top(docker_sandbox: DockerSandbox) -> None:
    attrs = get_client().api.inspect_container(docker_sandbox.container_id)["HostConfig"]
    assert attrs["Memory"] > 0
    assert attrs["MemorySwap"] == attrs["Memory"]
    assert attrs["NanoCpus"] > 0 and attrs["PidsLimit"] > 0
    assert attrs["Init"] is True


def test_fork_bomb_is_contained_and_sandbox_stays_usable(default_image: str) -> None:
    with open_sandbox(SandboxSpec(image=default_image, limits=Limits(pids=128))) as sb:
        sb = _in_container(sb)
        res = sb.exec("bomb() { bomb | bomb & }; bomb; sleep 60", timeout=5)
        assert res.timed_out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = sb.exec("ps -e --no-headers | wc -l", timeout=20)
            if probe.ok and int(probe.stdout.strip()) < 20:
                break
            time.sleep(0.5)
        assert probe.ok, probe
        assert int(probe.stdout.strip()) < 20, "bomb processes survived the timeout kill"
    assert os.system("true") == 0  # the host still forks


def test_process_limits_and_privileges(docker_sandbox: DockerSandbox) -> None:
    res = docker_sandbox.exec("ulimit -n; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status")
    lines = res.stdout.split()
    assert lines[0] == "4096"
    status = dict(zip(lines[1::2], lines[2::2], strict=True))
    assert status["NoNewPrivs:"] == "1"
    # CHOWN(0) DAC_OVERRIDE(1) FOWNER(3) FSETID(4) SETGID(6) SETUID(7): nothing else.
    assert int(status["CapEff:"], 16) == (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (
        1 << 7
    )
    # Without CAP_SYS_ADMIN / CAP_NET_ADMIN the classic escapes fail.
    assert docker_sandbox.exec("mount -t tmpfs none /mnt").exit_code != 0
    assert docker_sandbox.exec("ip link add x type dummy 2>&1 || exit 1").exit_code != 0


def test_docker_socket_is_never_mounted(docker_sandbox: DockerSandbox) -> None:
    res = docker_sandbox.exec(
        "ls /var/run/docker.sock /run/docker.sock 2>&1; mount | grep -c docker.sock"
    )
    assert "No such file" in res.stdout
    assert res.stdout.strip().endswith("0")


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's 0.0.0.0 (reachable from bridges unless we block it)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"HELLO\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def _host_gateway_ip() -> str:
    """The host's address on our egress bridge: reachable from there, never from ``none``."""
    from sandbox.network import ensure_egress_network

    net = ensure_egress_network(get_client())
    net.reload()
    return str(net.attrs["IPAM"]["Config"][0]["Gateway"])


CONNECT = 'python3 -c "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print(s.recv(10).decode().strip())"'


def test_network_none_has_no_egress(docker_sandbox: DockerSandbox, host_listener: int) -> None:
    assert docker_sandbox.network_policy == NetworkPolicy.NONE
    res = docker_sandbox.exec(f"{CONNECT} {_host_gateway_ip()} {host_listener}", timeout=20)
    assert res.exit_code != 0 and "HELLO" not in res.stdout
    assert "unreachable" in res.stderr.lower() or "timed out" in res.stderr.lower(), res.stderr
    dns = docker_sandbox.exec("getent hosts pypi.org", timeout=20)
    assert dns.exit_code != 0
    links = docker_sandbox.exec("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
    assert links.stdout.split() == ["lo"]


def test_network_switches_while_running(docker_sandbox: DockerSandbox, host_listener: int) -> None:
    # Egress reaches the outside world (names resolve through the engine's DNS), never
    # the host itself: the gateway listener stays dropped (issue 15 item 6).
    host = f"{CONNECT} {_host_gateway_ip()} {host_listener}"
    outside = "getent hosts pypi.org"
    docker_sandbox.exec("nohup sleep 600 >/dev/null 2>&1 &")
    docker_sandbox.set_network(NetworkPolicy.EGRESS)
    on = docker_sandbox.exec(outside, timeout=20)
    assert on.exit_code == 0 and on.stdout.strip(), on
    assert "HELLO" not in docker_sandbox.exec(host, timeout=20).stdout
    docker_sandbox.set_network(NetworkPolicy.NONE)
    off = docker_sandbox.exec(outside, timeout=20)
    assert off.exit_code != 0
    assert docker_sandbox.exec("pgrep -f 'sleep 600'").ok, (
        "switching must not restart the container"
    )


def test_egress_passes_host_ca_bundle_for_pip(default_image: str) -> None:
    with open_sandbox(SandboxSpec(image=default_image, network=NetworkPolicy.EGRESS)) as sb:
        res = sb.exec("pip download --no-deps --timeout 20 --retries 1 -d /tmp/dl six", timeout=120)
        assert res.exit_code == 0, res.stderr[-2000:]
        assert "six" in sb.exec("ls /tmp/dl").stdout


def test_large_output_keeps_memory_bounded(docker_sandbox: DockerSandbox) -> None:
    tracemalloc.start()
    try:
        res = docker_sandbox.exec("head -c 500000000 /dev/zero", timeout=240)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.exit_code == 0 and res.truncated
    assert peak < 100 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"


def test_labels_and_gc_after_creator_sigkill(default_image: str, tmp_path: Path) -> None:
    from sandbox.reaper import gc

    script = tmp_path / "creator.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        from sandbox import open_sandbox, SandboxSpec
        sb = open_sandbox(SandboxSpec(image={default_image!r}))
        print(sb.sandbox_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    sid = proc.stdout.strip()
    left = find_sandbox_containers(sid)
    assert len(left) == 1, "the creator was killed before it could clean up"
    labels = left[0].labels
    assert labels[LABEL_SANDBOX] == sid and labels[LABEL_CREATOR_PID].isdigit()
    assert "fsm-runner.created-at" in labels
    report = gc()
    assert left[0].name in report.containers
    assert find_sandbox_containers(sid) == []


def test_gc_keeps_live_sandboxes(docker_sandbox: DockerSandbox) -> None:
    from sandbox.reaper import gc

    gc()
    assert find_sandbox_containers(docker_sandbox.sandbox_id), "gc removed a live creator's sandbox"


def test_engine_missing_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import engine

    engine.reset_client()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    try:
        with pytest.raises(EngineUnavailable) as info:
            open_sandbox(SandboxSpec())
        assert "make engine" in str(info.value)
        assert not engine.engine_available()
    finally:
        monkeypatch.undo()
        engine.reset_client()
    assert engine.engine_available()


def test_stale_engine_socket_is_unavailable_without_leaking(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dead dockerd leaves its socket file: that must read as "unavailable", and the
    failed connect must not leak a socket (ResourceWarnings are errors in this suite)."""
    import gc as garbage
    import socket

    from sandbox import engine

    stale = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(stale))  # bound, never listening: connect is refused
    engine.reset_client()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{stale}")
    try:
        with pytest.raises(EngineUnavailable, match=r"engine socket .*docker\.sock"):
            engine.get_client()
        garbage.collect()
    finally:
        monkeypatch.undo()
        engine.reset_client()


def test_named_missing_image_is_a_clear_error() -> None:
    from sandbox import SandboxError

    with pytest.raises(SandboxError, match="not found locally"):
        open_sandbox(SandboxSpec(image="no-such/image:nope"))


def test_rm_rf_root_stays_inside(default_image: str, repo_dir: Path) -> None:
    with open_sandbox(SandboxSpec(workspace_src=repo_dir, image=default_image)) as sb:
        sb = _in_container(sb)
        sb.exec("rm -rf --no-preserve-root / 2>/dev/null", timeout=60)
        assert sb.exec("ls /bin/sh").exit_code != 0  # it really ran, inside
    assert (repo_dir / "README.md").read_text() == "# demo\n"
    assert Path("/etc/passwd").exists() and Path("/bin/sh").exists()


def test_llm_policy_reaches_only_the_model_port(default_image: str, host_listener: int) -> None:
    """A model server on the host's 127.0.0.1 is reachable through the relay; nothing else is."""
    model = socket.socket()
    model.bind(("127.0.0.1", 0))
    model.listen(4)
    model.settimeout(0.2)
    port = model.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = model.accept()
            except OSError:
                continue
            conn.sendall(b"MODEL\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        spec = SandboxSpec(
            image=default_image, network=NetworkPolicy.LLM, llm_endpoint=("127.0.0.1", port)
        )
        with open_sandbox(spec) as sb:
            assert sb.llm_address is not None
            gw, relay_port = sb.llm_address
            ok = sb.exec(f"{CONNECT} {gw} {relay_port}", timeout=20)
            assert ok.stdout.strip() == "MODEL", ok
            other = sb.exec(f"{CONNECT} {gw} {host_listener}", timeout=20)
            assert "HELLO" not in other.stdout and other.exit_code != 0
            egress = sb.exec(f"{CONNECT} {_host_gateway_ip()} {host_listener}", timeout=20)
            assert egress.exit_code != 0
    finally:
        stop.set()
        t.join()
        model.close()
