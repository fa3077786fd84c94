"""A contract that dumps its whole environment everywhere: stdout, stderr, files under
``$AIDER_FSM_ARTIFACTS_DIR`` and every contract output (runtime_env.json, rollout.json,
metrics.json). The model key must reach only the stages that call the model, and be masked
in every file the runner writes."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.session.machine import EnvSession
from tests.contract_repos import make_repo
from tests.fakes.model_server import ScriptedModelServer
from tests.hostile import docker_setup, files_containing

pytestmark = pytest.mark.docker

HOST_SECRET_VAR = "FSM_HOSTILE_HOST_API_TOKEN"

PIPELINE = """\
version: 1
tests:
  cmds: [bash .aider_fsm/stages/dump.sh tests]
deploy:
  setup_cmds: [bash .aider_fsm/stages/dump.sh deploy_setup]
  health_cmds: [bash .aider_fsm/stages/dump.sh deploy_health]
  teardown_cmds: [bash .aider_fsm/stages/dump.sh deploy_teardown]
rollout:
  run_cmds: [bash .aider_fsm/stages/dump.sh rollout]
evaluation:
  run_cmds: [bash .aider_fsm/stages/dump.sh evaluation]
  metrics_path: .aider_fsm/metrics.json
"""

BOOTSTRAP = """\
version: 1
cmds:
  - bash .aider_fsm/stages/dump.sh bootstrap
"""

DUMP = r"""
stage="$1"
env
env >&2
env | sort > "$AIDER_FSM_ARTIFACTS_DIR/env_$stage.txt" 2>/dev/null || true
if [ -n "${OPENAI_API_KEY:-}" ]; then echo "KEY_SEEN $stage yes"; else echo "KEY_SEEN $stage no"; fi
if [ -n "${FSM_HOSTILE_HOST_API_TOKEN:-}" ]; then echo "HOST_SEEN $stage yes"; fi
case "$stage" in
  deploy_setup)
    python3 -c 'import json, os; json.dump({"env": dict(os.environ)}, open(".aider_fsm/runtime_env.json", "w"))'
    ;;
  rollout)
    python3 - <<'PY'
import json, os, urllib.request
env = dict(os.environ)
req = urllib.request.Request(
    env["OPENAI_API_BASE"] + "/chat/completions",
    json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    {"Content-Type": "application/json", "Authorization": "Bearer " + env["OPENAI_API_KEY"]},
)
answer = json.load(urllib.request.urlopen(req, timeout=10))["choices"][0]["message"]["content"]
completion = env["OPENAI_API_KEY"] if os.path.exists(".aider_fsm/key_in_samples") else answer
with open("samples.jsonl", "w") as fh:
    fh.write(json.dumps({"prompt": "hi", "completion": completion, "reward": 1.0}) + "\n")
json.dump({"ok": True, "paths": {"samples_jsonl": "samples.jsonl"}, "env": env},
          open(".aider_fsm/rollout.json", "w"))
with open(os.environ["AIDER_FSM_ARTIFACTS_DIR"] + "/env_rollout.json", "w") as fh:
    json.dump(env, fh)
PY
    ;;
  evaluation)
    python3 -c 'import json, os; json.dump({"ok": True, "score": 1.0, "env": dict(os.environ)}, open(".aider_fsm/metrics.json", "w"))'
    ;;
