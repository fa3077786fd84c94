"""``.aider_fsm/bootstrap.yml`` and ``.aider_fsm/actions.yml``.

bootstrap.yml is written by coding agents as often as by people, so the predecessor
accepted a handful of near-miss spellings (a ``boot:`` wrapper, ``steps``, ``cwd``,
``timeout``, ``retry``, a single string for ``cmds``, GitHub-Actions-like ``- run: ...``
items). We accept the same ones, with the predecessor's warning codes in
``BootstrapSpec.warnings`` (the runner writes them to ``bootstrap_parse_warnings.json``),
but any other unknown key is an error rather than silently ignored.

actions.yml is a legacy one-shot action list; the predecessor documented it but no
longer executed it. We parse it so a runner can decide what to do with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PositiveInt, model_validator

from runner.contract.fields import (
    Command,
    ContractModel,
    EnvMap,
    OptionalText,
    RepoPath,
    Retries,
    Seconds,
    no_bool,
    repo_relative,
    version_one,
)
from runner.contract.yamlsrc import YamlDoc, load_yaml, validate_model
from runner.errors import ContractError

__all__ = [
    "Action",
    "ActionsSpec",
    "BootstrapSpec",
    "absolutize_env_paths",
    "expand_env",
    "load_actions",
    "load_bootstrap",
]


def _blank_to_none(value: object) -> object:
    value = no_bool(value)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _input_pattern(value: object) -> str:
    # A glob stays inside the repo like any contract path: relative, no '..' escapes.
    path = repo_relative(value)
    if path is None:
        raise ValueError("an input must name a file, folder or glob inside the repository")
    if any("**" in part and part != "**" for part in path.split("/")):
        raise ValueError("'**' must be a whole path component (src/**/*.py)")
    return path


class BootstrapSpec(ContractModel):
    """Environment preparation run once before the stages (venv, installs, caches)."""

    version: Annotated[Literal[1], BeforeValidator(version_one("bootstrap"))] = 1
    """Schema version; missing or null means 1."""
    cmds: tuple[Command, ...] = ()
    """Commands run in order; the first failure stops the bootstrap. May be empty."""
    env: EnvMap = Field(default_factory=dict)
    """Variables applied to the bootstrap and every later stage, expanded with expand_env()."""
    workdir: RepoPath = None
    """Working directory relative to the repository root; must stay inside it."""
    timeout_seconds: Annotated[PositiveInt | None, BeforeValidator(_blank_to_none)] = None
    """Per-command timeout (>= 1), capped by the pipeline's security.max_cmd_seconds."""
    retries: Retries = 0
    """Extra attempts per failing command."""
    inputs: Annotated[
        tuple[Annotated[str, BeforeValidator(_input_pattern)], ...] | None,
        BeforeValidator(_blank_to_none),
    ] = None
    """Repo files bootstrap reads (paths or globs; a folder means everything under it).

    Optional, for the bootstrap image cache: when set, the cache key hashes these
    instead of every file of the repository. Null = bootstrap may read anything.
    """
    warnings: tuple[str, ...] = ()
    """Lenient spellings that were accepted (predecessor codes, e.g. bootstrap.steps_alias_used)."""


_ALIASES = (
    ("cmds", "steps"),
    ("workdir", "cwd"),
    ("timeout_seconds", "timeout"),
    ("retries", "retry"),
)
_SPEC_KEYS = ("version", "cmds", "env", "workdir", "timeout_seconds", "retries", "inputs")
_KNOWN_KEYS = (*_SPEC_KEYS, *(alias for _, alias in _ALIASES), "boot")
_CMD_KEYS = ("cmd", "run", "command")

Origin = tuple[str | int, ...]


