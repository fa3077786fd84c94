"""Four real PyPI projects, run green with contracts written from the docs alone (issue 16).

Each sdist (pinned) is downloaded once with ``pip download --no-deps --no-binary :all:``
into ``$FSM_RUNNER_TEST_CACHE`` (default ``~/.cache/fsm-runner-tests``), unpacked into
tmp_path, given a contract by ``fsm-runner init --tests`` exactly as docs/cli.md says
(idna's property tests import hypothesis: ``--pip hypothesis``), and run with
``fsm-runner run --json``: green, with its test counts in the JSON.

Needs PyPI: the download (once per machine) and the bootstrap's ``pip install pytest``
(once per machine too: these bootstraps are cached in their own namespace, so a second
`make test` starts from the snapshots). Cold, the four take about 3 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.test_flows import fsm

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROJECTS = {  # sdist name -> (version, extra packages the tests import, at least N tests)
    "toolz": ("1.2.0", [], 150),
    "more-itertools": ("11.2.1", [], 1000),
    "boltons": ("26.2.0", [], 400),
    "idna": ("3.20", ["hypothesis"], 1000),
}
NAMESPACE = "fsm-runner-tests-real-projects"
"""Their bootstraps (venv + pytest) are the same every time: kept across test sessions.
Counts do not depend on a cache hit, so this shared namespace cannot change a result."""


@pytest.fixture(scope="session")
def sdists() -> Path:
    cache = Path(
        os.environ.get("FSM_RUNNER_TEST_CACHE") or Path.home() / ".cache" / "fsm-runner-tests"
    )
    where = cache / "sdists"
    where.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}=={version}" for name, (version, _, _) in PROJECTS.items()]
    missing = [w for w in wanted if not _sdist(where, w.split("==")[0], w.split("==")[1])]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             "-d", str(where), *missing],
            check=True, timeout=300,
        )  # fmt: skip
    return where


def _sdist(where: Path, name: str, version: str) -> Path | None:
    stem = f"{name.replace('-', '_')}-{version}"
    found = [p for p in where.glob("*.tar.gz") if p.name.lower().startswith(stem.lower())]
    return found[0] if found else None


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_real_project_runs_green_with_counts(
    name: str, sdists: Path, tmp_path: Path, default_image: str
) -> None:
    version, pip, at_least = PROJECTS[name]
    archive = _sdist(sdists, name, version)
    assert archive is not None, f"{name}=={version} was not downloaded"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (repo,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    init = fsm("init", "--tests", *(a for p in pip for a in ("--pip", p)), str(repo))
    assert init.returncode == 0, init.stdout + init.stderr
    proc = fsm("run", str(repo), "--json", env={"FSM_RUNNER_CACHE_NAMESPACE": NAMESPACE})
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["ok"], (result["reason"], proc.stderr[-3000:])
    metrics = result["metrics"]
    assert metrics["counts_from"] == "junit" and result["metrics_accepted"] is True
    assert metrics["failed"] == 0 and metrics["errors"] == 0
    assert metrics["passed"] >= at_least and result["score"] == 1.0
    assert result["hints"]["mode"] in ("report", "none")  # a README test command is no trap
