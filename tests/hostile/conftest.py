"""Fixtures the hostile tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["volume", "archive"])
def copy_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways files leave a sandbox: read from the workspace volume, or the engine's tar."""
    if request.param == "archive":
        monkeypatch.setenv("FSM_RUNNER_WORKSPACE_COPY", "archive")
    return str(request.param)
