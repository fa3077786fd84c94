"""Contracts that try to fill the host disk (issue 15 item 4): through the sandbox's own
filesystem past its disk budget, and through copy-out (sparse files that grow on the way
out, a flood of small files). The budget and the copy caps must hold, and say so."""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path

import pytest

import sandbox
from runner.session.machine import EnvSession
from sandbox.copyout import OMITTED_FILE, tree_usage
from tests.contract_repos import DEPLOY_SETUP, ROLLOUT, make_repo
from tests.hostile import (
    docker_setup,
    host_processes_with,
    labelled_containers,
    sandbox_json,
)

pytestmark = pytest.mark.docker

MB = 1 << 20


def _events(sess: EnvSession) -> list[dict[str, object]]:
    lines = (sess.artifacts_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _allocated(root: Path) -> int:
    """Bytes the host disk really holds for ``root`` (``du``), links not followed."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def test_a_stage_writing_past_the_disk_budget_is_killed_and_fails(
    tmp_path: Path, default_image: str
) -> None:
    token = f"fsm-h1-disk-{uuid.uuid4().hex[:8]}"
    # A writer left running in the background by deploy, and the rollout's own writer:
    # 200 MB against a 64m budget, 1 MB at a time so the poll catches it on the way.
    deploy_setup = DEPLOY_SETUP + (
        f"nohup sh -c ': {token}; while :; do sleep 1; done' >/dev/null 2>&1 &\n"
    )
    rollout = f"ps -eo args | grep -c '^sh -c : {token}' | sed 's/^/BACKGROUND /'\n"
    rollout += textwrap.dedent("""\
        i=0
        while [ $i -lt 200 ]; do
          head -c 1048576 /dev/zero >> /root/fill.bin
          i=$((i+1)); echo "wrote $i"; sleep 0.01
        done
        """)
    repo = make_repo(tmp_path / "repo", deploy_setup=deploy_setup, rollout=rollout)
    with docker_setup(repo, limits=sandbox.Limits(disk="64m")) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
        # Killed with everything else the sandbox ran, before the end of the session.
        assert host_processes_with(token) == []
        info = sandbox_json(sess)
    assert not roll.ok
    assert roll.failed_stage == "rollout"
    assert "rollout: disk budget 64m exceeded: " in roll.reason, roll.reason
    assert roll.verify.rollout is not None
    (killed,) = roll.verify.rollout.results
    assert killed.disk_exceeded and killed.rc != 0, killed
    assert "BACKGROUND 1" in killed.stdout, killed.stdout[:300]  # the writer deploy left
    wrote = [
        int(line.split()[1]) for line in killed.stdout.splitlines() if line.startswith("wrote")
    ]
    assert wrote and wrote[-1] < 200, wrote[-3:]  # stopped on the way, not after
    record = json.loads(
        next(
            sess.artifacts_dir.glob("env_api/rollout_attempt_01/rollout_cmd01_try01_result.json")
        ).read_text()
    )
    assert record["disk_exceeded"] is True
    assert info["limits"]["disk"] == "64m"
    assert info["disk"]["enforced"] is True
    assert labelled_containers(sess.run_id) == []  # gone with its writable layer


def test_sixty_sparse_files_do_not_become_gigabytes_on_the_host(
    tmp_path: Path, default_image: str, copy_path: str
) -> None:
    """60 x 63 MiB files holding 8 KB each: 3.7 GB if copied out whole."""
    rollout = textwrap.dedent("""\
        for i in $(seq -w 1 60); do
          f="$AIDER_FSM_ARTIFACTS_DIR/sparse$i.bin"
          head -c 8192 /dev/urandom > "$f" && truncate -s 63M "$f"
        done
        du -sk "$AIDER_FSM_ARTIFACTS_DIR" | sed 's/^/INSIDE_KB /'
        """) + textwrap.dedent(ROLLOUT)
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", repair_iters=0)
    assert roll.ok, roll.reason
    assert roll.verify.rollout is not None
    inside = next(ln for ln in roll.verify.rollout.results[0].stdout.splitlines() if "INSIDE" in ln)
    assert int(inside.split()[1]) < 2048, inside  # really sparse in the sandbox
    files = sess.artifacts_dir / "env_api" / "rollout_attempt_01" / "stage_files"
    copied, _entries = tree_usage(files)
    assert copied <= 256 * MB, copied  # FSM_RUNNER_MAX_PASS_BYTES: apparent bytes count
    assert _allocated(sess.artifacts_dir) <= 300 * MB
    note = (files / OMITTED_FILE).read_text()
    assert "sparse60.bin" in note or "the rest of the archive was not read" in note, note
    assert "over the 268435456-byte limit" in note, note
    assert any(e["kind"] == "stage_files_omitted" for e in _events(sess))


def test_many_small_files_stop_at_the_pass_entry_cap(
    tmp_path: Path, default_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSM_RUNNER_MAX_PASS_ENTRIES", "300")
    rollout = textwrap.dedent("""\
        mkdir -p "$AIDER_FSM_ARTIFACTS_DIR/flood"
        for i in $(seq 1 2000); do echo "$i" > "$AIDER_FSM_ARTIFACTS_DIR/flood/f$i"; done
        """) + textwrap.dedent(ROLLOUT)
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    with docker_setup(repo) as sess:
        roll = sess.rollout(llm="m", require_samples=True, repair_iters=0)
    assert roll.ok, roll.reason
    pass_dir = sess.artifacts_dir / "env_api" / "rollout_attempt_01"
    _bytes, entries = tree_usage(pass_dir / "stage_files")
    samples = [p for p in (pass_dir / "outputs").rglob("samples.jsonl*") if p.is_file()]
    assert len(samples) == 1  # this pass's other copy: its share counts too
    assert entries + len(samples) <= 300 + 1, entries  # + the .omitted note itself
    note = (pass_dir / "stage_files" / OMITTED_FILE).read_text()
    assert "over the" in note and "-entry limit" in note, note[:500]
    listed = note.count("\n") - 1
    assert listed >= 2000 - 300 - 5 or "more entries not copied" in note, listed


@pytest.mark.parametrize(
    "attack",
    [
        # Done in a blink: only the check when the command ends can see it.
        "fallocate -l 200M /root/blob",
        # Unlinked at once and kept open by a process left behind: in no folder at all.
        "nohup python3 -c \"import os,time; f=open('/root/x','wb'); os.unlink('/root/x');"
        " f.write(b'a'*(200<<20)); f.flush(); time.sleep(600)\" >/dev/null 2>&1 & sleep 3",
    ],
    ids=["fallocate", "deleted-but-open"],
)
def test_the_budget_counts_what_no_folder_walk_would_see_in_time(
    default_image: str, attack: str
) -> None:
    spec = sandbox.SandboxSpec(image=default_image, limits=sandbox.Limits(disk="64m"))
    with sandbox.open_sandbox(spec) as sb:
        res = sb.exec(attack, timeout=60)
        assert res.disk_exceeded and not res.ok, res
        assert "disk budget 64m exceeded: " in res.stderr.splitlines()[-1], res.stderr
        after = sb.exec("echo still running")
        assert after.disk_exceeded and after.stdout == "", after  # runs nothing more
        assert sb.describe()["disk"]["exceeded"] is True


def test_no_budget_is_an_explicit_choice_recorded_as_such(default_image: str) -> None:
    spec = sandbox.SandboxSpec(image=default_image, limits=sandbox.Limits(disk=None))
    with sandbox.open_sandbox(spec) as sb:
        assert sb.describe()["disk"] == {
            "budget": None,
            "enforced": False,
            "why": "Limits(disk=None)",
        }
        assert sb.exec("fallocate -l 100M /root/blob && echo ok").ok
