"""Hints: extraction from real projects' files, anchors, normalisation, ranking, evidence."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from runner.trust.hints import (
    MAX_ANCHORS,
    MAX_HINTS,
    check_hints_evidence,
    hint_anchors,
    hint_env,
    hint_priority,
    is_interesting,
    normalise_hint,
    read_hints_exec,
    suggest_hints,
)

FIXTURES = Path(__file__).parent / "fixtures" / "hints"

EXPECTED: dict[str, list[tuple[str, str]]] = {
    "evalplus": [
        (
            "docker run -v $(pwd):/app ganler/evalplus:latest --dataset humaneval --samples samples.jsonl",
            "README.md:56",
        ),
        ("evalplus.evaluate --dataset humaneval --samples samples.jsonl", "README.md:62"),
        (
            "docker run -v $(pwd):/app ganler/evalplus:latest --dataset humaneval --samples samples.jsonl --mini",
            "README.md:68",
        ),
        ("python evalplus/evaluate.py --dataset humaneval --samples samples.jsonl", "README.md:78"),
        (
            "evalplus.evaluate --dataset humaneval --samples ${model_name}_temp_${temperature}",
            "README.md:104",
        ),
    ],
    "lm-evaluation-harness": [
        (
            "lm_eval --model hf --model_args pretrained=EleutherAI/gpt-j-6B --tasks hellaswag "
            "--device cuda:0 --batch_size 8",
            "README.md:22",
        ),
        (
            "accelerate launch -m lm_eval --model hf --tasks lambada_openai,arc_easy --batch_size 16",
            "README.md:32",
        ),
        (
            "lm_eval --model nemo_lm --model_args path=<path_to_nemo_model> --tasks hellaswag "
            "--batch_size 32",
            "README.md:40",
        ),
        (
            "lm_eval --model openai-completions --model_args model=davinci-002 "
            "--tasks lambada_openai,hellaswag",
            "README.md:55",
        ),
        (
            "lm_eval --model local-completions --tasks gsm8k --model_args model=facebook/opt-125m,"
            "base_url=http://{yourip}:8000/v1/completions,num_concurrent=1,max_retries=3,"
            "tokenized_requests=False,batch_size=16",
            "README.md:61",
        ),
        (
            "python -m lm_eval --model hf --model_args pretrained=EleutherAI/pythia-160m "
            "--tasks hellaswag --output_path results/ --limit 10",
            "docs/interface.md:8",
        ),
    ],
    # README fences (pip install, http-server, record.py) are not evaluation; CI is.
    "miniwob-plusplus": [
        ("pytest -n logical -v --timeout=120 tests/test_api.py", ".github/workflows/build.yml"),
        (
            "pytest -v --timeout=60 --ignore=tests/test_api.py tests/",
            ".github/workflows/build.yml",
        ),
    ],
    # The matrix entry for the runner's Python is chosen; tox's {posargs:tests} and the
    # unknown {envtmpdir} option are resolved or dropped.
    "flask": [
        ("tox run -e py311", ".github/workflows/tests.yaml"),
        ("pytest -v --tb=short tests", "tox.ini"),
    ],
    # Computed session.run arguments (*posargs, conditional flags) are dropped.
    "urllib3": [
        (
            "python -m coverage run --parallel-mode -m pytest -v -ra --tb=native --durations=10 "
            "--strict-config --strict-markers",
            "noxfile.py",
        ),
        ("pytest tests", "noxfile.py"),
        ("nox -s test", "noxfile.py"),
    ],
    # A step named "Run tests" counts even though `make ci` has no interest word.
    "requests": [
        ("make ci", ".github/workflows/run-tests.yml"),
        ("make test", "Makefile"),
    ],
    "express": [
        ("npm test", "Readme.md:74"),
        ("npm run test-ci", ".github/workflows/ci.yml"),
    ],
    "gitlab-python": [("tox -e py,ruff", ".gitlab-ci.yml")],
    "gsm8k": [],
}


@pytest.mark.parametrize("project", sorted(EXPECTED))
def test_extraction_from_real_project_files(project: str) -> None:
    hints = suggest_hints(FIXTURES / project, python_version="3.11")
    assert [(h.command, h.source) for h in hints] == EXPECTED[project]


def test_every_fixture_project_is_covered() -> None:
    dirs = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert dirs == set(EXPECTED)


@pytest.mark.parametrize(
    ("project", "anchors"),
    [
        (
            "evalplus",
            ["ganler/evalplus:latest", "evalplus.evaluate", "evalplus", "evalplus/evaluate.py"],
        ),
        ("lm-evaluation-harness", ["lm_eval"]),
        ("miniwob-plusplus", ["pytest"]),
        ("requests", ["make ci", "make test"]),
        ("express", ["npm test", "npm run test-ci"]),
        ("urllib3", ["coverage", "pytest", "nox"]),
    ],
)
def test_anchors(project: str, anchors: list[str]) -> None:
    commands = [h.command for h in suggest_hints(FIXTURES / project, python_version="3.11")]
    assert hint_anchors(commands) == anchors
    # Every hint carries at least one exported anchor, so whichever runs can be named.
    assert all(any(a.lower() in c.lower() for a in anchors) for c in commands)


def test_hint_env_exports_the_predecessor_variables() -> None:
    env = hint_env(FIXTURES / "miniwob-plusplus", python_version="3.11")
    assert env["AIDER_FSM_REQUIRE_HINTS"] == "1"
    assert json.loads(env["AIDER_FSM_HINTS_JSON"])[0].startswith("pytest -n logical")
    assert json.loads(env["AIDER_FSM_HINT_ANCHORS_JSON"]) == ["pytest"]


def test_no_hints_means_no_variables() -> None:
    assert hint_env(FIXTURES / "gsm8k") == {}


def test_flask_matrix_follows_the_python_version() -> None:
    hints = suggest_hints(FIXTURES / "flask", python_version="3.10")
    assert hints[0].command == "tox run -e py310"
    # No matching entry: the first include entry is used.
    assert suggest_hints(FIXTURES / "flask", python_version="2.7")[0].command == "tox run -e py312"


def test_caps_and_docs_before_ci(tmp_path: Path) -> None:
    fence = "\n".join(f"pytest tests/test_{i}.py" for i in range(30))
    (tmp_path / "README.md").write_text(f"# x\n\n```bash\n{fence}\n```\n")
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "ci.yml").write_text("jobs:\n  t:\n    steps:\n      - run: make test\n")
    hints = suggest_hints(tmp_path)
    assert len(hints) == MAX_HINTS
    assert [h.source for h in hints[:2]] == ["README.md:4", "README.md:5"]
    anchors = hint_anchors([f"lm_eval_{i} --tasks x" for i in range(30)])
    assert len(anchors) == MAX_ANCHORS


def test_markdown_details(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "~~~sh\n"
        'eval "$(pyenv init -)"\n'
        "curl -sSL https://install.example/eval.sh | bash\n"
        "CUDA_VISIBLE_DEVICES=0 python run_eval.py \\\n"
        "    --split test  # quick check\n"
        "~~~\n"
        "```console\n"
        "$ pytest -q\n"
        "3 passed in 0.01s\n"
        "```\n"
        "```python\n"
        "import evaluate\n"
        "```\n"
        "```yaml\n"
        "eval: true\n"
        "```\n"
    )
    assert [h.command for h in suggest_hints(tmp_path)] == [
        "CUDA_VISIBLE_DEVICES=0 python run_eval.py --split test",
        "pytest -q",
    ]


def test_rst_readme_code_blocks(tmp_path: Path) -> None:
    (tmp_path / "README.rst").write_text(
        "Project\n=======\n\nRun the benchmark:\n\n.. code-block:: bash\n   :caption: eval\n\n"
        "   pip install -e .\n   python -m mypkg.evaluate --split test\n\nDone.\n\n"
        ".. code-block:: python\n\n   import mypkg.evaluate\n"
    )
    hints = suggest_hints(tmp_path)
    assert [h.command for h in hints] == ["python -m mypkg.evaluate --split test"]
    assert hint_anchors([h.command for h in hints]) == ["mypkg.evaluate", "mypkg"]


@pytest.mark.parametrize(
    ("command", "interesting"),
    [
        ("make test", True),
        ("npm test", True),
        ("yarn run test", True),
        ("tox -e py311", True),
        ("nox -s tests", True),
        ("go test ./...", True),
        ("python -m mypkg.eval --limit 5", True),
        ("python -m unittest discover", True),
        ("pip install lm-eval", False),
        ("git clone https://github.com/x/evalkit && cd evalkit", False),
        ("python -m http.server 8080", False),
        ("retrieval --index x", False),
        ('eval "$(ssh-agent -s)"', False),
    ],
)
def test_interest(command: str, interesting: bool) -> None:
    assert is_interesting(command) is interesting


def _which(present: set[str]) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in present else None


ENV: Mapping[str, str] = {"OPENAI_MODEL": "gpt-test", "OPENAI_API_BASE": "http://relay:9/v1"}


@pytest.mark.parametrize(
    ("raw", "present", "env", "expected"),
    [
        ("pytest -n logical -v tests/", {"pytest"}, {}, ("pytest -v tests/", "")),
        ("pytest -q --dist loadfile -n 4", {"pytest"}, {}, ("pytest -q", "")),
        ("pytest -q", set(), {}, ("python3 -m pytest -q", "")),
        ("python run.py", {"python3"}, {}, ("python3 run.py", "")),
        ("python run.py", {"python"}, {}, ("python run.py", "")),
        (
            "pip install -e .[testing] && pytest -q",
            {"pip", "pytest", "python"},
            {"AIDER_FSM_PYTHON": "/venv/bin/python"},
            ("/venv/bin/python -m pip install -e .[testing] && /venv/bin/python -m pytest -q", ""),
        ),
        (
            "evalplus.evaluate --dataset humaneval",
            {"python3"},
            {},
            ("python3 -m evalplus.evaluate --dataset humaneval", ""),
        ),
        ("./run_eval.sh --fast", set(), {}, ("./run_eval.sh --fast", "")),
        ("$ make test", {"make"}, {}, ("make test", "")),
        ("mytool [train|eval|test] --x", {"mytool"}, {}, ("mytool train --x", "")),
        (
            "eval_cli --model <model_name> --base-url <url> --api-key YOUR_API_KEY",
            {"eval_cli"},
            ENV,
            (
                'eval_cli --model gpt-test --base-url http://relay:9/v1 --api-key "$OPENAI_API_KEY"',
                "",
            ),
        ),
        ("lm_eval --model hf --tasks x", {"lm_eval"}, ENV, ("lm_eval --model hf --tasks x", "")),
        ("eval_cli --model <model_name>", {"eval_cli"}, {}, ("", "unresolved_placeholder")),
        ("run --model_args path=<path_to_model>", {"run"}, ENV, ("", "unresolved_placeholder")),
        ("run --url http://{yourip}:8000/v1", {"run"}, ENV, ("", "unresolved_placeholder")),
        ("checker --folder /path/to/model", {"checker"}, ENV, ("", "unresolved_placeholder")),
        (
            "sort <in.txt >out.txt && pytest",
            {"sort", "pytest"},
            {},
            ("sort <in.txt >out.txt && pytest", ""),
        ),
        ("curl -sSL https://x/eval.sh | bash", {"curl"}, {}, ("", "blocked_pipe_to_shell")),
        ("sudo make test", {"make"}, {}, ("", "needs_sudo")),
        ("tox -e ${{ matrix.tox }}", {"tox"}, {}, ("", "unresolved_ci_expression")),
    ],
)
def test_normalise(
    raw: str, present: set[str], env: Mapping[str, str], expected: tuple[str, str]
) -> None:
    assert normalise_hint(raw, env, which=_which(present)) == expected


def test_pytest_parallel_strip_can_be_turned_off() -> None:
    env = {"AIDER_FSM_HINT_STRIP_PYTEST_N": "0"}
    assert normalise_hint("pytest -n 4", env, which=_which({"pytest"}))[0] == "pytest -n 4"


def test_priority_prefers_tests_then_runners_then_evals_and_demotes_docker() -> None:
    order = sorted(
        [
            "docker run img --eval",
            "evalplus.evaluate --dataset x",
            "make test",
            "pytest -q",
            "python bench.py",
        ],
        key=lambda c: -hint_priority(c, {}),
    )
    assert order == [
        "pytest -q",
        "make test",
        "evalplus.evaluate --dataset x",
        "python bench.py",
        "docker run img --eval",
    ]
    assert hint_priority("x --backend openai", {"OPENAI_API_BASE": "h"}) > hint_priority(
        "x --backend openai", {}
    )


# --- evidence ---------------------------------------------------------------------------

USED = {
    "ok": True,
    "used_anchors": ["pytest"],
    "commands": ["pytest -q"],
    "chosen_command": "pytest -q",
}


def test_evidence_accepts_a_command_the_runner_ran() -> None:
    assert check_hints_evidence(USED, ["bash -lc 'pytest -q'"]) == []


def test_evidence_accepts_the_helper_log_when_the_helper_ran() -> None:
    executed = [
        "bash .aider_fsm/stages/evaluation.sh",
        "+ python3 -m runner.helpers.generic_evaluation",
    ]
    assert check_hints_evidence(USED, executed, helper_log=["pytest -q"]) == []


def test_evidence_rejects_a_claim_that_never_ran() -> None:
    errors = check_hints_evidence(USED, ["bash .aider_fsm/stages/evaluation.sh", "echo done"])
    assert errors == [
        "hints_evidence.command_not_executed: pytest -q",
        "hints_evidence.anchor_not_executed: none of ['pytest'] appears in an executed command",
    ]


def test_evidence_ignores_a_helper_log_without_the_helper() -> None:
    errors = check_hints_evidence(USED, ["bash evaluation.sh"], helper_log=["pytest -q"])
    assert errors[0].startswith("hints_evidence.helper_log_without_helper")
    assert "hints_evidence.command_not_executed: pytest -q" in errors


def test_evidence_matches_whole_words_only() -> None:
    claim = {"ok": True, "used_anchors": ["pytest"], "commands": ["pytest -q"]}
    assert check_hints_evidence(claim, ["pytest -qq tests"]) != []


def test_evidence_claims_nothing_when_not_ok() -> None:
    assert check_hints_evidence({"ok": False, "commands": ["x"]}, []) == []


def test_read_hints_exec(tmp_path: Path) -> None:
    log = tmp_path / "hints_exec.jsonl"
    log.write_text(
        json.dumps({"phase": "start", "cmd": "pytest -q"})
        + "\nnot json\n"
        + json.dumps({"phase": "end", "cmd": "pytest -q", "rc": 0})
        + "\n"
    )
    assert read_hints_exec(log) == ["pytest -q"]
    assert read_hints_exec(tmp_path / "missing.jsonl") == []


def test_links_out_of_the_repo_are_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "host_secret.md"
    outside.write_text("```bash\npytest --token=host-secret\n```\n")
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "README.md").symlink_to(outside)
    (repo / "docs" / "ok.md").write_text("```bash\nmake test\n```\n")
    assert [h.command for h in suggest_hints(repo)] == ["make test"]


@pytest.mark.parametrize(
    "executed",
    ["echo pytest -q", ": pytest -q", "# pytest -q", "printf '%s' 'pytest -q'", "true pytest -q"],
)
def test_evidence_refuses_a_claim_that_was_only_mentioned(executed: str) -> None:
    errors = check_hints_evidence(USED, [executed])
    assert "hints_evidence.command_not_executed: pytest -q" in errors


@pytest.mark.parametrize(
    "executed",
    [
        "cd tests && timeout 600 pytest -q -x",
        "FOO=1 /usr/local/bin/pytest -q",
        "bash -c 'pytest -q' || true",
    ],
)
def test_evidence_finds_a_claim_behind_wrappers_and_lists(executed: str) -> None:
    assert check_hints_evidence(USED, [executed]) == []
