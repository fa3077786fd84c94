"""``fsm-runner run``'s head start: the run's container starts while Python loads the runner.

Creating and starting a container is ~180 ms of engine time, and a command line run
spends a similar time importing the contract models and the session before it can
even ask for one (issue 17). So ``fsm-runner run`` reserves its run id, describes the
sandbox its session will most likely open (a local repo, copied, the default or named
image, default limits, the helpers mounted read-only, the run id label) and hands that
to a one-shot warm pool, whose thread does the engine work meanwhile.

The guess is checked, not trusted: ``open_sandbox`` adopts the prepared sandbox only
when ``create_key`` says the session's own spec would have made the very same
container (a contract that lowers limits, a bootstrap cache hit, a local model mount
all change it); otherwise the guess is removed and the session opens its own. A wrong
guess costs engine time, never isolation.
"""

from __future__ import annotations

from pathlib import Path

from runner.runs.run_dir import new_run_id
from runner.trust.helper_mount import RUNNER_ROOT_IN_SANDBOX, runner_package_dir
from sandbox.base import SandboxSpec

RUN_ID_LABEL = "fsm-runner.run-id"
"""The label a session's sandbox carries its run id in (``sandbox_open.py``)."""


def guess_spec(repo: Path, *, run_id: str, image: str | None) -> SandboxSpec:
    """The spec ``open_session_sandbox`` makes for a plain run of ``repo`` (cache miss)."""
    return SandboxSpec(
        workspace_src=repo,
        image=image,
        readonly_mounts={str(runner_package_dir()): f"{RUNNER_ROOT_IN_SANDBOX}/runner"},
        labels={RUN_ID_LABEL: run_id},
    )


def prestart(target: str, *, backend: str, image: str | None, llm: str | None) -> str:
    """Reserve the run's id and, when the target is a local repo, start its sandbox now.

    Returns the run id for ``setup(run_id=)``. Starts nothing for the local backend, a
    remote target (it is fetched first), a repo without ``pipeline.yml`` (setup fails, or
    the agent writes one first) or a local model directory (one more mount).
    """
    run_id = new_run_id()
    repo = Path(target).expanduser()
    model_dir = bool(llm) and Path(str(llm)).expanduser().is_dir()
    if backend != "docker" or not (repo / "pipeline.yml").is_file() or model_dir:
        return run_id
    # The docker SDK is imported here, before the thread starts: the thread then does
    # engine calls only, while this one imports the rest (never the same module twice).
    from sandbox.pool import WarmPool, install

    pool = WarmPool()  # one guess for one open: a miss removes it
    if pool.prepare(guess_spec(repo.resolve(), run_id=run_id, image=image)):
        install(pool)
    return run_id
