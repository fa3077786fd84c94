# evaluation: re-grade every sample listed by rollout.json (the rewards the rollout wrote
# are not trusted) and write .aider_fsm/metrics.json with the mean grade as `score`.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json
import re
import sys

QUESTION = re.compile(r"What is (-?\d+) \+ (-?\d+)\?")


def expected(prompt: str) -> str:
    a, b = map(int, QUESTION.search(prompt).groups())
    return str(a + b)


with open(".aider_fsm/rollout.json") as fh:
    samples_path = json.load(fh)["paths"]["samples_jsonl"]
with open(samples_path) as fh:
    samples = [json.loads(line) for line in fh if line.strip()]
if not samples:
    sys.exit("evaluation: the samples file is empty")

grades = [1.0 if s["completion"].strip() == expected(s["prompt"]) else 0.0 for s in samples]
metrics = {
    "ok": True,
    "score": sum(grades) / len(grades),
    "n": len(samples),
    "correct": int(sum(grades)),
    "reward_mismatches": sum(1 for s, g in zip(samples, grades) if float(s["reward"]) != g),
}
with open(".aider_fsm/metrics.json", "w") as fh:
    json.dump(metrics, fh, indent=2)
print(json.dumps(metrics))
PY
