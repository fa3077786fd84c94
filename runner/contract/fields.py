"""Field types shared by the contract models, with the predecessor's leniencies.

Each type says in one place how a YAML value becomes a model value, so pipeline.yml,
bootstrap.yml and actions.yml agree on what ``timeout_seconds: 0`` or ``env: null`` mean.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
)

__all__ = [
    "MAX_RETRIES",
    "MAX_SECONDS",
    "Command",
    "ContractModel",
    "EnvMap",
    "OptionalText",
    "RepoPath",
    "Retries",
    "Seconds",
    "lower_or_default",
    "no_bool",
    "none_to_empty_dict",
    "none_to_empty_tuple",
    "repo_relative",
    "size_bytes",
    "version_one",
]

MAX_SECONDS = 7 * 24 * 3600
"""Longest timeout or time budget a contract may ask for (a week). Larger values are
typos or attacks: ``timeout_seconds: 1e18`` overflowed the runner's clock arithmetic."""
MAX_RETRIES = 100
"""Most extra attempts per command; ``retries: 1e18`` meant retrying forever."""
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size_bytes(text: str) -> int:
    """Bytes of a Docker-style size (``512m``, ``2g``, ``1048576``).

    Raises:
        ValueError: not digits plus an optional b/k/m/g unit.
    """
    match = re.fullmatch(r"([0-9]+)([bkmg]?)", text.strip().lower())
    if match is None:
        raise ValueError(f"not a size: {text!r} (digits + optional b/k/m/g, e.g. 512m)")
    return int(match[1]) * _SIZE_UNITS[match[2]]


class ContractModel(BaseModel):
    """Base of every contract model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def no_bool(value: object) -> object:
    # pydantic's lax int/float accept True as 1; in a contract that is always a typo.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _unset_if_falsy(value: object) -> object:
    """Predecessor rule: ``timeout_seconds: 0`` (or empty) means "no value"."""
    value = no_bool(value)
    return None if value in (None, 0, "") else value


def _zero_if_none(value: object) -> object:
    return 0 if value is None else no_bool(value)


def _command(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("command must be a non-empty string")
    return value


def _env_key(value: object) -> str:
    return "" if value is None else str(value).strip()


def _env_value(value: object) -> str:
    if isinstance(value, dict | list | tuple | set):
        raise ValueError("env values must be scalars (strings, numbers, booleans or null)")
    return "" if value is None else str(value)


def _drop_empty_keys(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k}


def none_to_empty_dict(value: object) -> object:
    return {} if value is None else value


def none_to_empty_tuple(value: object) -> object:
    return () if value is None else value


def repo_relative(value: object) -> str | None:
    """Normalise a path that must stay inside the repository; "" / "." -> None.

    Checked lexically at load time; the runner still refuses symlinks that escape.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("path must be a string")
    text = value.strip()
    if not text or text == ".":
        return None
    if text.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        raise ValueError("path must be relative to the repository root")
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        raise ValueError("path must stay inside the repository (no '..' escapes)")
    return None if norm == "." else norm


def _optional_text(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
    return value or None


def lower_or_default(default: str) -> Callable[[object], object]:
    def convert(value: object) -> object:
        if value is None or value == "":
            return default
        return value.strip().lower() if isinstance(value, str) else value

    return convert


Command = Annotated[str, AfterValidator(_command)]
Commands = tuple[Command, ...] | None
Seconds = Annotated[PositiveInt | None, Field(le=MAX_SECONDS), BeforeValidator(_unset_if_falsy)]
Retries = Annotated[NonNegativeInt, Field(le=MAX_RETRIES), BeforeValidator(_zero_if_none)]
EnvMap = Annotated[
    dict[Annotated[str, BeforeValidator(_env_key)], Annotated[str, BeforeValidator(_env_value)]],
    BeforeValidator(none_to_empty_dict),
    AfterValidator(_drop_empty_keys),
]
RepoPath = Annotated[str | None, BeforeValidator(repo_relative)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]


def version_one(what: str) -> Callable[[object], object]:
    """Before-validator: missing/null -> 1; anything but 1 -> "unsupported <what> version"."""

    def check(value: object) -> object:
        if value is None or (not isinstance(value, bool) and value in (1, "1")):
            return 1
        raise ValueError(f"unsupported {what} version: {value!r} (only 1 is supported)")

    return check
