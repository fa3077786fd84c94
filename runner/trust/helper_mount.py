"""Where the runner's stage helpers come from on the host and appear in a Docker sandbox.

A module of its own (standard library only) so ``fsm-runner run`` can describe the run's
sandbox before it imports the contract models (``runner/session/prestart.py``).
"""

from __future__ import annotations

from pathlib import Path

import runner

RUNNER_ROOT_IN_SANDBOX = "/opt/fsm-runner"
"""Where the runner's stage helpers are mounted read-only in a Docker sandbox."""


def runner_package_dir() -> Path:
    return Path(runner.__file__).resolve().parent
