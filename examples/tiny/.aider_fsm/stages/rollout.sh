# rollout: ask the deployed model 8 questions and grade each answer. Writes
# .aider_fsm/samples.jsonl ({prompt, completion, reward} per line) and
# .aider_fsm/rollout.json pointing at it.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json
import os
import re
import sys
import urllib.request

path = os.environ.get("AIDER_RUNTIME_ENV_PATH") or ".aider_fsm/runtime_env.json"
with open(path) as fh:
    inference = json.load(fh)["inference"]
url = inference["openai_base_url"].rstrip("/") + "/chat/completions"
model = inference["model"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback service


def ask(question: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0}
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with opener.open(req, timeout=30) as resp:
        return json.load(resp)["choices"][0]["message"]["content"]


def grade(question: str, completion: str) -> float:
    a, b = map(int, re.search(r"What is (-?\d+) \+ (-?\d+)\?", question).groups())
    return 1.0 if completion.strip() == str(a + b) else 0.0


samples = []
for i in range(8):
    a = i + 1
    b = a if i % 2 == 0 else a + 1  # the model is right only when both numbers are equal
    prompt = f"What is {a} + {b}?"
    completion = ask(prompt)
    samples.append({"prompt": prompt, "completion": completion, "reward": grade(prompt, completion)})

samples_path = ".aider_fsm/samples.jsonl"
with open(samples_path, "w") as fh:
    for sample in samples:
        fh.write(json.dumps(sample) + "\n")
correct = sum(1 for s in samples if s["reward"] == 1.0)
rollout = {
    "ok": True,
    "mode": os.environ.get("AIDER_EVAL_MODE", "smoke"),
    "model": model,
    "counts": {"samples": len(samples), "errors": 0, "correct": correct},
    "paths": {"samples_jsonl": samples_path},
}
with open(".aider_fsm/rollout.json", "w") as fh:
    json.dump(rollout, fh, indent=2)
print(f"rollout: {len(samples)} samples, {correct} correct", file=sys.stderr)
PY
