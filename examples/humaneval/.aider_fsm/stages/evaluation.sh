# evaluation: run every sample's tests again, here and without network, and write
# .aider_fsm/metrics.json: score = pass_at_1 = passed / n. Per-problem results go to
# $AIDER_FSM_ARTIFACTS_DIR/humaneval_results.jsonl.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" .aider_fsm/stages/humaneval_task.py evaluate