esac
"""


@dataclass
class DumpedRun:
    sess: EnvSession
    repo: Path
    key: str
    host_secret: str
    seen: dict[str, str]
    """stage -> "yes"/"no": did it have OPENAI_API_KEY (from its recorded stdout)."""
    host_seen: set[str]
    authorization: list[str]


def _run(root: Path, *, key_in_samples: bool) -> DumpedRun:
    key = "sk-hostile-" + secrets.token_hex(16)
    host_secret = "hostile-host-" + secrets.token_hex(16)
    repo = make_repo(root / "repo", pipeline=PIPELINE, bootstrap=BOOTSTRAP)
    (repo / ".aider_fsm" / "stages" / "dump.sh").write_text(DUMP)
    if key_in_samples:
        (repo / ".aider_fsm" / "key_in_samples").write_text("1\n")
    saved = os.environ.get(HOST_SECRET_VAR)
    os.environ[HOST_SECRET_VAR] = host_secret
    try:
        with ScriptedModelServer(script="hello") as server:
            overrides = {"OPENAI_API_BASE": server.url, "OPENAI_API_KEY": key}
            sess = docker_setup(repo)
            roll = sess.rollout(
                llm="m", require_samples=True, env_overrides=overrides, repair_iters=0
            )
            assert roll.ok, roll.reason
            res = sess.evaluate(env_overrides=overrides, repair_iters=0)
            assert res.ok, res.reason
            authorization = [
                v for r in server.log for k, v in r.headers.items() if k.lower() == "authorization"
            ]
    finally:
        if saved is None:
            os.environ.pop(HOST_SECRET_VAR, None)
        else:
            os.environ[HOST_SECRET_VAR] = saved
    seen: dict[str, str] = {}
    host_seen: set[str] = set()
    for path in sess.artifacts_dir.rglob("*_stdout.txt"):
        text = path.read_text(errors="replace")
        seen.update(re.findall(r"^KEY_SEEN (\w+) (yes|no)$", text, re.M))
        host_seen.update(re.findall(r"^HOST_SEEN (\w+) yes$", text, re.M))
    return DumpedRun(sess, repo, key, host_secret, seen, host_seen, authorization)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory, default_image: str) -> Iterator[DumpedRun]:
    yield _run(tmp_path_factory.mktemp("secrets"), key_in_samples=False)


def test_api_key_appears_in_no_file_under_the_run_dir(dumped: DumpedRun) -> None:
    # Control: the key really reached the model through the stage.
    assert dumped.authorization == [f"Bearer {dumped.key}"]
    assert dumped.seen.get("rollout") == "yes", dumped.seen
    assert list(dumped.sess.artifacts_dir.rglob("env_rollout.*")), "artifacts were not pulled"
    assert files_containing(dumped.sess.artifacts_dir, dumped.key) == []
    assert files_containing(dumped.sess.artifacts_dir, dumped.host_secret) == []


def test_api_key_never_reaches_bootstrap_tests_or_teardown(dumped: DumpedRun) -> None:
    stages = ("bootstrap", "tests", "deploy_setup", "rollout", "deploy_teardown")
    assert set(stages) <= dumped.seen.keys(), dumped.seen
    for stage in ("bootstrap", "tests", "deploy_teardown"):
        assert dumped.seen[stage] == "no", dumped.seen


def test_host_environment_secrets_reach_no_stage(dumped: DumpedRun) -> None:
    assert len(dumped.seen) >= 6, dumped.seen  # every stage reported
    assert dumped.host_seen == set()


def test_evaluation_without_network_does_not_receive_the_api_key(dumped: DumpedRun) -> None:
    assert dumped.seen.get("evaluation") == "no", dumped.seen


def test_host_copies_of_contract_outputs_mask_the_api_key(dumped: DumpedRun) -> None:
    copies = [dumped.repo / ".aider_fsm" / n for n in ("runtime_env.json", "rollout.json")]
    copies.append(dumped.repo / ".aider_fsm" / "metrics.json")
    assert all(p.is_file() for p in copies), copies
    leaked = [p for p in copies if dumped.key in p.read_text()]
    assert leaked == []


def test_api_key_in_a_samples_file_is_masked_in_the_run_dir(
    tmp_path: Path, default_image: str
) -> None:
    run = _run(tmp_path, key_in_samples=True)
    assert run.seen.get("rollout") == "yes"
    assert files_containing(run.sess.artifacts_dir, run.key) == []


NUMERIC_PIPELINE = """\
version: 1
evaluation:
  run_cmds: [bash .aider_fsm/stages/leak.sh]
  metrics_path: .aider_fsm/metrics.json
"""
LEAK = r"""
set -eu
echo "password is $DB_PASSWORD"
echo "stderr too: $DB_PASSWORD" >&2
cd "$AIDER_FSM_ARTIFACTS_DIR"
echo "$DB_PASSWORD" > "log_${DB_PASSWORD}.txt"
mkdir -p "run_${DB_PASSWORD}/inner_${DB_PASSWORD}"
echo ok > "run_${DB_PASSWORD}/inner_${DB_PASSWORD}/${DB_PASSWORD}"
ln -s "log_${DB_PASSWORD}.txt" "link_${DB_PASSWORD}"
cd "$AIDER_FSM_REPO_ROOT"
printf '{"ok": true, "score": 1, "note": "pw %s", "%s": 1}' "$DB_PASSWORD" "$DB_PASSWORD" > .aider_fsm/metrics.json
"""


def test_numeric_secret_is_masked_in_contents_and_names(tmp_path: Path, default_image: str) -> None:
    # Issue 15 item 10: a number is a secret too, and so is a file name that holds one.
    secret = str(secrets.randbelow(9 * 10**11) + 10**11)  # 12 digits
    repo = make_repo(tmp_path / "repo", pipeline=NUMERIC_PIPELINE)
    (repo / ".aider_fsm" / "stages" / "leak.sh").write_text(LEAK)
    with docker_setup(repo) as sess:
        res = sess.evaluate(llm="m", env_overrides={"DB_PASSWORD": secret}, repair_iters=0)
    assert res.ok, res.reason
    run = sess.artifacts_dir
    # Control: the stage's files did come back (under masked names).
    names = {p.name for p in run.rglob("*")}
    assert {"log_***.txt", "inner_***", "***"} <= names, sorted(names)
    # Links come back as a listing, never as links (issue 15 item 1): masked there too.
    listings = [p.read_text() for p in run.rglob(".links.json")]
    assert any('"link_***"' in text and "log_***.txt" in text for text in listings), listings
    assert files_containing(run, secret) == []
    assert [p for p in run.rglob("*") if secret in p.name] == []
    host_copy = repo / ".aider_fsm" / "metrics.json"
    assert secret not in host_copy.read_text()
    for line in (run / "events.jsonl").read_text().splitlines():
        json.loads(line)  # masking never breaks a record
    verify = subprocess.run(
        [str(Path(sys.executable).parent / "fsm-runner"), "verify", str(run)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert secret not in verify.stdout + verify.stderr
