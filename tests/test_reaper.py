"""``fsm-runner gc`` removes what dead sessions left, and only that (issue 15 items 3, 7, 13).

The engine is shared: containers someone started by hand from our base image or from a
bootstrap snapshot (even one dressed up with our labels and our naming scheme, through
its image) are not ours, and survive ``gc`` and ``gc --all``. A session killed with
SIGKILL leaves its container, llm network, workspace volume and firewall rules: ``gc``
removes every one of them. Concurrent gcs racing over the same leftovers (the engine's
409 "removal already in progress") all finish and say what they did.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from sandbox import SandboxSpec, open_sandbox
from sandbox.engine import (
    LABEL_CREATOR_PID,
    LABEL_CREATOR_START,
    LABEL_SANDBOX,
    SESSION_KEYS,
    creator_labels,
    get_client,
)
from sandbox.firewall import tagged_rules
from sandbox.reaper import GcReport, gc
from sandbox.snapshots import commit_snapshot, image_id

pytestmark = pytest.mark.docker

FSM = Path(sys.executable).with_name("fsm-runner")

CHILD = r"""
import sys, time
from pathlib import Path
from sandbox import NetworkPolicy, SandboxSpec, open_sandbox
spec = SandboxSpec(
    image=sys.argv[1],
    workspace_src=Path(sys.argv[2]),
    llm_endpoint=("127.0.0.1", int(sys.argv[3])),
    network=NetworkPolicy.EGRESS,
)
sb = open_sandbox(spec)
print(sb.sandbox_id, flush=True)
time.sleep(600)
"""


def fsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FSM), *args], capture_output=True, text=True, timeout=300, check=False
    )


def port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def session_objects(sid: str) -> dict[str, list[str]]:
    """Everything of one sandbox left on the engine and in the host firewall."""
    client = get_client()
    label = {"label": f"{LABEL_SANDBOX}={sid}"}
    return {
        "containers": [
            c.name for c in client.containers.list(all=True, ignore_removed=True, filters=label)
        ],
        "networks": [n.name for n in client.networks.list(filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
        "rules": [f"{r.chain} {r.spec}" for r in tagged_rules() if r.sandbox_id == sid],
    }


@pytest.fixture
def hand_made(default_image: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Containers a user started by hand (no labels of ours at create) from: the base
    image, a bootstrap snapshot, and an image carrying old-style session labels of a dead
    creator, run under the name our sandboxes use."""
    client = get_client()
    marker = uuid.uuid4().hex
    made: dict[str, Any] = {}
    images: list[str] = []
    try:
        with open_sandbox(SandboxSpec(image=default_image, workspace_src=tmp_path)) as sb:
            sb.exec("echo baked > /opt/baked")
            key = f"reapertest{marker[:14]}"
            commit_snapshot(
                sb,
                key,
                base_image_id=image_id(default_image),
                labels={"fsm-runner.test": marker},
            )
        snapshot = f"fsm-runner/bootstrap:{key}"
        images.append(snapshot)
        fake_sid = marker[:12]
        lookalike = f"fsm-runner-test/lookalike:{marker[:8]}"
        legacy = {
            "fsm-runner.kind": "container",
            LABEL_SANDBOX: fake_sid,
            LABEL_CREATOR_PID: str(dead_pid()),
            LABEL_CREATOR_START: "1",
            "fsm-runner.creator-host": socket.gethostname(),
        }
        client.images.build(
            fileobj=io.BytesIO(f"FROM {default_image}\n".encode()),
            tag=lookalike,
            labels=legacy,
            rm=True,
        )
        images.append(lookalike)
        for what, image, name in (
            ("base", default_image, f"hand-base-{marker[:8]}"),
            ("snapshot", snapshot, f"hand-snap-{marker[:8]}"),
            ("lookalike", lookalike, f"fsm-{fake_sid}"),
        ):
            made[what] = client.containers.run(image, ["sleep", "600"], name=name, detach=True)
        made["lookalike_pid"] = int(legacy[LABEL_CREATOR_PID])
        made["snapshot_image"] = snapshot
        yield made
    finally:
        for key_, ct in made.items():
            if not key_.endswith(("_pid", "_image")):
                with contextlib.suppress(docker.errors.DockerException):
                    ct.remove(force=True)
        for image in images:
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image, force=True)


