"""LLM wiring end to end: a host model server on 127.0.0.1 reached from inside the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import runner_env
from tests.contract_repos import make_repo
from tests.fakes.model_server import ScriptedModelServer

pytestmark = pytest.mark.docker

ASK_MODEL = """\
set -euo pipefail
python3 - <<'PY'
import json, os, urllib.request
base = os.environ["OPENAI_API_BASE"]
body = json.dumps({"model": os.environ["OPENAI_MODEL"], "messages": [{"role": "user", "content": "2+2?"}]})
req = urllib.request.Request(base + "/chat/completions", body.encode(),
                             {"Content-Type": "application/json",
                              "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
answer = json.load(urllib.request.urlopen(req, timeout=10))["choices"][0]["message"]["content"]
with open("s.jsonl", "w") as fh:
    fh.write(json.dumps({"prompt": "2+2?", "completion": answer, "reward": float(answer.strip() == "4")}) + "\\n")
json.dump({"paths": {"samples_jsonl": "s.jsonl"}, "base": base}, open(".aider_fsm/rollout.json", "w"))
PY
"""

EVAL_TRIES_MODEL = """\
set -euo pipefail
python3 - <<'PY'
import json, os, urllib.request
try:
    urllib.request.urlopen(os.environ["OPENAI_API_BASE"] + "/models", timeout=3)
    reached = True
except Exception:
    reached = False
rewards = [json.loads(l)["reward"] for l in open("s.jsonl")]
json.dump({"ok": True, "score": sum(rewards) / len(rewards), "eval_reached_model": reached},
          open(".aider_fsm/metrics.json", "w"))
PY
"""


def test_rollout_reaches_host_model_through_relay_only(tmp_path: Path, default_image: str) -> None:
    repo = make_repo(tmp_path / "repo", rollout=ASK_MODEL, evaluation=EVAL_TRIES_MODEL)
    secret = "sk-test-secret-value-123456"
    with ScriptedModelServer(script="4") as server:
        overrides = {"OPENAI_API_BASE": server.url, "OPENAI_API_KEY": secret}
        sess = runner_env.setup(repo)
        roll = sess.rollout(
            llm="gpt-test", require_samples=True, env_overrides=overrides, repair_iters=0
        )
        assert roll.ok, roll.reason
        res = sess.evaluate(env_overrides=overrides, repair_iters=0)
        assert res.ok, res.reason
        assert server.requests, "the model server was never called"
        assert server.requests[0]["model"] == "gpt-test"
    assert res.metrics is not None
    assert res.metrics["score"] == 1.0
    # Evaluation runs with network "none": the same URL is unreachable there.
    assert res.metrics["eval_reached_model"] is False
    rollout = json.loads((repo / ".aider_fsm" / "rollout.json").read_text())
    assert "127.0.0.1" not in rollout["base"], "the endpoint must be rewritten for the sandbox"
    # The key reached the stage but no file the runner wrote holds it.
    for path in sess.artifacts_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path


def test_local_model_dir_is_mounted_read_only(tmp_path: Path, default_image: str) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"arch": "tiny"}')
    rollout = """\
    set -euo pipefail
    test "$AIDER_LLM_KIND" = local_hf
    cat "$AIDER_TRAINED_MODEL_DIR/config.json" > seen.txt
    if touch "$AIDER_TRAINED_MODEL_DIR/pwned" 2>/dev/null; then echo writable; exit 1; fi
    printf '%s\\n' '{"prompt":"p","completion":"c","reward":1}' > s.jsonl
    echo '{"paths":{"samples_jsonl":"s.jsonl"}}' > .aider_fsm/rollout.json
    """
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    with runner_env.setup(repo) as sess:
        roll = sess.rollout(llm=model, require_samples=True, repair_iters=0)
    assert roll.ok, roll.reason
    assert not (model / "pwned").exists()
