# deploy.teardown: stop the server started by deploy_setup.sh. Safe to run any number of
# times, and it only kills a process that really is tiny_model.py (pids get reused).
set -euo pipefail
state=.aider_fsm/tiny_model
if [ -f "$state.pid" ]; then
  pid="$(cat "$state.pid")"
  if ps -p "$pid" -o args= 2>/dev/null | grep -q tiny_model.py; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
    echo "tiny model stopped (pid $pid)"
  fi
  rm -f "$state.pid" "$state.port"
fi
