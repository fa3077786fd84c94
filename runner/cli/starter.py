"""The starter contract ``fsm-runner init`` writes: every file, commented, runs as is.

``pipeline.yml`` and ``.aider_fsm/bootstrap.yml`` validate as written; the stage scripts
write placeholder outputs the validators accept, with TODOs where the real work goes.
``tests/test_cli.py`` loads and runs them, so a template that stops working fails there.
"""

from __future__ import annotations

from pathlib import Path

_PIPELINE = """\
# pipeline.yml: this repository's evaluation contract (version 1), run by fsm-runner.
# Every command runs in a disposable container with the repository root (/workspace)
# as its working directory. Unknown keys are errors. Check it: fsm-runner validate .
version: 1

# tests:                    # the repository's own tests, before deploy (network: none)
#   cmds: [python3 -m pytest -q]
#   timeout_seconds: 600

deploy:
  # Start what the rollout talks to and describe it in .aider_fsm/runtime_env.json.
  setup_cmds: [bash .aider_fsm/stages/deploy_setup.sh]
  health_cmds: [bash .aider_fsm/stages/deploy_health.sh]
  teardown_cmds: [bash .aider_fsm/stages/deploy_teardown.sh]
  teardown_policy: always   # always | on_success | on_failure | never
  timeout_seconds: 120

rollout:
  # Ask the model; write a samples JSONL and .aider_fsm/rollout.json pointing at it.
  run_cmds: [bash .aider_fsm/stages/rollout.sh]
  timeout_seconds: 600
  # network: llm            # none | llm (only the model endpoint) | egress

evaluation:
  # Score this run's samples; write the metrics (`ok` must be exactly true).
  run_cmds: [bash .aider_fsm/stages/evaluation.sh]
  metrics_path: .aider_fsm/metrics.json
  required_keys: [ok, score]
  timeout_seconds: 600

# benchmark:                # an optional extra scored run with its own metrics file
#   run_cmds: [bash .aider_fsm/stages/benchmark.sh]
#   metrics_path: .aider_fsm/benchmark_metrics.json
#   required_keys: [ok, score]

security:
  mode: safe                # safe: no sudo/apt outside bootstrap; system: allowed
  max_cmd_seconds: 900      # caps every command's timeout
  # network: llm            # the most network any stage may get
  # memory: 2g
  # cpus: 1
"""

_BOOTSTRAP = """\
# .aider_fsm/bootstrap.yml: prepare the environment once, before the stages. It gets
# network (egress) so installs work. Keep it idempotent and non-interactive; tests and
# evaluations belong in pipeline.yml.
version: 1
cmds:
  - python3 --version
  # - python3 -m venv .aider_fsm/venv
  # - .aider_fsm/venv/bin/pip install -r requirements.txt
env:
  # Stages call "$AIDER_FSM_PYTHON"; a relative path is made absolute by the runner.
  AIDER_FSM_PYTHON: python3   # e.g. .aider_fsm/venv/bin/python
timeout_seconds: 600
"""

_DEPLOY_SETUP = """\
#!/usr/bin/env bash
# deploy.setup: start your service in the background, then describe it in
# .aider_fsm/runtime_env.json (read by later stages through $AIDER_RUNTIME_ENV_PATH).
# TODO: e.g. nohup "$AIDER_FSM_PYTHON" -m my_server --port 8000 >.aider_fsm/server.log 2>&1 &
#            echo $! >.aider_fsm/server.pid
set -euo pipefail
printf '{"service": {}, "inference": {"model": "%s"}}\\n' "${AIDER_LLM_MODEL:-}" \\
  >.aider_fsm/runtime_env.json
"""

_DEPLOY_HEALTH = """\
#!/usr/bin/env bash
# deploy.health: exit 0 once the service answers.
# TODO: e.g. curl -fsS --retry 20 --retry-connrefused http://127.0.0.1:8000/health
set -euo pipefail
test -s .aider_fsm/runtime_env.json
"""

_DEPLOY_TEARDOWN = """\
#!/usr/bin/env bash
# deploy.teardown: stop what deploy started; must be safe to run twice.
# TODO: e.g. kill "$(cat .aider_fsm/server.pid 2>/dev/null)" 2>/dev/null || true
true
"""

_ROLLOUT = """\
#!/usr/bin/env bash
# rollout: write one {prompt, completion, reward} JSON line per sample, and
# .aider_fsm/rollout.json naming that file. Outputs from earlier runs are removed first.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json
import os

# TODO: your tasks; AIDER_EVAL_MODE is smoke or full (run fewer tasks for smoke).
PROMPTS = ["What is 2 + 2?", "Name a prime number."]


def complete(prompt: str) -> str:
    # TODO: ask your model; OPENAI_BASE_URL, OPENAI_API_KEY and AIDER_LLM_MODEL are set
    # when the run has a model endpoint.
    return "TODO: call the model"


def reward(prompt: str, completion: str) -> float:
    return 0.0  # TODO: grade the completion


out = ".aider_fsm/samples.jsonl"
with open(out, "w") as fh:
    for prompt in PROMPTS:
        completion = complete(prompt)
        sample = {"prompt": prompt, "completion": completion, "reward": reward(prompt, completion)}
        fh.write(json.dumps(sample) + "\\n")
manifest = {
    "ok": True,
    "mode": os.environ.get("AIDER_EVAL_MODE", "smoke"),
    "counts": {"samples": len(PROMPTS), "errors": 0},
    "paths": {"samples_jsonl": out},
}
with open(".aider_fsm/rollout.json", "w") as fh:
    json.dump(manifest, fh)
PY
"""

