"""The predecessor's entry point for the ``generic_evaluation`` stage helper, kept for contracts.

``python3 -m runner.generic_evaluation`` and ``$AIDER_FSM_RUNNER_ROOT/runner/generic_evaluation.py`` keep working;
the helper itself is :mod:`runner.helpers.generic_evaluation`. Runs inside the sandbox: standard
library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import our own package, not a target's `runner`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.helpers.generic_evaluation import main

if __name__ == "__main__":
    sys.exit(main())
