"""The predecessor's entry point for the ``generic_rollout`` stage helper, kept for contracts.

``python3 -m runner.generic_rollout`` and ``$AIDER_FSM_RUNNER_ROOT/runner/generic_rollout.py`` keep working;
the helper itself is :mod:`runner.helpers.generic_rollout`. Runs inside the sandbox: standard
library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import our own package, not a target's `runner`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.helpers.generic_rollout import main

if __name__ == "__main__":
    sys.exit(main())
