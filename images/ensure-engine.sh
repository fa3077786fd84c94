#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
# Why this lives in the project: CI and fresh machines have the Docker CLI but no
# engine, and the library itself must never start daemons (it raises SandboxError
# with this command instead). Idempotent: does nothing when `docker info` works.
set -euo pipefail

wait_s="${FSM_ENGINE_WAIT_SECONDS:-60}"
log="${FSM_DOCKERD_LOG:-/var/log/fsm-dockerd.log}"

say() { printf '[ensure-engine] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  say "engine already running ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  say "no Docker engine answers and we are not root: start one (e.g. 'sudo systemctl start docker') and retry"
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  say "dockerd not found: installing Debian's docker.io (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
  say "installed: $(dockerd --version)"
fi
# debootstrap builds the offline base image (sandbox/images.py); install it alongside.
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap (needed to build the base image offline)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

say "starting dockerd in the background (log: $log)"
nohup dockerd >"$log" 2>&1 &
echo $! >/var/run/fsm-dockerd.pid

for _ in $(seq 1 "$wait_s"); do
  if docker info >/dev/null 2>&1; then
    say "engine up after start: $(docker version --format '{{.Server.Version}}' 2>/dev/null) (pid $(cat /var/run/fsm-dockerd.pid))"
    exit 0
  fi
  sleep 1
done
say "dockerd did not answer within ${wait_s}s; last log lines:"
tail -n 20 "$log" >&2 || true
exit 1
