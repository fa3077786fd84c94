"""bootstrap.yml (with the predecessor's lenient spellings), env expansion, actions.yml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.contract import (
    BootstrapSpec,
    absolutize_env_paths,
    expand_env,
    load_actions,
    load_bootstrap,
)
from runner.errors import ContractError


def write(tmp_path: Path, text: str, name: str = "bootstrap.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def boot(tmp_path: Path, text: str) -> BootstrapSpec:
    spec = load_bootstrap(write(tmp_path, text))
    assert spec is not None
    return spec


def boot_error(tmp_path: Path, text: str) -> ContractError:
    with pytest.raises(ContractError) as info:
        load_bootstrap(write(tmp_path, text))
    return info.value


def test_canonical_bootstrap(tmp_path: Path) -> None:
    spec = boot(
        tmp_path,
        """
        version: 1
        cmds:
          - python -m venv .aider_fsm/venv
          - "  .aider_fsm/venv/bin/pip install -e .  "
        env:
          AIDER_FSM_PYTHON: .aider_fsm/venv/bin/python
          PATH: ".aider_fsm/venv/bin:$PATH"
          EMPTY: null
        workdir: .
        timeout_seconds: 900
        retries: 1
        """,
    )
    assert spec.cmds == ("python -m venv .aider_fsm/venv", ".aider_fsm/venv/bin/pip install -e .")
    assert spec.env["EMPTY"] == "" and list(spec.env) == ["AIDER_FSM_PYTHON", "PATH", "EMPTY"]
    assert (spec.workdir, spec.timeout_seconds, spec.retries) == (None, 900, 1)
    assert spec.warnings == ()


def test_absent_file_is_none(tmp_path: Path) -> None:
    assert load_bootstrap(tmp_path / "bootstrap.yml") is None


def test_env_only_bootstrap_is_valid(tmp_path: Path) -> None:
    assert boot(tmp_path, "env: {A: b}\n").cmds == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "bootstrap file is empty"),
        ("- a\n", "top level must be a mapping"),
        ("version: 2\ncmds: [a]\n", "unsupported bootstrap version"),
        ("cmds: [a\n", "invalid YAML"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, needle: str) -> None:
    err = boot_error(tmp_path, text)
    assert needle in str(err)
    assert err.file is not None and err.file.endswith("bootstrap.yml")


def test_lenient_spellings_are_accepted_with_predecessor_warnings(tmp_path: Path) -> None:
    spec = boot(
        tmp_path,
        """
        boot:
          steps:
            - name: make venv
              run: python -m venv .venv
            - command: .venv/bin/pip install -r requirements.txt
            - echo done
          cwd: sub/dir
          timeout: 30
          retry: 2
        """,
    )
    assert spec.cmds == (
        "python -m venv .venv",
        ".venv/bin/pip install -r requirements.txt",
        "echo done",
    )
    assert (spec.workdir, spec.timeout_seconds, spec.retries) == ("sub/dir", 30, 2)
    assert spec.warnings == (
        "bootstrap.boot_mapping_unwrapped",
        "bootstrap.steps_alias_used",
        "bootstrap.cwd_alias_used",
        "bootstrap.timeout_alias_used",
        "bootstrap.retry_alias_used",
        "bootstrap.cmds[0]_mapping_coerced_via_run",
        "bootstrap.cmds[1]_mapping_coerced_via_run",
    )


def test_boot_wrapper_is_ignored_when_top_level_fields_exist(tmp_path: Path) -> None:
    spec = boot(tmp_path, "cmds: [a]\nboot:\n  cmds: [b]\n")
    assert spec.cmds == ("a",)
    assert spec.warnings == ("bootstrap.boot_mapping_ignored_due_to_top_level_fields",)


def test_single_string_and_single_mapping_cmds(tmp_path: Path) -> None:
    spec = boot(tmp_path, "cmds: make deps\n")
    assert spec.cmds == ("make deps",)
    assert spec.warnings == ("bootstrap.cmds_coerced_from_string",)
    spec = boot(tmp_path, "cmds:\n  run: make deps\n")
    assert spec.cmds == ("make deps",)
    assert spec.warnings == ("bootstrap.cmds_mapping_coerced_to_single_cmd",)


def test_canonical_key_wins_over_alias_and_says_so(tmp_path: Path) -> None:
    spec = boot(tmp_path, "cmds: [a]\nsteps: [b]\n")
    assert spec.cmds == ("a",)
    assert spec.warnings == ("bootstrap.steps_ignored_because_cmds_is_set",)


def test_unknown_key_is_rejected_with_suggestion(tmp_path: Path) -> None:
    err = boot_error(tmp_path, "version: 1\ncmd: [a]\n")
    assert (err.line, err.field, err.found) == (2, "cmd", "cmd")
    assert "did you mean 'cmds'?" in str(err)


def test_unknown_key_inside_boot_points_into_boot(tmp_path: Path) -> None:
    err = boot_error(tmp_path, "boot:\n  cmds: [a]\n  workdri: x\n")
    assert (err.line, err.field) == (3, "boot.workdri")


def test_value_errors_are_located_through_aliases(tmp_path: Path) -> None:
    err = boot_error(tmp_path, "boot:\n  steps:\n    - ok\n    - 5\n")
    assert (err.line, err.field) == (4, "boot.steps[1]")
    err = boot_error(tmp_path, "timeout: 0\n")
    assert (err.line, err.field) == (1, "timeout")


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("cmds:\n  - echo\n  - name: only a name\n", "cmds[1]", 3),
        ("cmds: 42\n", "cmds", 1),
        ("cmds: ['  ']\n", "cmds[0]", 1),
        ("timeout_seconds: 0\n", "timeout_seconds", 1),
        ("retries: -1\n", "retries", 1),
        ("workdir: ../outside\n", "workdir", 1),
        ("env: [a]\n", "env", 1),
        ("boot: [a]\n", "boot", 1),
    ],
)
def test_bad_values(tmp_path: Path, text: str, field: str, line: int) -> None:
    err = boot_error(tmp_path, text)
    assert (err.field, err.line) == (field, line)


def test_empty_timeout_means_unset(tmp_path: Path) -> None:
    assert boot(tmp_path, "timeout_seconds: ''\n").timeout_seconds is None


# --- env expansion -------------------------------------------------------------------


def test_expand_env_follows_predecessor_rules() -> None:
    base = {"HOME": "/root", "AIDER_FSM_REPO_ROOT": "/workspace", "EMPTY": ""}
    spec = {
        "VENV": "${AIDER_FSM_REPO_ROOT}/.venv",
        "PATH": "$VENV/bin:$PATH",
        "PRICE": "$$5 and $${HOME}",
        "UNKNOWN": "[${NOPE}][$NOPE][$EMPTY]",
        "LITERAL": "${unterminated $1 $",
    }
    out = expand_env(spec, base)
    assert out == {
        "VENV": "/workspace/.venv",
        "PATH": "/workspace/.venv/bin:",
        "PRICE": "$5 and ${HOME}",
        "UNKNOWN": "[][][]",
        "LITERAL": "${unterminated $1 $",
    }
    assert list(out) == list(spec)
    assert base == {"HOME": "/root", "AIDER_FSM_REPO_ROOT": "/workspace", "EMPTY": ""}


def test_expand_env_sees_only_earlier_entries_and_overrides_base() -> None:
    out = expand_env({"A": "$B", "B": "b", "HOME": "/h2", "C": "$HOME"}, {"HOME": "/h"})
    assert out == {"A": "", "B": "b", "HOME": "/h2", "C": "/h2"}


def test_expand_env_is_a_single_pass() -> None:
    assert expand_env({"B": "$A"}, {"A": "$HOME", "HOME": "/h"}) == {"B": "$HOME"}


def test_absolutize_env_paths() -> None:
    out = absolutize_env_paths(
        {"AIDER_FSM_PYTHON": ".aider_fsm/venv/bin/python", "PATH": ".venv/bin::/usr/bin:$HOME/b"},
        "/workspace",
    )
    assert out["AIDER_FSM_PYTHON"] == "/workspace/.aider_fsm/venv/bin/python"
    assert out["PATH"] == "/workspace/.venv/bin::/usr/bin:$HOME/b"
    assert absolutize_env_paths({"AIDER_FSM_PYTHON": "/usr/bin/python3"}, "/w") == {
        "AIDER_FSM_PYTHON": "/usr/bin/python3"
    }


# --- actions.yml ---------------------------------------------------------------------


def test_actions_file(tmp_path: Path) -> None:
    spec = load_actions(
        write(
            tmp_path,
            """
            version: 1
            actions:
              - id: deps
                kind: install_tool
                cmd: pip install ruff
                risk_level: low
                rationale: linting
              - id: svc
                kind: start_service
                cmd: ./serve.sh
                timeout_seconds: 60
                retries: 1
              - id: cfg
                kind: write_file
                path: ./conf/app.env
                content: ""
            """,
            "actions.yml",
        )
    )
    assert spec is not None
    kinds = [(a.id, a.kind, a.run_kind) for a in spec.actions]
    assert kinds == [
        ("deps", "install_tool", "run_cmd"),
        ("svc", "start_service", "run_cmd"),
        ("cfg", "write_file", "write_file"),
    ]
    assert spec.actions[2].path == "conf/app.env" and spec.actions[2].content == ""


def test_actions_absent_is_none(tmp_path: Path) -> None:
    assert load_actions(tmp_path / "actions.yml") is None


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("actions:\n  - kind: run_cmd\n", "actions[0]", "needs `cmd`"),
        (
            "actions:\n  - kind: write_file\n    path: a\n",
            "actions[0]",
            "needs `path` and `content`",
        ),
        (
            "actions:\n  - kind: run_command\n    cmd: x\n",
            "actions[0].kind",
            "did you mean 'run_cmd'?",
        ),
        (
            "actions:\n  - kind: write_file\n    path: /etc/passwd\n    content: x\n",
            "actions[0].path",
            "relative",
        ),
        ("actions:\n  - {id: a, cmd: x}\n  - {id: a, cmd: y}\n", None, "duplicate action ids: a"),
        ("version: 3\n", "version", "unsupported actions version"),
        ("actions:\n  - cmd: x\n    when: always\n", "actions[0].when", "unknown key"),
    ],
)
def test_actions_errors(tmp_path: Path, text: str, field: str | None, needle: str) -> None:
    with pytest.raises(ContractError) as info:
        load_actions(write(tmp_path, text, "actions.yml"))
    assert info.value.field == field
    assert needle in str(info.value)
    assert info.value.line is not None


def test_bare_python_name_is_left_for_path_lookup() -> None:
    from runner.contract import absolutize_env_paths

    out = absolutize_env_paths({"AIDER_FSM_PYTHON": "python3"}, "/workspace")
    assert out["AIDER_FSM_PYTHON"] == "python3"
    out = absolutize_env_paths({"AIDER_FSM_PYTHON": ".venv/bin/python"}, "/workspace")
    assert out["AIDER_FSM_PYTHON"] == "/workspace/.venv/bin/python"
