# deploy.health: the dataset loads (164 problems), the executor passes a canonical
# solution and fails `pass`, and an endpoint and model are configured.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" .aider_fsm/stages/humaneval_task.py check
