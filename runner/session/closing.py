"""How a session ends: deploy torn down, samples kept, sandbox removed (or kept), manifest.

``EnvSession.close()`` runs these in order, each even when the one before raised; the
finalizer is the fallback for a session nobody closed. What the manifest records and
how a sandbox is kept are in ``facts.py``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from runner.runs.manifest_builder import collect_samples, write_manifest
from runner.session.deploy_flow import final_teardown
from runner.session.facts import keep_sandbox
from runner.session.states import State

if TYPE_CHECKING:
    from runner.session.machine import EnvSession


def close_session(sess: EnvSession) -> None:
    """Teardown per policy, then samples, sandbox, ``CLOSED`` and the manifest. Idempotent."""
    if sess.state == State.CLOSED:
        return
    # Each step runs even when the one before raised (issue 15 item 14): a failed
    # teardown still removes the sandbox, a failed removal still records the close.
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: write_manifest(sess._facts()))  # last: hashes the run dir
        cleanup.callback(sess._transition, State.CLOSED)
        cleanup.callback(remove_sandbox, sess)
        cleanup.callback(collect_samples, sess.run_dir, sess._sandbox)  # while it is open
        if sess._sandbox is not None:
            final_teardown(sess, success=True)


def remove_sandbox(sess: EnvSession) -> None:
    """Close the sandbox, or with ``keep`` leave it running and name it in ``kept_sandbox``."""
    if sess._sandbox is not None:
        if sess.options.keep:
            sess.kept_sandbox = keep_sandbox(sess._sandbox, sess.run_dir)
        else:
            sess._sandbox.close()
        sess._sandbox = None


def close_quietly(state: dict[str, Any]) -> None:
    """Finalizer: a forgotten session still removes its sandbox (GC or interpreter exit).

    It gets the session's ``__dict__``, never the session: a finalizer that held the
    session would keep it alive.
    """
    sb = state.get("_sandbox")
    if sb is not None:
        with contextlib.suppress(Exception):
            sb.close()
