# rollout: one completion per problem from $OPENAI_API_BASE/chat/completions, each run
# against the problem's tests. Writes .aider_fsm/samples.jsonl
# ({task_id, prompt, completion, reward, result}) and .aider_fsm/rollout.json.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" .aider_fsm/stages/humaneval_task.py rollout
