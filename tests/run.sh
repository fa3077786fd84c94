#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it: lint, types, then pytest.
# pytest exit code 5 ("no tests collected") is turned into a failure with a message,
# because a suite that ran nothing must never look green.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

echo "== ruff"; $BIN/ruff check . || exit 1
$BIN/ruff format --check . || exit 1
echo "== mypy"; $BIN/mypy || exit 1

echo "== pytest"
$BIN/pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (a suite that runs nothing is not a pass)" >&2
  exit 1
fi
exit "$rc"
