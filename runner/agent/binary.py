"""Find (or install) the ``opencode`` executable that gets mounted into the agent sandbox.

The binary must be the real ELF file: npm's ``node_modules/.bin/opencode`` is a Node
launcher that needs node, which the sandbox image does not have. Order of search:
``FSM_OPENCODE_BIN``, then ``opencode`` on ``PATH`` (a launcher is followed to the
platform package next to it), then the pinned copy ``images/install-opencode.sh``
puts under ``<fsm-runner>/.tools/opencode/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from runner.errors import AgentError

PINNED_VERSION = "1.18.33"
"""The version the prompts and tests were written against (notes/opencode.md)."""
ENV_BIN = "FSM_OPENCODE_BIN"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = PROJECT_ROOT / "images" / "install-opencode.sh"
PLATFORM_REL = Path("node_modules") / "opencode-linux-x64" / "bin" / "opencode"
INSTALL_TIMEOUT_S = 600.0

_ELF_MAGIC = b"\x7fELF"


def pinned_path(root: Path = PROJECT_ROOT) -> Path:
    """Where ``images/install-opencode.sh`` installs the binary."""
    return root / ".tools" / "opencode" / PLATFORM_REL


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == _ELF_MAGIC
    except OSError:
        return False


def _from_launcher(found: Path) -> Path | None:
    """The ELF binary behind npm's launcher (``.../node_modules/.bin/opencode``)."""
    real = found.resolve()
    if is_elf(real):
        return real
    # .../node_modules/opencode-ai/bin/opencode(.js) -> .../node_modules/opencode-linux-x64/bin/opencode
    for parent in real.parents:
        if parent.name == "node_modules":
            candidate = parent / "opencode-linux-x64" / "bin" / "opencode"
            if is_elf(candidate):
                return candidate
    return None


def find_opencode(*, root: Path = PROJECT_ROOT) -> Path | None:
    """The opencode ELF binary to mount, or None when there is none on this host."""
    explicit = os.environ.get(ENV_BIN, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        return path.resolve() if is_elf(path) else None
    on_path = shutil.which("opencode")
    if on_path:
        found = _from_launcher(Path(on_path))
        if found is not None:
            return found
    pinned = pinned_path(root)
    return pinned if is_elf(pinned) else None


def require_opencode(*, root: Path = PROJECT_ROOT) -> Path:
    """:func:`find_opencode`, or a clear error saying how to get it.

    Raises:
        AgentError: no usable binary (``FSM_OPENCODE_BIN`` set to a non-ELF file, or none found).
    """
    found = find_opencode(root=root)
    if found is not None:
        return found
    explicit = os.environ.get(ENV_BIN, "").strip()
    if explicit:
        raise AgentError(f"{ENV_BIN}={explicit} is not an opencode executable (ELF) file")
    raise AgentError(
        "opencode binary not found: run `make opencode` (bash images/install-opencode.sh, "
        f"installs opencode-ai@{PINNED_VERSION} into .tools/opencode), put `opencode` on PATH, "
        f"or set {ENV_BIN}"
    )


def install_opencode(*, root: Path = PROJECT_ROOT, timeout_s: float = INSTALL_TIMEOUT_S) -> Path:
    """Run ``images/install-opencode.sh`` (npm, idempotent) and return the pinned binary.

    Raises:
        AgentError: the script is missing, fails, or times out.
    """
    script = root / "images" / "install-opencode.sh"
    if not script.is_file():
        raise AgentError(f"install script not found: {script}")
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AgentError(f"installing opencode timed out after {timeout_s:.0f}s") from exc
    if proc.returncode != 0:
        raise AgentError(
            f"installing opencode failed (rc={proc.returncode}): {proc.stderr[-2000:]}"
        )
    binary = pinned_path(root)
    if not is_elf(binary):
        raise AgentError(f"install script succeeded but {binary} is not an executable")
    return binary


def find_ripgrep() -> Path | None:
    """A host ``rg`` for OpenCode's grep/glob tools, if one exists.

    Only a statically linked or glibc-only rg works in the sandbox image; Debian's is
    (libc, libgcc_s). Without it those two tools fail inside the sandbox (OpenCode then
    tries to download ripgrep, which the ``llm`` network refuses) and the others work.
    """
    found = shutil.which("rg")
    return Path(found).resolve() if found else None
