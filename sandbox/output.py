"""Capped, optionally streamed capture of an exec's stdout and stderr.

Memory stays bounded whatever the command prints (a 500 MB printer costs us at most
``limit`` bytes per stream); the full output goes to files when a folder is given.
Truncation is flagged, never silent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

#: Called with (stream id, bytes) as output arrives: 1 stdout, 2 stderr.
OutputCallback = Callable[[int, bytes], None]


class OutputSink:
    """Keeps the first ``limit`` bytes of each stream; streams everything to files if asked."""

    def __init__(
        self, limit: int, stream_to: Path | None = None, on_output: OutputCallback | None = None
    ) -> None:
        self.limit = max(0, limit)
        self._on_output = on_output
        self._kept: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.total: dict[int, int] = {1: 0, 2: 0}
        self.truncated = False
        self._files: dict[int, IO[bytes]] = {}
        if stream_to is not None:
            stream_to.mkdir(parents=True, exist_ok=True)
            # Held open for the exec's lifetime and closed by close(): no `with` can span that.
            out = open(stream_to / "stdout.txt", "wb")  # noqa: SIM115
            err = open(stream_to / "stderr.txt", "wb")  # noqa: SIM115
            self._files = {1: out, 2: err}

    def write(self, stream_id: int, data: bytes) -> None:
        stream_id = 2 if stream_id == 2 else 1
        self.total[stream_id] += len(data)
        kept = self._kept[stream_id]
        room = self.limit - len(kept)
        if room > 0:
            kept += data[:room]
        if len(data) > max(room, 0):
            self.truncated = True
        fh = self._files.get(stream_id)
        if fh is not None:
            fh.write(data)
        if self._on_output is not None:
            try:
                self._on_output(stream_id, data)
            except Exception:  # a watcher's bug must not break the command it watches
                self._on_output = None

    def text(self, stream_id: int) -> str:
        return self._kept[stream_id].decode("utf-8", errors="replace")

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}
