# deploy.teardown: stop the server started by deploy_setup.sh. Safe to run any number of
# times, and it only kills a process that really is tiny_model.py (pids get reused).
set -euo pipefail
state=.aider_fsm/tiny_model

# Running and not a zombie (a killed orphan stays one until init reaps it).
running() {
  local stat
  stat="$(ps -p "$1" -o stat= 2>/dev/null | tr -d ' ' || true)"
  [ -n "$stat" ] && [ "${stat#Z}" = "$stat" ]
}

if [ -f "$state.pid" ]; then
  pid="$(cat "$state.pid")"
  if ps -p "$pid" -o args= 2>/dev/null | grep -q tiny_model.py; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
    echo "tiny model stopped (pid $pid)"
  fi
  rm -f "$state.pid" "$state.port"
fi