def load_bootstrap(path: Path) -> BootstrapSpec | None:
    """Load ``bootstrap.yml``; None when the file does not exist.

    Raises:
        ContractError: empty/non-mapping file, YAML error, unknown key, bad value
            (located as ``file:line: field: message``), unsupported version.
    """
    if not path.exists():
        return None
    doc = load_yaml(path)
    if doc.data is None:
        raise ContractError("bootstrap file is empty", file=path)
    if not isinstance(doc.data, dict):
        raise doc.error("top level must be a mapping", (), found=type(doc.data).__name__)
    warnings: list[str] = []
    obj, origin = _unwrap_boot(doc, doc.data, warnings)
    for key in obj:
        if key not in _KNOWN_KEYS or key == "boot":
            raise doc.error("unknown key", origin[key], found=key, allowed=list(_KNOWN_KEYS))
    for canonical, alias in _ALIASES:
        if alias not in obj:
            continue
        alias_value, alias_origin = obj.pop(alias), origin.pop(alias)
        if obj.get(canonical) is None and alias_value is not None:
            obj[canonical], origin[canonical] = alias_value, alias_origin
            warnings.append(f"bootstrap.{alias}_alias_used")
        elif alias_value is not None:
            warnings.append(f"bootstrap.{alias}_ignored_because_{canonical}_is_set")
    if "cmds" in obj:
        obj["cmds"] = _coerce_cmds(doc, obj["cmds"], origin["cmds"], warnings)
    obj["warnings"] = tuple(warnings)

    def source_path(loc: tuple[str | int, ...]) -> Origin:
        head = loc[0] if loc else None
        return (*origin[head], *loc[1:]) if isinstance(head, str) and head in origin else loc

    return validate_model(BootstrapSpec, obj, doc, source_path=source_path)


def _unwrap_boot(
    doc: YamlDoc, data: dict[Any, Any], warnings: list[str]
) -> tuple[dict[str, Any], dict[str, Origin]]:
    """Apply the ``boot:`` wrapper rule; return the mapping and where each key came from."""
    obj = {str(k): v for k, v in data.items()}
    origin: dict[str, Origin] = {k: (k,) for k in obj}
    if "boot" not in obj:
        return obj, origin
    boot = obj.pop("boot")
    if not isinstance(boot, dict):
        raise doc.error("boot must be a mapping", ("boot",), found=type(boot).__name__)
    if any(k in obj for k in _KNOWN_KEYS if k != "version"):
        # Predecessor rule: top-level spec keys win and the wrapper is ignored entirely.
        warnings.append("bootstrap.boot_mapping_ignored_due_to_top_level_fields")
        return obj, origin
    merged = {str(k): v for k, v in boot.items()}
    merged_origin: dict[str, Origin] = {k: ("boot", k) for k in merged}
    merged.update(obj)
    merged_origin.update(origin)
    warnings.append("bootstrap.boot_mapping_unwrapped")
    return merged, merged_origin


