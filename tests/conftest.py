"""Shared fixtures. Docker tests run against a real engine and are never mocked.

Locally, a missing engine skips ``@pytest.mark.docker`` tests with a loud reason; in CI
(``CI=true``) a missing engine, or any skipped Docker test, fails the run.
"""

from __future__ import annotations

import os
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
