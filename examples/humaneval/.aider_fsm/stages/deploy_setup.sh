# deploy.setup: nothing runs in the background for HumanEval (the model is the caller's
# endpoint); record the dataset, limit and interpreter in .aider_fsm/runtime_env.json.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" .aider_fsm/stages/humaneval_task.py info