def test_images_carry_no_session_keys(default_image: str, hand_made: dict[str, Any]) -> None:
    client = get_client()
    base = client.images.get(default_image).labels
    assert base["fsm-runner.image.kind"] == "base"
    assert not set(base) & set(SESSION_KEYS), base
    snapshot = client.images.get(hand_made["snapshot_image"]).labels
    assert snapshot["fsm-runner.image.kind"] == "bootstrap-cache"
    # docker commit cannot drop a key: the container's session keys are blanked.
    blanked = {k: v for k, v in snapshot.items() if k in SESSION_KEYS or k == "fsm-runner.run-id"}
    assert blanked and set(blanked.values()) == {""}, snapshot


def test_gc_removes_a_killed_session_and_nothing_hand_made(
    default_image: str, tmp_path: Path, hand_made: dict[str, Any]
) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "f.txt").write_text("x")
    with (
        socket.create_server(("127.0.0.1", 0)) as model,  # an llm endpoint for the relay
        subprocess.Popen(
            [sys.executable, "-c", CHILD, default_image, str(tmp_path / "ws"), str(port(model))],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        ) as child,
    ):
        assert child.stdout is not None
        sid = child.stdout.readline().strip()
        assert sid, "the child opened no sandbox"
        left = session_objects(sid)
        assert left["containers"] == [f"fsm-{sid}"] and left["networks"] == [f"fsm-llm-{sid}"]
        assert len(left["volumes"]) == 1, left  # the workspace volume carries our labels
        assert len(left["rules"]) == 7, left  # egress: 3, llm: 3 + the relay's ACCEPT
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    # Someone removed the container without its volume: volume, network, rules remain.
    get_client().api.remove_container(f"fsm-{sid}", force=True, v=False)

    swept = fsm("gc")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert session_objects(sid) == {"containers": [], "networks": [], "volumes": [], "rules": []}
    for scoped in (
        ["--all", "--pid", str(hand_made["lookalike_pid"])],
        ["--all", "--pid", str(os.getpid())],
    ):
        assert fsm("gc", *scoped).returncode == 0
    for what in ("base", "snapshot", "lookalike"):
        hand_made[what].reload()  # raises NotFound when gc removed it
        assert hand_made[what].status == "running", what


def test_concurrent_gcs_race_over_the_same_leftovers_and_all_finish(default_image: str) -> None:
    """Containers with a big writable layer take a while to remove: three gcs at once hit
    the engine's 409 "removal already in progress" and must go on (issue 15 item 13)."""
    client = get_client()
    creator = dead_pid()
    names = []
    for _ in range(4):
        sid = uuid.uuid4().hex[:12]
        labels = {**creator_labels("container", sid), LABEL_CREATOR_PID: str(creator)}
        fill = "for i in range(40000): open(f'/var/tmp/f{i}', 'w').close()"
        ct = client.containers.run(
            default_image, ["python3", "-c", fill], name=f"fsm-{sid}", labels=labels, detach=True
        )
        names.append(ct.name)
    for name in names:
        client.containers.get(name).wait(timeout=120)
    reports: list[GcReport] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            reports.append(gc(creator_pids=[creator]))
        except BaseException as exc:  # the test fails on any
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert len(reports) == 3
    removed = [name for r in reports for name in r.containers]
    assert sorted(removed) == sorted(names)  # each one exactly once
    for r in reports:
        assert r.failed == [], r
        assert all("container fsm-" in line for line in r.in_progress), r
    assert [
        c.name for c in client.containers.list(all=True, ignore_removed=True) if c.name in names
    ] == []
