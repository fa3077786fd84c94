"""manifest.json (runner/manifest.py, runner/manifest_builder.py) and `fsm-runner verify`.

The Docker tests share one run of examples/tiny (module scope); tests that edit a run
dir work on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import runner_env
from runner.cli.main import main
from runner.runs.determinism import DETERMINISM_DEFAULTS, SEED_VAR, derive_seed
from runner.runs.manifest import MANIFEST_FILE, load_manifest, manifest_json_schema, verify_run_dir
from runner.runs.manifest_builder import WORKSPACE_EXCLUDE, workspace_digest
from runner.runs.run_dir import DEFAULT_MAX_COPY_BYTES
from runner.session.stage_env import base_stage_env
from tests.contract_repos import copy_example, make_repo

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DOC = ROOT / "docs" / "manifest.schema.json"
METRICS = "env_api/evaluation_attempt_01/outputs/.aider_fsm/metrics.json"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


# -- no engine needed --------------------------------------------------------------------


def test_schema_doc_is_generated_from_the_model() -> None:
    """docs/manifest.schema.json is regenerated with `python -m runner.runs.manifest`."""
    expected = json.dumps(manifest_json_schema(), indent=2) + "\n"
    assert SCHEMA_DOC.read_text() == expected, (
        "stale: .venv/bin/python -m runner.runs.manifest > docs/manifest.schema.json"
    )
    schema = json.loads(expected)
    assert {"files", "commands", "settings", "images", "determinism"} <= set(schema["required"])


def test_determinism_env_and_seed() -> None:
    env = base_stage_env(
        stage="rollout",
        workspace="/workspace",
        run_id="20260101_000000_abcdef",
        artifacts_dir="/workspace/x",
        mode="smoke",
        bootstrap_env={"TZ": "Europe/Paris"},  # a contract's own setting wins
        llm_env={},
    )
    assert env["TZ"] == "Europe/Paris"
    assert {k: env[k] for k in ("PYTHONHASHSEED", "LC_ALL", "SOURCE_DATE_EPOCH")} == {
        k: DETERMINISM_DEFAULTS[k] for k in ("PYTHONHASHSEED", "LC_ALL", "SOURCE_DATE_EPOCH")
    }
    assert env[SEED_VAR] == str(derive_seed("20260101_000000_abcdef"))
    seeds = {derive_seed(f"20260101_000000_{i:06x}") for i in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**31 for s in seeds)


def test_verify_without_manifest_is_trouble(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "events.jsonl").write_text("{}\n")
    code, _, err = cli(capsys, "verify", str(tmp_path))
    assert code == 2 and "manifest.json" in err


# -- one real run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, default_image: str) -> Path:
    repo = tmp_path_factory.mktemp("tiny") / "tiny"
    copy_example("tiny", repo)
    sess = runner_env.setup(repo)
    assert sess.rollout(llm="tiny-adder", require_samples=False, repair_iters=0).ok
    assert sess.evaluate(repair_iters=0).ok
    return sess.artifacts_dir


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, copy, symlinks=True)
    yield copy


@pytest.mark.docker
def test_manifest_records_the_run(tiny_run: Path) -> None:
    m = load_manifest(tiny_run)
    repo = Path(m.target.repo)
    assert m.run_id == tiny_run.name and m.runner_version == "0.1.0"
    assert (m.target.source, m.target.commit) == ("local", None)
    assert m.target.workspace_sha256 == workspace_digest(repo, WORKSPACE_EXCLUDE)[0]
    base = m.images[0]
    assert base.role == "base" and base.ref and base.id and base.id.startswith("sha256:")
    # The run's calls and settings, as replay needs them.
    assert [(c.call, c.mode) for c in m.settings.calls] == [
        ("rollout", "smoke"),
        ("evaluate", "smoke"),
    ]
    assert m.settings.llm == "tiny-adder" and m.settings.seed == derive_seed(m.run_id)
    assert m.determinism == {**DETERMINISM_DEFAULTS, SEED_VAR: str(m.settings.seed)}
    assert (m.result.phase, m.result.ok, m.result.state) == ("evaluation", True, "CLOSED")
    # Every command, with what it ran with and hashes of what it printed.
    stages = [c.stage for c in m.commands]
    assert stages == [
        "bootstrap",
        "deploy_setup",
        "deploy_health",
        "rollout",
        "evaluation",
        "deploy_teardown",
    ]
    for cmd in m.commands:
        assert cmd.argv == ["sh", "-c", cmd.cmd] and cmd.workdir == "/workspace"
        assert cmd.exit_code == 0 and cmd.duration_s is not None
        assert cmd.env[SEED_VAR] == str(m.settings.seed) and cmd.env["TZ"] == "UTC"
        assert cmd.env["AIDER_FSM_STAGE"] == cmd.stage
        stem = f"{cmd.stage}_cmd{cmd.index + 1:02d}_try{cmd.attempt + 1:02d}"
        assert cmd.stdout_sha256 == sha(tiny_run / cmd.pass_dir / f"{stem}_stdout.txt")
        assert cmd.stderr_sha256 == sha(tiny_run / cmd.pass_dir / f"{stem}_stderr.txt")
    sandbox = json.loads((tiny_run / "sandbox.json").read_text())
    assert {s.stage: s.network for s in m.stages} == {
        k: v["network"] for k, v in sandbox["stages"].items()
    }
    assert all(s.timeout_s for s in m.stages) and m.sandbox["limits"]["memory"] == "2g"
    # Outputs: the samples came back although require_samples was False.
    out = m.outputs
    assert out.metrics is not None and out.metrics.path == METRICS
    assert out.rollout is not None and out.samples is not None and out.samples_lines == 8
    for digest in (out.metrics, out.rollout, out.samples):
        assert digest.sha256 == sha(tiny_run / digest.path)
    listed = {f.path for f in m.files}
    assert {"events.jsonl", "sandbox.json", "policy.json", METRICS} <= listed
    assert MANIFEST_FILE not in listed and "report.md" not in listed
    assert (tiny_run / "report.md").is_file()  # written after the manifest, not covered


@pytest.mark.docker
def test_verify_passes_on_an_untouched_run(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "verify", str(tiny_run))
    assert code == 0, out
    assert f"{len(load_manifest(tiny_run).files)} files match" in out


@pytest.mark.docker
def test_verify_names_an_edited_metrics_file(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = run_copy / METRICS
    metrics.write_text(metrics.read_text().replace('"score": 0.5', '"score": 0.9'))
    code, out, _ = cli(capsys, "verify", str(run_copy))
    assert code == 1
    assert f"{METRICS}: changed" in out
    assert [p.path for p in verify_run_dir(run_copy).problems] == [METRICS]


@pytest.mark.docker
def test_verify_names_missing_added_and_manifest_edits(run_copy: Path) -> None:
    (run_copy / "events.jsonl").unlink()
    (run_copy / "env_api" / "late.txt").write_text("written after the run\n")
    report = verify_run_dir(run_copy)
    assert {(p.path, p.what) for p in report.problems} == {
        ("events.jsonl", "missing"),
        ("env_api/late.txt", "added"),
    }
    # A manifest edited to agree with an edited file no longer agrees with itself.
    data = json.loads((run_copy / MANIFEST_FILE).read_text())
    data["outputs"]["metrics"]["sha256"] = "0" * 64
    (run_copy / MANIFEST_FILE).write_text(json.dumps(data))
    assert ("manifest.json", "changed") in {
        (p.path, p.what) for p in verify_run_dir(run_copy).problems
    }
    (run_copy / MANIFEST_FILE).write_text('{"schema_version": 1}')
    problems = verify_run_dir(run_copy).problems
    assert [(p.path, p.what) for p in problems] == [("manifest.json", "invalid")]


@pytest.mark.docker
def test_rollout_only_and_evaluate_only_sessions_get_consistent_manifests(
    tmp_path: Path, default_image: str
) -> None:
    repo = tmp_path / "tiny"
    copy_example("tiny", repo)
    secret = "hunter2-very-secret-value"
    env_file = tmp_path / "run.env"
    env_file.write_text(f"MY_API_TOKEN={secret}\n")
    sess = runner_env.setup(repo, env_file=env_file)
    assert sess.rollout(llm="tiny-adder", repair_iters=0).ok
    sess.close()
    m = load_manifest(sess.artifacts_dir)
    assert [c.call for c in m.settings.calls] == ["rollout"] and m.result.phase == "rollout"
    assert m.outputs.metrics is None and m.outputs.samples_lines == 8
    assert m.settings.env_file_keys == ["MY_API_TOKEN"]
    assert all(c.env["MY_API_TOKEN"] == "***" for c in m.commands)
    assert secret not in (sess.artifacts_dir / MANIFEST_FILE).read_text()
    assert verify_run_dir(sess.artifacts_dir).ok

    sess = runner_env.setup(repo)
    assert sess.evaluate(llm="tiny-adder", repair_iters=0).ok
    m = load_manifest(sess.artifacts_dir)
    assert [c.call for c in m.settings.calls] == ["evaluate"] and m.result.phase == "evaluation"
    assert m.outputs.metrics is not None and m.outputs.samples_lines == 8
    assert verify_run_dir(sess.artifacts_dir).ok


@pytest.mark.docker
def test_an_oversized_samples_file_is_not_copied_at_close(
    tmp_path: Path, default_image: str
) -> None:
    rollout = (
        "truncate -s 80M samples.jsonl\n"
        """echo '{"ok": true, "paths": {"samples_jsonl": "samples.jsonl"}}' > .aider_fsm/rollout.json\n"""
    )
    repo = make_repo(tmp_path / "repo", rollout=rollout)
    sess = runner_env.setup(repo)
    assert sess.rollout(llm="m", repair_iters=0).ok  # samples not checked
    sess.close()
    m = load_manifest(sess.artifacts_dir)
    assert m.outputs.rollout is not None and m.outputs.samples is None
    assert max(f.size for f in m.files) < DEFAULT_MAX_COPY_BYTES
    assert verify_run_dir(sess.artifacts_dir).ok
