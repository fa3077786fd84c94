"""Warm pools (``sandbox/pool.py``): sandboxes made ahead keep every promise of fresh ones.

A pooled sandbox is created by the same code with the same settings (so its HostConfig
matches a fresh one's), is handed out once and removed by its session's close, and
carries the creator labels that let ``gc`` remove it when its creator dies.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import Limits, SandboxSpec, open_sandbox
from sandbox.docker import DockerSandbox, find_sandbox_containers
from sandbox.engine import LABEL_CREATOR_PID, LABEL_SANDBOX, get_client
from sandbox.errors import SandboxError
from sandbox.pool import WarmPool, install

pytestmark = pytest.mark.docker

HOST_CONFIG_KEYS = (
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "PidsLimit",
    "Ulimits",
    "CapAdd",
    "CapDrop",
    "SecurityOpt",
    "Privileged",
    "ReadonlyRootfs",
    "Tmpfs",
    "ShmSize",
    "NetworkMode",
    "Init",
    "IpcMode",
    "PidMode",
    "UsernsMode",
    "Devices",
    "Binds",
)


@pytest.fixture
def pool() -> Iterator[WarmPool]:
    warm = WarmPool(size=1, refill=True)
    install(warm)
    try:
        yield warm
    finally:
        install(None)
        warm.close()


def _spec(image: str, repo: Path, **kw: Any) -> SandboxSpec:
    return SandboxSpec(workspace_src=repo, image=image, labels={"test.case": "pool"}, **kw)


def _inspect(sb: DockerSandbox) -> dict[str, Any]:
    attrs: dict[str, Any] = get_client().api.inspect_container(sb.container_id)
    return attrs


def _isolation(attrs: dict[str, Any]) -> dict[str, Any]:
    host = attrs["HostConfig"]
    mounts = sorted(
        (m["Type"], m["Destination"], m["RW"], m["Source"] if m["Type"] == "bind" else "")
        for m in attrs["Mounts"]
    )
    config = attrs["Config"]
    return {
        "host": {k: host.get(k) for k in HOST_CONFIG_KEYS},
        "mounts": mounts,
        "networks": sorted(attrs["NetworkSettings"]["Networks"]),
        "user": config["User"],
        "cmd": config["Cmd"],
        "workdir": config["WorkingDir"],
        "env": sorted(config["Env"]),
        "image": config["Image"],
        "labels": {k: v for k, v in config["Labels"].items() if not k.startswith("fsm-runner.")},
    }


def test_a_pooled_sandbox_is_isolated_exactly_as_a_fresh_one(
    default_image: str, repo_dir: Path, pool: WarmPool
) -> None:
    spec = _spec(default_image, repo_dir, limits=Limits(memory="768m", cpus=0.5, pids=128))
    assert pool.prepare(spec)
    with open_sandbox(spec) as pooled:
        assert isinstance(pooled, DockerSandbox) and pooled.prepared
        install(None)
        with open_sandbox(spec) as fresh:
            assert isinstance(fresh, DockerSandbox) and not fresh.prepared
            assert _isolation(_inspect(pooled)) == _isolation(_inspect(fresh))
            host = _inspect(pooled)["HostConfig"]
            assert host["Memory"] == 768 * 1024 * 1024 and host["PidsLimit"] == 128
            assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"]
            # The workspace was copied in at adoption, and behaves as a fresh one's.
            for sb in (pooled, fresh):
                res = sb.exec("cat README.md && id -u && touch new && ls")
                assert res.ok and "# demo" in res.stdout and "new" in res.stdout, res
            assert not (repo_dir / "new").exists()
            assert pooled.describe()["prepared"] is True
            assert fresh.describe()["prepared"] is False


def test_a_pooled_sandbox_is_handed_out_once_and_removed_by_its_close(
    default_image: str, repo_dir: Path, pool: WarmPool
) -> None:
    spec = _spec(default_image, repo_dir)
    assert pool.prepare(spec)
    first = open_sandbox(spec)
    assert isinstance(first, DockerSandbox) and first.prepared
    first_id = first.sandbox_id
    first.exec("echo dirty > marker")
    first.close()
    assert find_sandbox_containers(first_id) == []  # removed, never back in the pool
    second = open_sandbox(spec)  # the refill, made while the first one was in use
    try:
        assert isinstance(second, DockerSandbox) and second.prepared
        assert second.sandbox_id != first_id
        assert second.container_id != first.container_id
        assert second.exec("test ! -e marker").ok, "a pooled workspace must start clean"
        with pytest.raises(SandboxError, match="only once"):
            second.adopt(spec)  # an adopted sandbox never serves a second spec
    finally:
        second.close()
    assert pool.hits == 2


def test_a_wrong_guess_opens_fresh_and_removes_the_guess(
    default_image: str, repo_dir: Path
) -> None:
    guess = WarmPool()  # one guess for one open, as fsm-runner run makes
    install(guess)
    try:
        spec = _spec(default_image, repo_dir)
        assert guess.prepare(spec)
        entry_job = guess._entries[0].job
        guessed: DockerSandbox = entry_job.result()
        other = dataclasses.replace(spec, limits=Limits(pids=64))
        with open_sandbox(other) as sb:
            assert isinstance(sb, DockerSandbox) and not sb.prepared
            assert _inspect(sb)["HostConfig"]["PidsLimit"] == 64
        assert guess.misses == 1
        from sandbox.lifecycle import wait_for_removals

        assert wait_for_removals(timeout=60)
        assert find_sandbox_containers(guessed.sandbox_id) == []
    finally:
        install(None)
        guess.close()


def test_prepared_containers_carry_creator_labels_for_gc(
    default_image: str, tmp_path: Path
) -> None:
    from sandbox.reaper import gc

    script = tmp_path / "creator.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal
        from sandbox import SandboxSpec
        from sandbox.pool import WarmPool
        pool = WarmPool()
        pool.prepare(SandboxSpec(image={default_image!r}))
        sb = pool._entries[0].job.result()
        print(sb.sandbox_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sid = proc.stdout.strip()
    left = find_sandbox_containers(sid)
    assert len(left) == 1
    assert left[0].labels[LABEL_SANDBOX] == sid and left[0].labels[LABEL_CREATOR_PID].isdigit()
    gc()
    assert find_sandbox_containers(sid) == []


def test_batch_jobs_open_pooled_sandboxes_labelled_with_their_run_ids(tmp_path: Path) -> None:
    from runner.batch import run_many

    jobs = []
    for i in range(3):
        repo = tmp_path / f"repo{i}"
        (repo / ".aider_fsm").mkdir(parents=True)
        (repo / "answers.txt").write_text("yes no yes\n")
        (repo / ".aider_fsm" / "eval.py").write_text(
            "import json\n"
            "a = open('answers.txt').read().split()\n"
            "json.dump({'ok': True, 'score': a.count('yes') / len(a)},"
            " open('.aider_fsm/metrics.json', 'w'))\n"
        )
        (repo / "pipeline.yml").write_text(
            "version: 1\nevaluation:\n  run_cmds: [python3 .aider_fsm/eval.py]\n"
            "  required_keys: [score, ok]\n"
        )
        jobs.append({"id": f"j{i}", "target": str(repo), "llm": "m"})
    results = run_many(jobs, workers=1)
    assert [r.outcome for r in results] == ["ok", "ok", "ok"], [r.reason for r in results]
    prepared = [
        json.loads((Path(r.artifacts_dir or "") / "sandbox.json").read_text())["prepared"]
        for r in results
    ]
    # The first job opens cold; each later one takes the sandbox made during the one
    # before, whose run-id label had to equal the session's run id to be taken at all.
    assert prepared == [False, True, True]
    run_ids = {r.run_id for r in results}
    found = get_client().containers.list(
        all=True, ignore_removed=True, filters={"label": "fsm-runner.kind"}
    )
    assert [c.name for c in found if c.labels.get("fsm-runner.run-id") in run_ids] == []
