"""YAML with line numbers, and the one place pydantic errors become ContractErrors.

PyYAML's ``safe_load`` forgets where things came from, so a message like
"deploy.setup_cmds[2] must be a string" leaves the user to hunt for it. We compose the
node tree ourselves, construct the data from it with the ordinary SafeLoader, and keep a
map from every mapping key / list item path to its 1-based line.

Paths in the map use strings for every step (mapping keys as written, list indices as
``"0"``, ``"1"``...); a node is either a mapping or a list, so the two never collide.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from runner.contract.bounded import read_text_capped
from runner.errors import ContractError

__all__ = [
    "MAX_CONTRACT_BYTES",
    "YamlDoc",
    "format_path",
    "load_yaml",
    "parse_yaml",
    "validate_model",
]

#: Contract files are hand-sized; anything bigger is a mistake or an attack.
MAX_CONTRACT_BYTES = 4 * 1024 * 1024
#: Bounds the line-map walk: aliases are shared references, so a "billion laughs"
#: document is cheap to construct but exponential to walk path by path.
_MAX_RECORDED_PATHS = 100_000

YamlPath = tuple[str, ...]
_M = typing.TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML document plus where each key and list item was written."""

    file: str
    data: object
    lines: Mapping[YamlPath, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """Line of ``path``, or of its nearest recorded ancestor (1-based)."""
        key = tuple(str(p) for p in path)
        while True:
            line = self.lines.get(key)
            if line is not None or not key:
                return line
            key = key[:-1]

    def error(
        self,
        message: str,
        path: Sequence[str | int],
        *,
        found: object = None,
        allowed: Sequence[str] | str | None = None,
    ) -> ContractError:
        """Build a ContractError located at ``path`` in this document."""
        return ContractError(
            message,
            file=self.file,
            line=self.line_of(path),
            field=format_path(path) or None,
            found=found,
            allowed=allowed,
        )


def format_path(path: Sequence[str | int]) -> str:
    """``("deploy", "setup_cmds", 2)`` -> ``"deploy.setup_cmds[2]"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(path: Path) -> YamlDoc:
    """Read and parse a contract YAML file.

    Raises:
        ContractError: the file is missing, unreadable, too large, not UTF-8, or not YAML.
    """
    try:
        text = read_text_capped(
            path, MAX_CONTRACT_BYTES, "file is too large ({size} bytes, limit {limit})"
        )
    except FileNotFoundError as exc:
        raise ContractError("file not found", file=path) from exc
    except UnicodeDecodeError as exc:
        raise ContractError(f"file is not valid UTF-8: {exc.reason}", file=path) from exc
    except OSError as exc:
        raise ContractError(f"cannot read file: {exc.strerror or exc}", file=path) from exc
    return parse_yaml(text, file=str(path))


def parse_yaml(text: str, *, file: str) -> YamlDoc:
    """Parse one YAML document, recording key/item lines. Empty input gives ``data=None``.

    Raises:
        ContractError: syntax error (located at the parser's problem mark) or a
            document the safe loader refuses (e.g. a ``!!python`` tag).
    """
    lines: dict[YamlPath, int] = {}
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects control characters here
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
        if node is not None:
            # flatten_mapping() already ran during construction, so merge keys (<<) are
            # resolved in node.value and the walk sees what the data holds.
            _record_lines(node, (), lines, set())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(s for s in (exc.context, exc.problem) if s) or "syntax error"
        raise ContractError(
            f"invalid YAML: {detail}", file=file, line=mark.line + 1 if mark else None
        ) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ContractError(f"invalid YAML: {exc.reason}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise ContractError(f"invalid YAML: {exc}", file=file) from exc
    except RecursionError as exc:  # PyYAML composes recursively: [[[[...]]]] x 1000
        raise ContractError("invalid YAML: nesting is too deep", file=file) from exc
    return YamlDoc(file=file, data=data, lines=lines)


def _record_lines(
    node: yaml.Node, path: YamlPath, lines: dict[YamlPath, int], active: set[int]
) -> None:
    if len(lines) >= _MAX_RECORDED_PATHS or id(node) in active:
        return  # budget spent, or a recursive alias: lines fall back to an ancestor
    lines.setdefault(path, node.start_mark.line + 1)
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            # Duplicate keys: the later one wins in the data, so it wins here too.
            lines[(*path, key)] = key_node.start_mark.line + 1
            _record_lines(value_node, (*path, key), lines, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, str(index))] = item.start_mark.line + 1
            _record_lines(item, (*path, str(index)), lines, active)
    active.discard(id(node))


# --- pydantic boundary -------------------------------------------------------------


def validate_model(
    model: type[_M],
    data: object,
    doc: YamlDoc,
    *,
    source_path: Callable[[tuple[str | int, ...]], Sequence[str | int]] | None = None,
) -> _M:
    """Validate ``data`` as ``model``; translate the first error into a ContractError.

    ``source_path`` maps a model location back to where it was written, for loaders
    that rearrange the document first (bootstrap's ``boot:`` wrapper, ``steps`` alias).

    Raises:
        ContractError: with file, line, dotted field, found value and allowed keys.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, model, doc, source_path) from exc


def _translate(
    exc: ValidationError,
    model: type[BaseModel],
    doc: YamlDoc,
    source_path: Callable[[tuple[str | int, ...]], Sequence[str | int]] | None,
) -> ContractError:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = tuple(err["loc"])
    kind = err["type"]
    found: object = None
    allowed: list[str] | None = None
    if kind == "extra_forbidden":
        message = "unknown key"
        found = loc[-1] if loc else None
        allowed = _field_names(_type_at(model, loc[:-1]))
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "invalid_key":
        message = "keys must be strings"
        found = loc[-1] if loc else None
        loc = (*loc[:-1], str(found))
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        raw = err.get("input")
        if isinstance(raw, str | int | float | bool):
            found = raw
        if kind == "literal_error":
            allowed = _literal_values(_type_at(model, loc)) or None
    if len(errors) > 1:
        message += f" (+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    where = source_path(loc) if source_path else loc
    return doc.error(message, where, found=found, allowed=allowed)


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` so navigation sees the real type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _type_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> Any:
    """The declared type found by following ``loc`` from ``model`` (None if lost)."""
    current: Any = model
    for step in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(step))
            if info is None:
                info = next((f for f in current.model_fields.values() if f.alias == step), None)
            if info is None:
                return None
            current = info.annotation
        elif isinstance(step, int) and typing.get_origin(current) in (tuple, list):
            current = typing.get_args(current)[0]
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    return _unwrap(current)


def _field_names(tp: Any) -> list[str] | None:
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return None
    names: list[str] = []
    for name, info in tp.model_fields.items():
        names.append(name)
        if info.alias and info.alias != name:
            names.append(info.alias)
    return names


def _literal_values(tp: Any) -> list[str]:
    if typing.get_origin(tp) is typing.Literal:
        return [str(a) for a in typing.get_args(tp)]
    return []
