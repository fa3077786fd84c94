"""Target repositories with predecessor-style contracts, built in tmp_path by tests."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """\
version: 1
deploy:
  setup_cmds:
    - bash .aider_fsm/stages/deploy_setup.sh
  health_cmds:
    - bash .aider_fsm/stages/deploy_health.sh
  teardown_cmds:
    - bash .aider_fsm/stages/deploy_teardown.sh
  timeout_seconds: 60
rollout:
  run_cmds:
    - bash .aider_fsm/stages/rollout.sh
  timeout_seconds: 120
evaluation:
  run_cmds:
    - bash .aider_fsm/stages/evaluation.sh
  metrics_path: .aider_fsm/metrics.json
  required_keys: [score, ok]
  timeout_seconds: 120
security:
  mode: safe
  max_cmd_seconds: 300
"""

BOOTSTRAP = """\
version: 1
cmds:
  - echo bootstrapped >> /tmp/bootstrap_count
env:
  AIDER_FSM_PYTHON: python3
  GREETING: "hello ${AIDER_FSM_REPO_ROOT}"
"""

DEPLOY_SETUP = """\
set -euo pipefail
mkdir -p .aider_fsm
nohup python3 -m http.server 18765 --bind 127.0.0.1 >/tmp/server.log 2>&1 &
echo $! > /tmp/server.pid
cat > .aider_fsm/runtime_env.json <<JSON
{"service": {"base_url": "http://127.0.0.1:18765"}, "inference": {"model": "${AIDER_LLM_MODEL:-none}"}}
JSON
"""

DEPLOY_HEALTH = """\
set -euo pipefail
for i in $(seq 1 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18765/', timeout=1)" && exit 0
  sleep 0.1
done
exit 1
"""

DEPLOY_TEARDOWN = """\
kill "$(cat /tmp/server.pid)" 2>/dev/null || true
echo torn-down > "$AIDER_FSM_ARTIFACTS_DIR/teardown.txt"
"""

ROLLOUT = """\
set -euo pipefail
out="$AIDER_FSM_ARTIFACTS_DIR/samples.jsonl"
python3 - "$out" <<'PY'
import json, sys
with open(sys.argv[1], "w") as fh:
    for i in range(8):
        fh.write(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "reward": float(i % 2 == 0)}) + "\\n")
PY
python3 - "$out" <<'PY'
import json, sys
json.dump({"ok": True, "counts": {"samples": 8, "errors": 0}, "paths": {"samples_jsonl": sys.argv[1]}},
          open(".aider_fsm/rollout.json", "w"))
PY
"""

EVALUATION = """\
set -euo pipefail
python3 - <<'PY'
import json
manifest = json.load(open(".aider_fsm/rollout.json"))
rewards = [json.loads(l)["reward"] for l in open(manifest["paths"]["samples_jsonl"])]
json.dump({"ok": True, "score": sum(rewards) / len(rewards), "n": len(rewards)}, open(".aider_fsm/metrics.json", "w"))
PY
"""


def make_repo(root: Path, **overrides: str) -> Path:
    """A repo whose contract deploys a service, writes 8 samples and scores 0.5.

    ``overrides`` replace files by key: pipeline, bootstrap, deploy_setup, deploy_health,
    deploy_teardown, rollout, evaluation (None-like "" removes the file).
    """
    files = {
        "pipeline": ("pipeline.yml", PIPELINE),
        "bootstrap": (".aider_fsm/bootstrap.yml", BOOTSTRAP),
        "deploy_setup": (".aider_fsm/stages/deploy_setup.sh", DEPLOY_SETUP),
        "deploy_health": (".aider_fsm/stages/deploy_health.sh", DEPLOY_HEALTH),
        "deploy_teardown": (".aider_fsm/stages/deploy_teardown.sh", DEPLOY_TEARDOWN),
        "rollout": (".aider_fsm/stages/rollout.sh", ROLLOUT),
        "evaluation": (".aider_fsm/stages/evaluation.sh", EVALUATION),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# target\n")
    for key, (rel, text) in files.items():
        content = overrides.get(key, text)
        if content == "":
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content))
    return root


def copy_example(name: str, dest: Path) -> Path:
    """A copy of ``examples/<name>`` without what runs left in the checkout (issue 16.5).

    The docs' own `fsm-runner run examples/tiny` writes run dirs and outputs under the
    checkout's `.aider_fsm/`; a test must start from the example as committed.
    """
    ignore = shutil.ignore_patterns(
        "artifacts", "venv", "metrics.json", "rollout.json", "runtime_env.json",
        "hints_*.json", "samples.jsonl", "__pycache__",
    )  # fmt: skip
    shutil.copytree(ROOT / "examples" / name, dest, ignore=ignore)
    return dest
