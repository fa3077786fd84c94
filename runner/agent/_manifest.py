"""File manifests of a tree: stdlib only, because this file also runs inside the sandbox.

``python3 _manifest.py tree ROOT EXCLUDE...`` prints ``{rel: [kind, size, sha256, mode]}``
(kind ``file``/``link``/``other``; links are never followed, their target is the
"hash"). ``python3 _manifest.py newer MARKER PRUNE...`` prints the paths under ``/``
modified after ``MARKER`` (capped), the changes an agent made outside the workspace.
The host computes the "before" manifest with the same function, so both sides agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys

MAX_NEWER = 500


def _excluded(rel: str, exclude: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in exclude:
        if rel == pattern or rel.startswith(pattern.rstrip("/") + "/"):
            return True
        if "/" not in pattern and pattern in parts:
            return True
    return False


def _entry(path: str) -> list[object]:
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return ["link", 0, os.readlink(path), mode]
    if not stat.S_ISREG(st.st_mode):
        return ["other", 0, "", mode]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return ["file", st.st_size, digest.hexdigest(), mode]


def tree(root: str, exclude: list[str]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for name in sorted(dirs):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if _excluded(rel, exclude):
                continue
            if os.path.islink(os.path.join(dirpath, name)):
                out[rel] = _entry(os.path.join(dirpath, name))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not _excluded(rel, exclude):
                try:
                    out[rel] = _entry(os.path.join(dirpath, name))
                except OSError:
                    out[rel] = ["other", 0, "", 0]
    return out


def newer(marker: str, prune: list[str]) -> list[str]:
    since = os.stat(marker).st_mtime_ns
    found: list[str] = []
    for dirpath, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in prune]
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_mtime_ns > since and not stat.S_ISDIR(st.st_mode):
                found.append(path)
                if len(found) >= MAX_NEWER:
                    return found
    return found


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "tree":
        json.dump(tree(argv[1], argv[2:]), sys.stdout)
        return 0
    if len(argv) >= 2 and argv[0] == "newer":
        json.dump(newer(argv[1], argv[2:]), sys.stdout)
        return 0
    sys.stderr.write("usage: _manifest.py tree ROOT EXCLUDE... | newer MARKER PRUNE...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