def _coerce_cmds(doc: YamlDoc, raw: object, where: Origin, warnings: list[str]) -> object:
    """Predecessor leniency for ``cmds``: string, single mapping, mapping items."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        if not raw.strip():
            return ()
        warnings.append("bootstrap.cmds_coerced_from_string")
        return (raw,)
    if isinstance(raw, dict):
        warnings.append("bootstrap.cmds_mapping_coerced_to_single_cmd")
        return (_cmd_of_mapping(doc, raw, where),)
    if not isinstance(raw, list):
        raise doc.error("must be a list of commands", where, found=type(raw).__name__)
    out: list[object] = []
    for index, item in enumerate(raw):
        if isinstance(item, dict):
            warnings.append(f"bootstrap.cmds[{index}]_mapping_coerced_via_run")
            item = _cmd_of_mapping(doc, item, (*where, index))
        out.append(item)
    return tuple(out)


def _cmd_of_mapping(doc: YamlDoc, item: dict[Any, Any], where: Origin) -> object:
    for key in _CMD_KEYS:
        if item.get(key) is not None:
            return item[key]
    raise doc.error("a command mapping needs one of these keys", where, allowed=list(_CMD_KEYS))


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_env(spec_env: Mapping[str, str], base_env: Mapping[str, str]) -> dict[str, str]:
    """Expand bootstrap env values the predecessor's way; return only the spec's variables.

    In file order: ``$$`` -> ``$``; ``${NAME}`` and ``$NAME`` are looked up in
    ``base_env`` plus the variables expanded so far (later entries see earlier ones);
    unknown or empty names expand to "". No command substitution, no ``${X:-default}``.
    The caller seeds ``base_env`` (the predecessor pre-set ``AIDER_FSM_REPO_ROOT``; in a
    sandbox that is the in-container repo root) and merges the result itself.

    One difference: expansion is a single pass, so a value that itself contains ``$X``
    is not expanded again (the predecessor's two regex passes re-expanded ``${A}`` when
    A's value held ``$B`` text).
    """
    scope = dict(base_env)
    applied: dict[str, str] = {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return scope.get(match.group(1) or match.group(2)) or ""

    for key, raw in spec_env.items():
        scope[key] = applied[key] = _VAR.sub(substitute, raw)
    return applied


def absolutize_env_paths(applied: Mapping[str, str], repo_root: str) -> dict[str, str]:
    """Predecessor path rules for the applied bootstrap env, against ``repo_root``.

    A relative ``AIDER_FSM_PYTHON`` path becomes absolute *without* resolving symlinks (a
    venv's python is a symlink; resolving it would leave the venv); a bare command name
    such as ``python3`` is left for PATH lookup (the predecessor turned it into
    ``<repo>/python3``, which broke every stage using it). Each relative,
    ``$``-free segment of ``PATH`` is made absolute; empty segments are kept.
    """
    root = PurePosixPath(repo_root)
    out = dict(applied)
    python = out.get("AIDER_FSM_PYTHON", "")
    # A bare name (``python3``) is a PATH lookup, not a file in the repo: only paths move.
    if python and "/" in python and not python.startswith("/") and "$" not in python:
        out["AIDER_FSM_PYTHON"] = str(root / python)
    if "PATH" in out:
        out["PATH"] = ":".join(
            str(root / seg) if seg and not seg.startswith("/") and "$" not in seg else seg
            for seg in out["PATH"].split(":")
        )
    return out


# --- actions.yml ---------------------------------------------------------------------


class Action(ContractModel):
    """One legacy action. ``install_tool`` and ``start_service`` are aliases of ``run_cmd``."""

    id: OptionalText = None
    """Identifier, exported as AIDER_FSM_ACTION_ID; unique within the file."""
    kind: Literal["run_cmd", "write_file", "install_tool", "start_service"] = "run_cmd"
    """run_cmd runs `cmd`; write_file writes `content` to `path`; install_tool and start_service behave as run_cmd."""
    cmd: Command | None = None
    """Shell command (command kinds)."""
    path: RepoPath = None
    """Target file relative to the repository root (write_file)."""
    content: str | None = None
    """File content (write_file); may be empty."""
    timeout_seconds: Seconds = None
    """Per-attempt timeout; null = runner default."""
    retries: Retries = 0
    """Extra attempts when the command fails."""
    rationale: OptionalText = None
    """Why the action exists (audit only)."""
    risk_level: OptionalText = None
    """Free-form risk label such as low/medium/high (audit only)."""

    @property
    def run_kind(self) -> Literal["run_cmd", "write_file"]:
        """What the runner does: aliases collapse to run_cmd."""
        return "write_file" if self.kind == "write_file" else "run_cmd"

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Action:
        if self.run_kind == "run_cmd" and self.cmd is None:
            raise ValueError(f"kind {self.kind} needs `cmd`")
        if self.run_kind == "write_file" and (self.path is None or self.content is None):
            raise ValueError("kind write_file needs `path` and `content`")
        return self


class ActionsSpec(ContractModel):
    """``.aider_fsm/actions.yml`` (version 1)."""

    version: Annotated[Literal[1], BeforeValidator(version_one("actions"))] = 1
    """Schema version; missing or null means 1."""
    actions: Annotated[tuple[Action, ...], BeforeValidator(lambda v: () if v is None else v)] = ()
    """Actions in execution order."""

    @model_validator(mode="after")
    def _unique_ids(self) -> ActionsSpec:
        ids = [a.id for a in self.actions if a.id is not None]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate action ids: {', '.join(duplicates)}")
        return self


def load_actions(path: Path) -> ActionsSpec | None:
    """Load ``actions.yml``; None when the file does not exist.

    Raises:
        ContractError: empty/non-mapping file, YAML error, unknown key, bad value.
    """
    if not path.exists():
        return None
    doc = load_yaml(path)
    if doc.data is None:
        raise ContractError("actions file is empty", file=path)
    if not isinstance(doc.data, dict):
        raise doc.error("top level must be a mapping", (), found=type(doc.data).__name__)
    return validate_model(ActionsSpec, doc.data, doc)
