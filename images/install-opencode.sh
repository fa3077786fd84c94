#!/usr/bin/env bash
# Install the pinned OpenCode agent binary into <repo>/.tools/opencode/ (git-ignored).
#
# Why a project-local copy: fsm-runner mounts this one file read-only into the agent's
# sandbox, so the version the prompts and tests were written against is the one that
# runs (notes/opencode.md: opencode-ai@1.18.33, a 185 MB Bun executable linked only
# against glibc). Idempotent: does nothing when the pinned binary is already there.
# Prints the binary's path on stdout (everything else goes to stderr).
set -euo pipefail

version="${FSM_OPENCODE_VERSION:-1.18.33}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${FSM_OPENCODE_DIR:-$root/.tools/opencode}"
bin="$dest/node_modules/opencode-linux-x64/bin/opencode"
stamp="$dest/.installed-$version"

say() { printf '[install-opencode] %s\n' "$*" >&2; }

if [ -x "$bin" ] && [ -f "$stamp" ]; then
  say "opencode $version already installed"
  echo "$bin"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  say "npm not found: install Node.js (e.g. 'apt-get install -y nodejs npm') and retry"
  exit 1
fi
case "$(uname -sm)" in
  "Linux x86_64") ;;
  *) say "only linux x86_64 is supported by this script (found $(uname -sm))"; exit 1 ;;
esac

mkdir -p "$dest"
rm -f "$dest"/.installed-*
say "npm install opencode-ai@$version into $dest"
# --ignore-scripts: the postinstall only hard-links the platform binary, which we use
# directly; no-audit/no-fund keep the install quiet and offline-friendly.
npm install --prefix "$dest" --no-audit --no-fund --no-save --ignore-scripts \
  --loglevel=error "opencode-ai@$version" >&2

if [ ! -x "$bin" ]; then
  say "npm finished but $bin is missing or not executable"
  exit 1
fi
got="$("$bin" --version 2>/dev/null || true)"
if [ "$got" != "$version" ]; then
  say "installed binary reports version '$got', expected $version"
  exit 1
fi
touch "$stamp"
say "installed opencode $got"
echo "$bin"
