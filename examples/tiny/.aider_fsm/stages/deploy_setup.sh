# deploy.setup: start tiny_model.py in the background, then describe it in
# .aider_fsm/runtime_env.json. Output goes to a log file and stdin is /dev/null, so this
# script returns at once while the server keeps running until deploy_teardown.sh.
set -euo pipefail
py="${AIDER_FSM_PYTHON:-python3}"
state=.aider_fsm/tiny_model

# A retried deploy must not leave a second server behind.
bash .aider_fsm/stages/deploy_teardown.sh

rm -f "$state.port"
"$py" tiny_model.py --port "${TINY_MODEL_PORT:-0}" --port-file "$state.port" \
  </dev/null >"$state.log" 2>&1 &
echo "$!" >"$state.pid"

# The server writes its port file once it listens.
for _ in $(seq 1 100); do
  [ -s "$state.port" ] && break
  if ! kill -0 "$(cat "$state.pid")" 2>/dev/null; then
    echo "tiny_model.py exited during start-up; its log:" >&2
    cat "$state.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ ! -s "$state.port" ]; then
  echo "tiny_model.py did not listen within 10s" >&2
  exit 1
fi

"$py" - "$(cat "$state.port")" "$(cat "$state.pid")" <<'PY'
import json
import os
import sys
import time

port, pid = int(sys.argv[1]), int(sys.argv[2])
base = f"http://127.0.0.1:{port}"
runtime_env = {
    "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "run_id": os.environ.get("AIDER_FSM_RUN_ID", ""),
    "service": {"base_url": base, "health_url": f"{base}/health", "pid": pid},
    "inference": {
        "type": "openai_compat",
        "openai_base_url": f"{base}/v1",
        "model": "tiny-adder",
    },
    "paths": {"rollout_path": ".aider_fsm/rollout.json", "metrics_path": ".aider_fsm/metrics.json"},
}
with open(".aider_fsm/runtime_env.json", "w") as fh:
    json.dump(runtime_env, fh, indent=2)
print(f"tiny model started: pid {pid}, {base}")
PY
