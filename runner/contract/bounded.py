"""Files a target wrote, read within bounds: a size cap before reading, a depth cap after.

A target controls these bytes, so a 10 GB "metrics.json" or a 100000-deep array must
fail as a contract error with a reason code, never as a crash (issue 15 item 12).
Contract YAML (:mod:`runner.contract.yamlsrc`) and output JSON (:mod:`runner.contract.outputs`)
both read through :func:`read_text_capped`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.errors import ContractError
from sandbox import OMITTED_SUFFIX

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "omitted_note",
    "parse_json",
    "read_json_object",
    "read_text_capped",
]


def read_text_capped(path: Path, limit: int, too_large: str) -> str:
    """The UTF-8 text of ``path``, refused unread when it is over ``limit`` bytes.

    ``too_large`` is the refusal's message, formatted with ``size`` and ``limit``.

    Raises:
        ContractError: the file is over ``limit`` bytes.
        OSError: the file cannot be read (``FileNotFoundError`` when it is missing).
        UnicodeDecodeError: the file is not UTF-8.
    """
    size = path.stat().st_size
    if size > limit:
        raise ContractError(too_large.format(size=size, limit=limit), file=path)
    return path.read_text(encoding="utf-8")


#: Output JSON objects (metrics, rollout, hints) are small; a huge one is a bug.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 100
"""Deepest nesting accepted in an output JSON: every later reader (redaction, the report,
the manifest) walks it recursively, and a 100000-deep array crashed them (issue 15 item 12)."""


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` that fails with ``ValueError`` only, with a message fit for a reason.

    Python's own limits surface as other errors (``RecursionError`` for deep nesting,
    a ``ValueError`` about "integer string conversion" for a 5000-digit number) and a
    depth its parser accepts can still exhaust a recursive reader later, so both are
    checked here.

    Raises:
        json.JSONDecodeError: not JSON (with its line).
        ValueError: nested deeper than MAX_JSON_DEPTH, or a number Python will not read.
    """
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # sys.get_int_max_str_digits()
        raise ValueError(f"a number has too many digits ({exc})") from None
    # Iterative, so the check itself cannot recurse too deep.
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, dict | list))
    return data


def omitted_note(path: Path) -> Path:
    """Where a copy-out records that ``path`` was too big to bring back (``<name>.omitted``)."""
    return path.with_name(path.name + OMITTED_SUFFIX)


def read_json_object(
    path: Path, *, missing: str, not_object: str, invalid: str = "invalid_json"
) -> dict[str, Any]:
    """Read a JSON object, reporting failures with the given reason codes.

    A file the copy-out left behind for its size (``<name>.omitted`` beside it) is
    ``output_too_large``, never an ``invalid_json`` of a cut copy.

    Raises:
        ContractError: missing, too large, unreadable, invalid JSON (with its line),
            nested too deep or with a number too long, or not an object.
    """
    try:
        text = read_text_capped(
            path, MAX_JSON_BYTES, "output_too_large: {size} bytes, over the {limit}-byte cap"
        )
    except FileNotFoundError as exc:
        note = omitted_note(path)
        if note.is_file() and not note.is_symlink():
            detail = note.read_text(encoding="utf-8", errors="replace").strip()[:300]
            raise ContractError(f"output_too_large: {detail}", file=path) from exc
        raise ContractError(f"{missing}: {path}", file=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(f"failed_to_read: {exc}", file=path) from exc
    try:
        data = parse_json(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{invalid}: {exc.msg}", file=path, line=exc.lineno) from exc
    except ValueError as exc:
        raise ContractError(f"{invalid}: {exc}", file=path) from exc
    if not isinstance(data, dict):
        raise ContractError(not_object, file=path, found=type(data).__name__)
    return data
