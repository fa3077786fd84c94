"""pipeline.yml loading: the predecessor's schema, located errors, the stage view."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pydantic
import pytest

import runner.contract as contract
from runner.contract import STAGE_NAMES, PipelineSpec, load_pipeline, pipeline_json_schema
from runner.errors import ContractError


def write(tmp_path: Path, text: str, name: str = "pipeline.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> PipelineSpec:
    return load_pipeline(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> ContractError:
    with pytest.raises(ContractError) as info:
        load(tmp_path, text)
    return info.value


FULL = """
version: 1
tests:
  cmds: ["bash .aider_fsm/stages/tests.sh"]
auth:
  steps: ["docker login --password-stdin"]
  interactive: true
deploy:
  setup_cmd: "  bash .aider_fsm/stages/deploy_setup.sh  "
  health_cmds:
    - bash .aider_fsm/stages/deploy_health.sh
  teardown_cmd: bash .aider_fsm/stages/deploy_teardown.sh
  teardown_policy: on_failure
  timeout_seconds: 600
  retries: 2
  env: {PORT: 8000, DEBUG: null, FLAG: true}
  workdir: ./services/api/
  network: llm
  kubectl_dump: {enabled: true, namespace: demo, include_logs: true}
rollout:
  run_cmd: bash .aider_fsm/stages/rollout.sh
  network: egress
evaluation:
  run_cmds: [bash .aider_fsm/stages/evaluation.sh]
  metrics_path: .aider_fsm/metrics.json
  required_keys: [ok, score, "  "]
benchmark:
  run_cmd: bash .aider_fsm/stages/benchmark.sh
security:
  mode: SYSTEM
  allowlist: ["^bash ", "^python"]
  denylist: ["curl .*\\\\| *sh"]
  max_cmd_seconds: 900
  max_total_seconds: 3600
  memory: 4G
  cpus: 2.5
  pids: 512
  network: egress
