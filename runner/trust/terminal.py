"""Text from target code made safe to show: no terminal control sequences.

Stage output, command lines and failure reasons come from the target repository. Shown
raw, an OSC sequence retitles the user's terminal, ``ESC[2K`` plus ``\\r`` erases the
runner's own line and prints a fake "ok", and a bidi override reorders what is read
(issue 15 item 11). Everything that reaches a terminal or ``report.md`` passes
:func:`strip_controls`: escape sequences (CSI, OSC, DCS/SOS/PM/APC strings, two-byte
ESC forms) and every other C0/C1 control character except newline and tab are removed.
"""

from __future__ import annotations

import re

__all__ = ["strip_controls"]

_SEQUENCES = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]?                        # CSI: ESC [ params intermediates final
  | \x9b[0-?]*[ -/]*[@-~]?                          # 8-bit CSI
  | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])          # OSC, DCS, SOS, PM, APC (7- or 8-bit) ...
    [^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?         # ... up to BEL or ST (or the line's end)
  | \x1b[ -/]*[0-~]?                                # any other escape (ESC 7, ESC c, ESC ( B)
    """,
    re.VERBOSE,
)
# C0 except \t and \n, DEL, C1; and the bidi embeddings, overrides and isolates.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """``text`` without terminal control sequences or control characters (``\\n``, ``\\t`` kept).

    ``\\r\\n`` becomes ``\\n``; a lone ``\\r`` (which would let a line overwrite the one
    before it) is dropped like every other control character.
    """
    if text.isprintable():
        return text
    return _CONTROLS.sub("", _SEQUENCES.sub("", text.replace("\r\n", "\n")))
