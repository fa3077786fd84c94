"""``.env`` files the user names (``setup(..., env_file=PATH)`` / ``--env-file``).

Only a file the caller names is read, never one found in the target repo: a target must
not be able to inject variables into its own stages. The values are meant for stage
envs and must be registered as secrets by the caller (they often hold API keys).

Format (the predecessor's ``load_dotenv``, notes/predecessor.md 8.4, made strict):
``KEY=VALUE`` lines, an optional ``export`` prefix, ``#`` comments and blank lines.
Values may be unquoted (a `` #`` starts a comment), single-quoted (literal) or
double-quoted (``\\n \\t \\" \\\\`` escapes); quoted values may span lines. No ``$VAR``
expansion: what is written is what the stage gets. A later key overrides an earlier one.
Anything else is an error naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

from runner.errors import ContractError

__all__ = ["MAX_ENV_FILE_BYTES", "load_env_file"]

MAX_ENV_FILE_BYTES = 1024 * 1024
"""A larger .env file is refused: it is certainly not a list of variables."""

_LINE = re.compile(r"^\s*(?:export\s+)?([^=\s]*)\s*=\s*(.*)$", re.DOTALL)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def load_env_file(path: str | Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` pairs from a dotenv file.

    Raises:
        ContractError: the file is missing, unreadable, too large or not UTF-8, or a line
            is malformed (no ``=``, invalid key, unterminated or trailing text after a
            quote); the error names ``file:line``.
    """
    file = Path(path).expanduser()
    try:
        if file.stat().st_size > MAX_ENV_FILE_BYTES:
            raise ContractError(f"env file is larger than {MAX_ENV_FILE_BYTES} bytes", file=file)
        text = file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise ContractError("env file not found", file=file) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(f"cannot read env file: {exc}", file=file) from exc
    lines = text.splitlines()
    out: dict[str, str] = {}
    number = 0
    while number < len(lines):
        start = number
        line = lines[number]
        number += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ContractError("expected KEY=VALUE", file=file, line=start + 1, found=line)
        key, rest = m.group(1), m.group(2)
        if not _KEY.fullmatch(key):
            raise ContractError(
                "invalid variable name (letters, digits and _; not starting with a digit)",
                file=file,
                line=start + 1,
                found=key,
            )
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            body = rest[1:]
            # A quoted value may continue on the next lines until its closing quote.
            while _closing(body, quote) is None and number < len(lines):
                body += "\n" + lines[number]
                number += 1
            end = _closing(body, quote)
            if end is None:
                raise ContractError(
                    f"unterminated {quote} quote", file=file, line=start + 1, field=key
                )
            trailing = body[end + 1 :].strip()
            if trailing and not trailing.startswith("#"):
                raise ContractError(
                    "unexpected text after the closing quote",
                    file=file,
                    line=start + 1,
                    field=key,
                    found=trailing,
                )
            value = body[:end]
            out[key] = _unescape(value) if quote == '"' else value
        else:
            out[key] = re.split(r"\s#", rest, maxsplit=1)[0].strip()
    return out


def _closing(body: str, quote: str) -> int | None:
    """Index of the closing quote (double quotes honour backslash escapes)."""
    i = 0
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return None


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)
