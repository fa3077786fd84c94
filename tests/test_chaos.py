"""Stop and kill ``fsm-runner run`` at random points; nothing of those sessions may remain.

Issue 15 item 8 and its "done when": a run stopped by SIGTERM (or Ctrl-C) removes its
container, networks, volume and firewall rules itself and never reads as ok; a SIGKILLed
run is ``incomplete`` and ``fsm-runner gc`` removes what it left; a container started by
hand from the base image survives that gc. The sessions have an egress stage (bootstrap)
and llm stages (deploy, rollout, against the scripted model server in tests/fakes).

Everything a session creates carries its creator's pid (the CLI process), so the checks
look for exactly the objects of the processes this test started, on an engine other
sessions share.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox.engine import LABEL_CREATOR_PID, LABEL_SANDBOX, get_client
from sandbox.firewall import tagged_rules
from tests.contract_repos import DEPLOY_SETUP, ROLLOUT, make_repo
from tests.fakes.model_server import ScriptedModelServer

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
FSM = ROOT / ".venv" / "bin" / "fsm-runner"

BOOTSTRAP = """\
version: 1
cmds:
  - python3 -c "import socket; socket.getaddrinfo('pypi.org', 443)" || true
  - sleep 0.3
"""

ASK_MODEL = """\
python3 - <<'PY'
import json, os, urllib.request
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
req = urllib.request.Request(os.environ["OPENAI_API_BASE"] + "/chat/completions", body,
                             {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req, timeout=30))["choices"][0]["message"]["content"])
