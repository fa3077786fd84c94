# deploy.health: the service named in runtime_env.json must answer /health within
# TINY_HEALTH_WAIT_SECONDS (default 10).
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json
import os
import sys
import time
import urllib.request

path = os.environ.get("AIDER_RUNTIME_ENV_PATH") or ".aider_fsm/runtime_env.json"
with open(path) as fh:
    url = json.load(fh)["service"]["health_url"]
# Loopback service: never go through a proxy the environment may name.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + float(os.environ.get("TINY_HEALTH_WAIT_SECONDS") or 10)
while True:
    try:
        with opener.open(url, timeout=2) as resp:
            body = json.load(resp)
        if body.get("ok") is True:
            print(f"healthy: {url} -> {body}")
            sys.exit(0)
        problem = f"unexpected body {body}"
    except (OSError, ValueError) as exc:
        problem = repr(exc)
    if time.monotonic() > deadline:
        print(f"unhealthy: {url}: {problem}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
PY