artifacts: {out_dir: .aider_fsm/artifacts}
tooling: {ensure_tools: true, ensure_kind_cluster: true, kind_config: kind.yaml}
"""


def test_full_pipeline_loads_with_normalised_values(tmp_path: Path) -> None:
    spec = load(tmp_path, FULL)
    assert spec.version == 1
    assert spec.deploy is not None
    assert spec.deploy.setup_commands == ("bash .aider_fsm/stages/deploy_setup.sh",)
    assert spec.deploy.teardown_policy == "on_failure"
    assert spec.deploy.env == {"PORT": "8000", "DEBUG": "", "FLAG": "True"}
    assert spec.deploy.workdir == "services/api"
    assert spec.deploy.kubectl_dump is not None and spec.deploy.kubectl_dump.namespace == "demo"
    assert spec.evaluation is not None
    assert spec.evaluation.required_keys == ("ok", "score")
    assert spec.security.mode == "system"
    assert spec.security.memory == "4g"
    assert spec.security.cpus == 2.5
    assert spec.tooling is not None and spec.tooling.ensure_kind_cluster is True
    assert spec.tooling.kind_cluster_name == "kind"


def test_stage_view_is_uniform_and_shares_deploy_settings(tmp_path: Path) -> None:
    spec = load(tmp_path, FULL)
    health = spec.stage("deploy_health")
    assert health is not None
    assert health.name == "deploy_health"
    assert health.cmds == ("bash .aider_fsm/stages/deploy_health.sh",)
    assert (health.timeout_seconds, health.retries, health.workdir) == (600, 2, "services/api")
    assert health.network == "llm"
    assert dict(health.env) == {"PORT": "8000", "DEBUG": "", "FLAG": "True"}
    auth = spec.stage("auth")
    assert auth is not None and auth.interactive is True
    assert auth.cmds == ("docker login --password-stdin",)
    rollout = spec.stage("rollout")
    assert rollout is not None and rollout.network == "egress" and rollout.retries == 0
    assert rollout.timeout_seconds is None and rollout.workdir is None
    assert [spec.stage(n) is not None for n in STAGE_NAMES] == [True] * len(STAGE_NAMES)


def test_stage_is_none_without_commands_and_rejects_unknown_names(tmp_path: Path) -> None:
    spec = load(tmp_path, "deploy:\n  setup_cmd: up\n")
    assert spec.stage("deploy_setup") is not None
    assert spec.stage("deploy_health") is None
    assert spec.stage("tests") is None
    with pytest.raises(ValueError, match="unknown stage 'deploy'"):
        spec.stage("deploy")  # type: ignore[arg-type]


def test_spec_and_stage_view_are_immutable(tmp_path: Path) -> None:
    spec = load(tmp_path, FULL)
    with pytest.raises(pydantic.ValidationError):
        spec.security = spec.security
    stage = spec.stage("deploy_setup")
    assert stage is not None
    with pytest.raises(TypeError):
        stage.env["X"] = "1"  # type: ignore[index]


def test_plural_wins_over_singular_even_when_empty(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        "tests:\n  cmd: one\n  cmds: [two, three]\nrollout:\n  run_cmd: x\n  run_cmds: []\n",
    )
    assert spec.tests is not None and spec.tests.commands == ("two", "three")
    assert spec.stage("rollout") is None


def test_auth_steps_only_used_when_cmds_give_nothing(tmp_path: Path) -> None:
    spec = load(tmp_path, "auth:\n  cmd: login\n  steps: [other]\n")
    assert spec.auth is not None and spec.auth.commands == ("login",)


def test_empty_command_in_list_is_located(tmp_path: Path) -> None:
    err = load_error(tmp_path, "version: 1\ndeploy:\n  setup_cmds:\n    - ok\n    - '   '\n")
    assert err.line == 5
    assert err.field == "deploy.setup_cmds[1]"
    assert "pipeline.yml:5: deploy.setup_cmds[1]: command must be a non-empty string" in str(err)


def test_non_string_command_is_rejected(tmp_path: Path) -> None:
    err = load_error(tmp_path, "tests:\n  cmds:\n    - 123\n")
    assert (err.line, err.field) == (3, "tests.cmds[0]")


@pytest.mark.parametrize(
    ("text", "field", "suggestion"),
    [
        ("deploy:\n  setup_cmd: a\n  setup_cmdz: b\n", "deploy.setup_cmdz", "setup_cmd"),
        ("version: 1\nevalution:\n  run_cmd: x\n", "evalution", "evaluation"),
        ("security:\n  denylst: [x]\n", "security.denylst", "denylist"),
    ],
)
def test_misspelt_key_names_line_allowed_and_suggestion(
    tmp_path: Path, text: str, field: str, suggestion: str
) -> None:
    err = load_error(tmp_path, text)
    message = str(err)
    assert err.field == field
    assert err.line == text.count("\n", 0, text.index(field.split(".")[-1])) + 1
    assert f"pipeline.yml:{err.line}: {field}: unknown key" in message
    assert isinstance(err.allowed, list) and suggestion in err.allowed
    assert re.search(rf"did you mean '{suggestion}s?'\?", message)


def test_unknown_kind_of_literal_lists_choices(tmp_path: Path) -> None:
    err = load_error(tmp_path, "deploy:\n  setup_cmd: x\n  teardown_policy: on_sucess\n")
    assert err.line == 3 and err.found == "on_sucess"
    assert err.allowed == ["always", "on_success", "on_failure", "never"]
    assert "did you mean 'on_success'?" in str(err)


def test_teardown_policy_defaults_and_is_case_insensitive(tmp_path: Path) -> None:
    assert load(tmp_path, "deploy:\n  setup_cmd: x\n").deploy.teardown_policy == "always"  # type: ignore[union-attr]
    spec = load(tmp_path, "deploy:\n  teardown_policy: ' Never '\n")
    assert spec.deploy is not None and spec.deploy.teardown_policy == "never"


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    err = load_error(tmp_path, text)
    assert "pipeline file is empty" in str(err)
    assert err.file is not None and err.file.endswith("pipeline.yml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "top level must be a mapping" in str(load_error(tmp_path, text))


def test_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="file not found"):
        load_pipeline(tmp_path / "nope.yml")


def test_yaml_syntax_error_uses_the_problem_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, "version: 1\ntests:\n  cmds: [a, b\nrollout:\n  run_cmd: x\n")
    assert err.line is not None and 3 <= err.line <= 5
    assert "invalid YAML" in str(err)
    assert f"pipeline.yml:{err.line}:" in str(err)


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    err = load_error(tmp_path, "tests:\n  cmd: !!python/object/apply:os.system ['id']\n")
    assert "invalid YAML" in str(err) and err.line == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", 1), ("version: 1\n", 1), ("version: null\n", 1), ("version: '1'\n", 1)],
)
def test_version_defaults_to_one(tmp_path: Path, value: str, expected: int) -> None:
    assert load(tmp_path, value + "tests: {cmd: x}\n").version == expected


@pytest.mark.parametrize("value", ["2", "true", "'v1'", "0"])
def test_other_versions_are_unsupported(tmp_path: Path, value: str) -> None:
    err = load_error(tmp_path, f"tests: {{cmd: x}}\nversion: {value}\n")
    assert "unsupported pipeline version" in str(err)
    assert (err.line, err.field) == (2, "version")


def test_timeouts_and_retries(tmp_path: Path) -> None:
    spec = load(tmp_path, "tests:\n  cmd: x\n  timeout_seconds: 0\n  retries: null\n")
    assert spec.tests is not None
    assert (spec.tests.timeout_seconds, spec.tests.retries) == (None, 0)
    for bad, line in (
        ("timeout_seconds: -5", 3),
        ("timeout_seconds: true", 3),
        ("timeout_seconds: soon", 3),
        ("retries: -1", 3),
        ("retries: yes", 3),
    ):
        err = load_error(tmp_path, f"tests:\n  cmd: x\n  {bad}\n")
        assert err.line == line, bad
        assert err.field == f"tests.{bad.split(':')[0]}"


def test_env_values_are_stringified_and_containers_rejected(tmp_path: Path) -> None:
    spec = load(tmp_path, "rollout:\n  run_cmd: x\n  env:\n    A: 1.5\n    ' B ': x\n    C: ~\n")
    assert spec.rollout is not None and spec.rollout.env == {"A": "1.5", "B": "x", "C": ""}
    assert load(tmp_path, "rollout:\n  env: null\n").rollout.env == {}  # type: ignore[union-attr]
    err = load_error(tmp_path, "rollout:\n  run_cmd: x\n  env:\n    OK: 1\n    BAD: [1, 2]\n")
    assert (err.line, err.field) == (5, "rollout.env.BAD")
    err = load_error(tmp_path, "rollout:\n  env: [A=1]\n")
    assert err.field == "rollout.env"


@pytest.mark.parametrize(
    ("workdir", "expected"),
    [("sub", "sub"), ("./a/./b/", "a/b"), ("a/../b", "b"), (".", None), ("''", None)],
)
def test_workdir_is_normalised(tmp_path: Path, workdir: str, expected: str | None) -> None:
    spec = load(tmp_path, f"tests:\n  cmd: x\n  workdir: {workdir}\n")
    assert spec.tests is not None and spec.tests.workdir == expected


@pytest.mark.parametrize("workdir", ["/abs/path", "..", "../sibling", "a/../../x", "~/x", "C:/x"])
def test_workdir_must_stay_inside_the_repo(tmp_path: Path, workdir: str) -> None:
    err = load_error(tmp_path, f"tests:\n  cmd: x\n  workdir: '{workdir}'\n")
    assert (err.line, err.field) == (3, "tests.workdir")
    assert "relative to the repository root" in str(err) or "inside the repository" in str(err)


def test_invalid_regex_names_the_entry(tmp_path: Path) -> None:
    err = load_error(tmp_path, "security:\n  denylist:\n    - sudo\n    - 'rm (-rf'\n")
    assert (err.line, err.field, err.found) == (4, "security.denylist[1]", "rm (-rf")
    assert "invalid regular expression" in str(err)


def test_security_patterns_compile_case_insensitively(tmp_path: Path) -> None:
    spec = load(tmp_path, "security:\n  allowlist: ['^make ', '']\n  denylist: [SUDO]\n")
    assert spec.security.allowlist == ("^make",)  # stripped, blanks dropped: predecessor rule
    assert spec.security.deny_patterns[0].search("sudo rm")
    assert spec.security.allow_patterns[0].search("MAKE test")


def test_security_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, "security: null\n")
    assert spec.security.mode == "safe"
    assert spec.security.allowlist == () and spec.security.network is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("security:\n  mode: unsafe\n", "security.mode"),
        ("security:\n  memory: 2 gigs\n", "security.memory"),
        ("security:\n  cpus: 0\n", "security.cpus"),
        ("security:\n  pids: true\n", "security.pids"),
        ("security:\n  network: internet\n", "security.network"),
        ("security:\n  allowlist: sudo\n", "security.allowlist"),
        ("security:\n  max_total_seconds: -1\n", "security.max_total_seconds"),
        ("rollout:\n  network: everything\n", "rollout.network"),
        ("tests: pytest -q\n", "tests"),
        ("evaluation:\n  required_keys: [ok, 3]\n", "evaluation.required_keys[1]"),
        ("auth:\n  interactive: maybe\n", "auth.interactive"),
        ("deploy:\n  kubectl_dump: {enabled: true, labels: x}\n", "deploy.kubectl_dump.labels"),
    ],
)
def test_bad_values_are_located_contract_errors(tmp_path: Path, text: str, field: str) -> None:
    err = load_error(tmp_path, text)
    assert err.field == field
    assert err.line is not None and err.line >= 1
    assert str(err).startswith(f"{tmp_path / 'pipeline.yml'}:{err.line}: {field}: ")


def test_memory_accepts_docker_sizes(tmp_path: Path) -> None:
    assert load(tmp_path, "security:\n  memory: 512M\n").security.memory == "512m"
    assert load(tmp_path, "security:\n  memory: 1073741824\n").security.memory == "1073741824"


def test_anchors_and_merge_keys_keep_working(tmp_path: Path) -> None:
    text = (
        "tests: &common\n  cmd: pytest\n  timeout_seconds: 30\nauth:\n  <<: *common\n  cmd: login\n"
    )
    spec = load(tmp_path, text)
    assert spec.auth is not None and spec.auth.commands == ("login",)
    assert spec.auth.timeout_seconds == 30
    err = load_error(tmp_path, text + "  retriez: 1\n")
    assert (err.field, err.line) == ("auth.retriez", 7)
    err = load_error(tmp_path, "common: &c\n  cmd: x\ntests: *c\n")
    assert (err.field, err.line) == ("common", 1)


def test_recursive_alias_does_not_hang(tmp_path: Path) -> None:
    err = load_error(tmp_path, "tests:\n  cmds: &x [a, *x]\n")
    assert err.field is not None and err.field.startswith("tests.cmds")


def test_many_errors_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    err = load_error(tmp_path, "tests:\n  cmdz: a\n  retriez: 1\n")
    assert err.field == "tests.cmdz" and "(+1 more problem)" in str(err)


def test_json_schema_is_generated_and_documents_every_field() -> None:
    schema = pipeline_json_schema()
    json.dumps(schema)
    assert schema["title"] == "pipeline.yml (version 1)"
    assert schema["additionalProperties"] is False
    models = [schema, *schema["$defs"].values()]
    undocumented = [
        f"{m.get('title')}.{name}"
        for m in models
        for name, prop in m.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undocumented == []
    deploy = schema["$defs"]["DeployStage"]["properties"]
    assert {"setup_cmd", "setup_cmds", "teardown_policy", "network"} <= set(deploy)


def test_exported_names() -> None:
    assert set(contract.__all__) == {
        "STAGE_NAMES",
        "Action",
        "ActionsSpec",
        "BootstrapSpec",
        "NetworkPolicy",
        "PipelineSpec",
        "RolloutManifest",
        "RuntimeEnv",
        "Sample",
        "SamplesReport",
        "StageName",
        "StageSpec",
        "absolutize_env_paths",
        "expand_env",
        "load_actions",
        "load_bootstrap",
        "load_pipeline",
        "load_runtime_env",
        "pipeline_json_schema",
        "validate_hints_run",
        "validate_hints_used",
        "validate_metrics",
        "validate_rollout",
        "validate_rollout_manifest",
        "validate_samples_jsonl",
    }
    assert all(hasattr(contract, name) for name in contract.__all__)


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    "text",
    [
        "x: " + "[" * 2000 + "]" * 2000 + "\n",
        "tests:\n  cmd: x\n\x00",
        "---\ntests: {}\n---\nauth: {}\n",
        "? [a]: b\n",
        "1: x\n",
        "security: {cpus: .inf}\n",
        "tests:\n  cmds: !!python/name:os.system\n",
        LAUGHS + "tests:\n  cmds: *i\n",
    ],
    ids=["deep", "nul", "multi-doc", "list-key", "int-key", "inf", "python-tag", "laughs"],
)
def test_hostile_documents_give_contract_errors(tmp_path: Path, text: str) -> None:
    err = load_error(tmp_path, text)
    assert err.file is not None and err.file.endswith("pipeline.yml")
