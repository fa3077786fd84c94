"""Secrets taken out of files already on disk: the trees pulled from a sandbox.

:meth:`runner.runs.run_dir.RunDir.scrub_tree` is the entry point; it hands over the run's
redactor and its atomic writer, so a rewritten file is never seen half written.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from runner.trust.redaction import SecretRedactor

SCRUB_WHOLE_BYTES = 16 * 1024 * 1024
"""Files up to this size are scrubbed in one read; larger ones in chunks."""
SCRUB_CHUNK_BYTES = 4 * 1024 * 1024


def scrub_files(start: Path, redactor: SecretRedactor, put: Callable[[Path, bytes], None]) -> int:
    """Redact every regular file under ``start`` in place, and every name holding a secret.

    ``put`` writes a file's clean bytes (atomically). Returns the number of files
    changed or renamed. Symlinks are neither followed nor rewritten (a link whose name
    holds a secret is renamed, as a link).
    """
    changed = 0
    # Bottom-up, so a folder is renamed after everything inside it was handled.
    for dirpath, dirs, files in os.walk(start, topdown=False):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > SCRUB_WHOLE_BYTES:
                changed += _scrub_large(path, redactor)
                continue
            data = path.read_bytes()
            clean = redactor.redact_bytes(data)
            if clean != data:
                put(path, clean)
                changed += 1
        for name in (*files, *dirs):
            changed += _scrub_name(Path(dirpath), name, redactor)
    return changed


def _scrub_name(parent: Path, name: str, redactor: SecretRedactor) -> int:
    """Rename ``parent/name`` when its name holds a secret (never over another entry)."""
    clean = redactor.redact_name(name)
    if clean == name:
        return 0
    target, n = parent / clean, 0
    while os.path.lexists(target):
        n += 1
        target = parent / f"{clean}.{n}"
    os.rename(parent / name, target)  # renames a link itself, never what it points at
    return 1


def _scrub_large(path: Path, redactor: SecretRedactor) -> int:
    """Redact a big file in bounded memory: chunks overlapping by the longest secret."""
    overlap = redactor.longest_secret_bytes() + 64
    tmp = path.with_name(f".{path.name[:64]}.{secrets.token_hex(4)}.scrub")
    found = False
    with open(path, "rb") as src, open(tmp, "xb") as dst:  # x: a new name, never a link
        carry = b""
        while chunk := src.read(SCRUB_CHUNK_BYTES):
            data = carry + chunk
            clean = redactor.redact_bytes(data)
            found = found or clean != data
            # Keep the tail back: a secret may straddle the next chunk boundary.
            cut = max(0, len(clean) - overlap)
            dst.write(clean[:cut])
            carry = clean[cut:]
        dst.write(redactor.redact_bytes(carry))
    if found:
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return int(found)
