# Sourced by every non-interactive bash of a traced stage (the runner sets BASH_ENV to
# this file): bash writes an xtrace of what the stage's scripts ran to a file of its own
# in the stage's artifacts dir, leaving stdout/stderr untouched. The runner pulls these
# traces back as evidence of what ran (code in the same container could forge them:
# they raise the bar, they are not proof; see docs/security.md).
if [ -n "${AIDER_FSM_ARTIFACTS_DIR:-}" ]; then
  if mkdir -p "$AIDER_FSM_ARTIFACTS_DIR" 2>/dev/null \
     && exec {__fsm_trace_fd}>>"$AIDER_FSM_ARTIFACTS_DIR/shell_trace.$$.log"; then
    BASH_XTRACEFD=$__fsm_trace_fd
    set -x
  fi
fi