_EVALUATION = """\
#!/usr/bin/env bash
# evaluation: score the samples this run wrote. `ok` must be exactly true and `score`
# a finite number, or the run fails.
set -euo pipefail
"${AIDER_FSM_PYTHON:-python3}" - <<'PY'
import json

with open(".aider_fsm/rollout.json") as fh:
    samples = json.load(fh)["paths"]["samples_jsonl"]
with open(samples) as fh:
    rewards = [json.loads(line)["reward"] for line in fh]
metrics = {"ok": True, "score": sum(rewards) / len(rewards), "n": len(rewards)}
with open(".aider_fsm/metrics.json", "w") as fh:
    json.dump(metrics, fh)
print(json.dumps(metrics))
PY
"""

STARTER_FILES: dict[str, str] = {
    "pipeline.yml": _PIPELINE,
    ".aider_fsm/bootstrap.yml": _BOOTSTRAP,
    ".aider_fsm/stages/deploy_setup.sh": _DEPLOY_SETUP,
    ".aider_fsm/stages/deploy_health.sh": _DEPLOY_HEALTH,
    ".aider_fsm/stages/deploy_teardown.sh": _DEPLOY_TEARDOWN,
    ".aider_fsm/stages/rollout.sh": _ROLLOUT,
    ".aider_fsm/stages/evaluation.sh": _EVALUATION,
    ".aider_fsm/.gitignore": "# Run outputs: never commit them.\nartifacts/\nvenv*/\n"
    "runtime_env.json\nrollout.json\nmetrics.json\nsamples.jsonl\nhints_*.json\n",
}
"""Everything ``fsm-runner init`` writes: a contract that validates and runs as is."""


# -- `fsm-runner init --tests`: the project's own test suite as its evaluation -------------

_TEST_REQUIREMENTS = (
    "requirements-test.txt",
    "requirements-tests.txt",
    "requirements_test.txt",
    "test-requirements.txt",
    "requirements/test.txt",
    "requirements/tests.txt",
    "requirements/testing.txt",
    "tests/requirements.txt",
)
"""Files a project names its test dependencies in; the first found is installed."""

_TESTS_PIPELINE = """\
# pipeline.yml written by `fsm-runner init --tests`: the project's own test suite is the
# evaluation. runner.helpers.test_suite runs pytest with --junitxml and writes the
# counts (tests, passed, failed, errors, skipped; score = passed / (passed+failed+errors))
# to the metrics; `ok` is true only when nothing failed. A failing suite fails the run
# and keeps its counts. Tests run without network. Check it: fsm-runner validate .
version: 1

evaluation:
  run_cmds:
    - >-
      "$AIDER_FSM_PYTHON" -m runner.helpers.test_suite --
      "$AIDER_FSM_PYTHON" -m pytest -q -p no:cacheprovider
  metrics_path: .aider_fsm/metrics.json
  required_keys: [ok, score, passed, failed]
  timeout_seconds: 1800

security:
  mode: safe
"""

_TESTS_BOOTSTRAP = """\
# .aider_fsm/bootstrap.yml written by `fsm-runner init --tests`: a venv with pytest and
# what the tests need (egress; saved as a snapshot, so later runs skip it).
# TEST_DEPS: more packages the test suite imports (`init --tests --pip NAME` adds them).
version: 1
cmds:
  - python3 -m venv .aider_fsm/venv
  - .aider_fsm/venv/bin/python -m pip install -q pytest {requirements}$TEST_DEPS
{install}# What bootstrap reads of the repository: only these decide whether the saved venv is
# reused (the cache key hashes them instead of every file), so editing a test does not
# reinstall. Add a file here when bootstrap starts reading it.
inputs: [{inputs}]
env:
  # Stages call "$AIDER_FSM_PYTHON"; a relative path is made absolute by the runner.
  AIDER_FSM_PYTHON: .aider_fsm/venv/bin/python
  TEST_DEPS: "{deps}"
timeout_seconds: 900
"""

_INSTALL_PROJECT = """\
  # The project itself; when it does not install, its tests still run from the source tree.
  - .aider_fsm/venv/bin/python -m pip install -q -e . || echo "the project did not install, its tests run from the source tree"
"""


def starter_for_tests(repo: Path, pip: list[str]) -> dict[str, str]:
    """The files of ``fsm-runner init --tests`` for ``repo`` (issue 16.6): no glue to write."""
    req = next((r for r in _TEST_REQUIREMENTS if (repo / r).is_file()), None)
    installable = any((repo / name).is_file() for name in ("pyproject.toml", "setup.py"))
    read = [req] if req else []
    if installable:
        read += [n for n in ("pyproject.toml", "setup.py", "setup.cfg") if (repo / n).is_file()]
    bootstrap = _TESTS_BOOTSTRAP.format(
        requirements=f"-r {req} " if req else "",
        install=_INSTALL_PROJECT if installable else "",
        inputs=", ".join(read),
        deps=" ".join(pip),
    )
    return {
        "pipeline.yml": _TESTS_PIPELINE,
        ".aider_fsm/bootstrap.yml": bootstrap,
        ".aider_fsm/.gitignore": STARTER_FILES[".aider_fsm/.gitignore"] + "junit.xml\n",
    }