PY
"""


def chaos_repo(root: Path, *, evaluation_sleep: float = 0.3) -> Path:
    repo = make_repo(
        root,
        bootstrap=BOOTSTRAP,
        deploy_setup=DEPLOY_SETUP + "sleep 0.3\n",
        rollout=ASK_MODEL + ROLLOUT,
    )
    stage = repo / ".aider_fsm" / "stages" / "evaluation.sh"
    stage.write_text(f"echo evaluating; sleep {evaluation_sleep}\n" + stage.read_text())
    return repo


def objects_of(pids: set[int]) -> dict[str, list[str]]:
    """Containers, networks and volumes created by ``pids``; rules of their sandboxes."""
    client = get_client()
    wanted = {str(p) for p in pids}
    by_pid = {"label": LABEL_CREATOR_PID}
    found: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}
    sids: set[str] = set()
    for ct in client.containers.list(all=True, filters=by_pid, ignore_removed=True):
        if ct.labels.get(LABEL_CREATOR_PID) in wanted:
            found["containers"].append(ct.name)
            sids.add(ct.labels.get(LABEL_SANDBOX, ""))
    for net in client.networks.list(filters=by_pid):
        labels = net.attrs.get("Labels") or {}
        if labels.get(LABEL_CREATOR_PID) in wanted:
            found["networks"].append(net.name)
            sids.add(labels.get(LABEL_SANDBOX, ""))
    for vol in client.volumes.list(filters=by_pid):
        labels = vol.attrs.get("Labels") or {}
        if labels.get(LABEL_CREATOR_PID) in wanted:
            found["volumes"].append(vol.name)
            sids.add(labels.get(LABEL_SANDBOX, ""))
    found["sandboxes"] = sorted(sids - {""})
    return found


def rules_of(sids: set[str]) -> list[str]:
    return [f"{r.chain} {r.sandbox_id}" for r in tagged_rules() if r.sandbox_id in sids]


def sandbox_ids(repo: Path, run_ids: set[str] | None = None) -> set[str]:
    """Sandbox ids the run dirs recorded (sandbox.json), for rules whose objects are gone."""
    found = set()
    for path in (repo / ".aider_fsm" / "artifacts").glob("*/sandbox.json"):
        if run_ids is not None and path.parent.name not in run_ids:
            continue
        try:
            found.add(str(json.loads(path.read_text()).get("sandbox_id") or ""))
        except ValueError:
            continue  # cut short by the kill
    return found - {""}


@dataclass
class Run:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)


def start(repo: Path, model_url: str) -> Run:
    env = {**os.environ, "CI": "true", "OPENAI_API_BASE": model_url}
    proc = subprocess.Popen(
        [str(FSM), "run", str(repo), "--llm", "m", "--cache", "off", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    run = Run(proc)
    run.reader = threading.Thread(target=run.read_stderr, daemon=True)
    run.reader.start()
    return run


def finish(run: Run, timeout: float = 120) -> tuple[int, str]:
    # stdout only: the reader thread owns stderr (communicate() would take lines from it).
    assert run.proc.stdout is not None
    with run.proc.stdout:
        out = run.proc.stdout.read()
    run.proc.wait(timeout=timeout)
    if run.reader is not None:
        run.reader.join(10)
    if run.proc.stderr is not None:
        run.proc.stderr.close()
    return run.proc.returncode, out


def wait_for_line(run: Run, needle: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in line for line in run.lines):
            return
        if run.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"never saw {needle!r}:\n{''.join(run.lines)[-3000:]}")


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(script="pong") as server:
        yield server


@pytest.fixture
def hand_container(default_image: str) -> Iterator[Any]:
    """A container someone started by hand from the base image: no labels of ours."""
    ct = get_client().containers.run(
        default_image, ["sleep", "900"], name=f"hand-{uuid.uuid4().hex[:8]}", detach=True
    )
    yield ct
    ct.remove(force=True)


def runs_json(repo: Path) -> dict[str, dict[str, Any]]:
    proc = subprocess.run(
        [str(FSM), "runs", str(repo), "--json", "--limit", "500"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {r["run_id"]: r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_stop_signal_during_evaluation_cleans_up_and_is_never_ok(
    tmp_path: Path, default_image: str, model: ScriptedModelServer, sig: signal.Signals
) -> None:
    repo = chaos_repo(tmp_path / "repo", evaluation_sleep=60)
    run = start(repo, model.url)
    wait_for_line(run, "evaluating")  # the rollout passed; evaluation is running
    time.sleep(0.3)
    run.proc.send_signal(sig)
    code, out = finish(run)
    assert code == 128 + sig, "".join(run.lines)[-3000:]
    result = json.loads(out)
    assert result["ok"] is False and result["interrupted"] is True, result
    assert result["status"] == "interrupted" and result["signal"] == sig.name
    # The CLI cleaned up itself: nothing of its session is left, before any gc.
    left = objects_of({run.proc.pid})
    assert left == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}, left
    assert rules_of(sandbox_ids(repo)) == []
    listed = runs_json(repo)[result["run_id"]]
    assert listed["ok"] is False and listed["status"] == "interrupted", listed


def test_sigkill_during_evaluation_reads_incomplete_and_gc_collects_it(
    tmp_path: Path, default_image: str, model: ScriptedModelServer, hand_container: Any
) -> None:
    repo = chaos_repo(tmp_path / "repo", evaluation_sleep=60)
    run = start(repo, model.url)
    wait_for_line(run, "evaluating")
    run.proc.send_signal(signal.SIGKILL)
    finish(run)
    left = objects_of({run.proc.pid})
    assert left["containers"] and left["networks"] and left["volumes"], left
    assert rules_of(set(left["sandboxes"]))
    (listed,) = runs_json(repo).values()
    assert listed["ok"] is False and listed["status"] == "incomplete", listed
    shown = subprocess.run(
        [str(FSM), "show", "latest", "--repo", str(repo)], capture_output=True, text=True
    )
    assert "incomplete" in shown.stdout, shown.stdout
    gc = subprocess.run([str(FSM), "gc"], capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    after = objects_of({run.proc.pid})
    assert after == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}, after
    assert rules_of(set(left["sandboxes"])) == []
    hand_container.reload()
    assert hand_container.status == "running"


KILLS = 30


@dataclass(frozen=True)
class Outcome:
    sig: signal.Signals
    pid: int
    code: int
    signalled: bool
    """The process still ran when the signal was sent."""
    run_id: str
    ended: bool
    """Its session had finished every stage (the final teardown) before the signal."""
    plan: tuple[int, float] = (0, 0.0)
    """(after which progress line, plus how long) the signal was sent: to replay by hand."""
    tail: str = ""
    """The run's last lines of stderr, for a failure message that says where it stopped."""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_random_sigkill_and_sigterm_then_gc_leaves_nothing(
    tmp_path: Path, default_image: str, model: ScriptedModelServer, hand_container: Any
) -> None:
    seed = int(os.environ.get("FSM_CHAOS_SEED") or time.time())
    print(f"chaos seed: {seed} (rerun with FSM_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    signals = [signal.SIGKILL, signal.SIGTERM] * (KILLS // 2)
    rng.shuffle(signals)
    # Kill points: before any output (startup, sandbox creation), or after the k-th
    # progress line (a run prints ~22; the last ones land in its close) plus a random fraction of a second.
    plans = [(sig, rng.randint(-1, 20), rng.uniform(0.0, 0.6)) for sig in signals]
    repo = chaos_repo(tmp_path / "repo")

    def one(plan: tuple[signal.Signals, int, float]) -> Outcome:
        sig, after_line, extra = plan
        run = start(repo, model.url)
        deadline = time.monotonic() + 120
        while len(run.lines) <= after_line and run.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(extra if after_line >= 0 else extra * 2)
        killed = run.proc.poll() is None
        if killed:
            run.proc.send_signal(sig)
        code, _ = finish(run)
        first = run.lines[0] if run.lines else ""
        run_id = first.rsplit(" run ", 1)[-1].strip() if " run " in first else ""
        ended = any("deploy_teardown ok" in line for line in run.lines)
        tail = "".join(run.lines[-8:])
        return Outcome(sig, run.proc.pid, code, killed, run_id, ended, (after_line, extra), tail)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, plans))
    pids = {r.pid for r in results}
    killed = [r for r in results if r.signalled]
    print(f"chaos: {len(killed)} of {len(results)} runs were signalled while running")
    assert len(killed) >= 20, results
    # SIGTERMed runs cleaned up themselves, before any gc (128+15; -15 when the signal
    # beat the handler during interpreter start, when nothing exists yet).
    termed = [r for r in killed if r.sig == signal.SIGTERM]
    assert [r for r in termed if r.code not in (143, -15, 0)] == []
    left_by_term = objects_of({r.pid for r in termed})
    leakers = [r for r in termed if any(objects_of({r.pid}).values())]
    assert left_by_term["containers"] == left_by_term["networks"] == [], (left_by_term, leakers)
    assert left_by_term["volumes"] == [], left_by_term
    assert rules_of(sandbox_ids(repo, {r.run_id for r in termed})) == []
    # A run stopped before its session ended never reads as ok.
    listed = runs_json(repo)
    for r in killed:
        if r.run_id in listed and not r.ended:
            assert listed[r.run_id]["ok"] is False, (r, listed[r.run_id])
            assert listed[r.run_id]["status"] in ("interrupted", "incomplete"), listed[r.run_id]

    before = objects_of(pids)
    sids = set(before["sandboxes"]) | sandbox_ids(repo)
    gc = subprocess.run([str(FSM), "gc"], capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    print(f"gc: {gc.stdout.strip()}")
    after = objects_of(pids)
    assert after == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}, after
    assert rules_of(sids) == []
    hand_container.reload()
    assert hand_container.status == "running"
