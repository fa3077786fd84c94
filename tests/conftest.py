"""Shared fixtures. Docker tests run against a real engine and are never mocked.

Locally, a missing engine skips ``@pytest.mark.docker`` tests with a loud reason; in CI
(``CI=true``) a missing engine, or any skipped Docker test, fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.engine import engine_available

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    docker_items = [i for i in items if i.get_closest_marker("docker")]
    if not docker_items or engine_available():
        return
    if IN_CI:
        raise pytest.UsageError(
            "CI=true but no Docker engine answers: Docker tests must run in CI, never skip. "
            "Start it with `make engine` (bash images/ensure-engine.sh)."
        )
    skip = pytest.mark.skip(
        reason="NO DOCKER ENGINE: start it with `make engine`; these tests did NOT run"
    )
    for item in docker_items:
        item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, a skipped Docker test is a failure: the isolation promises went untested."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [
        r for r in reporter.stats.get("skipped", []) if "docker" in getattr(r, "keywords", {})
    ]
    if skipped:
        reporter.write_line(f"FAIL: {len(skipped)} Docker test(s) were skipped in CI", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


CACHE_NAMESPACE = f"tests-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def own_cache_namespace() -> Iterator[str]:
    """This test session's own bootstrap-cache namespace (issue 16.5).

    Another process on the engine (a developer's `fsm-runner run examples/tiny`, another
    test session) may have cached the same bootstrap: tests that expect a bootstrap to
    run would get its snapshot instead. Namespaced keys never meet theirs; the session's
    own snapshots are removed at the end.
    """
    from runner.session.bootstrap_cache import NAMESPACE_LABEL, NAMESPACE_VAR

    previous = os.environ.get(NAMESPACE_VAR)
    os.environ[NAMESPACE_VAR] = CACHE_NAMESPACE
    yield CACHE_NAMESPACE
    if previous is None:
        os.environ.pop(NAMESPACE_VAR, None)
    else:
        os.environ[NAMESPACE_VAR] = previous
    if engine_available():
        from sandbox.snapshots import prune_snapshots

        prune_snapshots(keep=0, label=f"{NAMESPACE_LABEL}={CACHE_NAMESPACE}")


@pytest.fixture(scope="session")
def default_image() -> str:
    """The default image, built offline once per machine (cached by content hash)."""
    from sandbox.images import ensure_image

    return ensure_image()


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """A small target repo on the host."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "README.md").write_text("# demo\n")
    (repo / "src" / "main.py").write_text("print('hello from the repo')\n")
    return repo


@pytest.fixture
def docker_sandbox(default_image: str, repo_dir: Path) -> Iterator[object]:
    from sandbox import SandboxSpec, open_sandbox

    with open_sandbox(SandboxSpec(workspace_src=repo_dir, image=default_image)) as sb:
        yield sb
