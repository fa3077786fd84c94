"""The package map holds: imports point one way.

The layers, top to bottom (docs/architecture.md): a module may import from its own layer
and the ones below it, never above. Every import counts, including the ones inside
functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: list[tuple[str, ...]] = [
    ("runner.cli",),
    ("runner_env",),
    ("runner.batch",),
    ("runner.api",),
    ("runner.agent",),
    ("runner.session",),
    ("runner.runs",),
    ("runner.helpers",),
    ("runner.trust",),
    ("runner.contract", "runner.targets"),
    ("runner.errors", "runner"),
    ("sandbox",),
]
"""Top to bottom. ``runner.generic_*`` are the predecessor's entry points for helpers."""

COMPAT_SHIMS = {
    "runner.generic_evaluation": "runner.helpers",
    "runner.generic_rollout": "runner.helpers",
}

HELPER_IMPORTS = {"runner.trust.hints", "runner.trust.hint_scores", "runner.trust.hint_sources"}
"""What the stage helpers may import of ours: they run inside the sandbox, stdlib only."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    module = COMPAT_SHIMS.get(module, module)
    for depth, prefixes in enumerate(LAYERS):
        if any(module == p or (p != "runner" and module.startswith(p + ".")) for p in prefixes):
            return depth
    return None


def _our_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a runner/sandbox module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # `from runner.trust import hints` imports the module runner.trust.hints
            found.extend((node.lineno, f"{mod}.{a.name}") for a in node.names)
    return [(n, m) for n, m in found if _layer(m) is not None and (ROOT / _as_path(m)).exists()]


def _as_path(module: str) -> str:
    parts = module.split(".")
    as_file = Path(*parts).with_suffix(".py")
    return str(as_file) if (ROOT / as_file).exists() else str(Path(*parts))


def _sources() -> list[Path]:
    files = [ROOT / "runner_env.py"]
    for pkg in ("runner", "sandbox"):
        files.extend(sorted((ROOT / pkg).rglob("*.py")))
    return files


def test_every_module_has_a_layer() -> None:
    homeless = [_module_name(p) for p in _sources() if _layer(_module_name(p)) is None]
    assert homeless == [], f"modules outside every layer of the map: {homeless}"


def test_imports_point_down() -> None:
    upward = []
    for path in _sources():
        me = _module_name(path)
        mine = _layer(me)
        assert mine is not None
        for line, target in _our_imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs < mine:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {me} -> {target}")
    assert upward == [], "imports pointing up the map:\n" + "\n".join(upward)


def test_stage_helpers_import_only_the_standard_library_and_each_other() -> None:
    for path in sorted((ROOT / "runner" / "helpers").glob("*.py")):
        ours = {m for _, m in _our_imports(path)}
        stray = {m for m in ours if not m.startswith("runner.helpers") and m not in HELPER_IMPORTS}
        stray -= {"runner.trust"}  # the package itself, from `from runner.trust import hints`
        assert stray == set(), f"{path.name} would need {stray} inside the sandbox"


def test_the_cli_reaches_the_sandbox_through_one_module() -> None:
    doors = set()
    for path in sorted((ROOT / "runner" / "cli").glob("*.py")):
        if any(m == "sandbox" or m.startswith("sandbox.") for _, m in _our_imports(path)):
            doors.add(path.name)
    assert doors == {"engine.py"}, doors


def test_only_the_cli_knows_typer_and_rich() -> None:
    knowing = []
    for path in _sources():
        if _module_name(path).startswith("runner.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] in ("typer", "rich") for n in names):
                knowing.append(str(path.relative_to(ROOT)))
    assert knowing == []


# -- what importing costs (issue 17): heavy packages load only when a command needs them --


def _loaded_after(code: str) -> set[str]:
    """Top-level and our own module names loaded by ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _heavy(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_importing_runner_env_loads_no_engine_cli_or_batch() -> None:
    loaded = _loaded_after("import runner_env")
    assert _heavy(loaded, ("dask", "docker", "typer", "rich", "runner.batch")) == []
    # The control: touching a lazy name does import it, so the check above can fail.
    touched = _loaded_after("import runner_env\nrunner_env.run_many")
    assert "runner.batch" in touched


def test_runner_env_names_resolve_and_are_listed() -> None:
    import runner_env

    for name in runner_env.__all__:
        assert getattr(runner_env, name) is not None, name
    assert set(runner_env.__all__) <= set(dir(runner_env))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = runner_env.nope  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "code",
    [
        "import runner.cli.main",
        # --help builds every command's options: still no engine, batch or hub.
        "import sys\nfrom runner.cli.main import main\nsys.argv = ['fsm-runner', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "help"],
)
def test_the_cli_loads_no_engine_batch_or_hub_before_a_command_runs(code: str) -> None:
    loaded = _loaded_after(code)
    heavy = ("docker", "dask", "runner.batch", "huggingface_hub", "runner.api", "pydantic")
    assert _heavy(loaded, heavy) == []
