"""What makes two runs of one contract agree: the run's seed and the determinism env.

Recorded in the manifest and exported to every stage (docs/reproducibility.md); it lives
with the runs because a seed is a function of the run id, and replay reads it back.
"""

from __future__ import annotations

import hashlib

SEED_VAR = "AIDER_FSM_SEED"
DETERMINISM_DEFAULTS = {
    "PYTHONHASHSEED": "0",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    # 1980-01-01: the earliest time a zip (and so a wheel) can hold.
    "SOURCE_DATE_EPOCH": "315532800",
}
"""Exported to every stage so two runs of the same contract can agree (docs/reproducibility.md).

A contract's own ``env`` (and the caller's overrides) still win over these."""


def derive_seed(run_id: str) -> int:
    """The run's ``AIDER_FSM_SEED``: a stable function of the run id, in [0, 2**31)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big") % 2**31


def determinism_env(run_id: str, seed: int | None = None) -> dict[str, str]:
    """:data:`DETERMINISM_DEFAULTS` plus the run's seed (``setup(seed=...)`` pins it)."""
    return {**DETERMINISM_DEFAULTS, SEED_VAR: str(derive_seed(run_id) if seed is None else seed)}
