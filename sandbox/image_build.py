"""Building the default image offline: no registry, only the host's Debian mirror.

The rootfs is ``debootstrap --variant=minbase`` from the mirror the host's own apt uses,
imported as an image, then finished by ``images/base/Dockerfile``. What to build and
when (tags, cache, the build lock) is ``images.py``'s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.errors

from .engine import blank_session_labels, engine_errors, get_client, image_labels
from .errors import ImageBuildError, SandboxError

SUITE = "bookworm"
VARIANT = "minbase"
ROOTFS_REPO = "fsm-runner/rootfs"

Progress = Callable[[str], None]


def host_apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror the host's apt already uses for ``suite`` (never hard-coded).

    Raises:
        ImageBuildError: no apt source names the suite.
    """
    sources: list[Path] = []
    if Path("/etc/apt/sources.list").is_file():
        sources.append(Path("/etc/apt/sources.list"))
    src_dir = Path("/etc/apt/sources.list.d")
    if src_dir.is_dir():
        sources.extend(sorted(src_dir.glob("*.sources")) + sorted(src_dir.glob("*.list")))
    for path in sources:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                suites = fields.get("suites", "").split()
                if suite in suites and "deb" in fields.get("types", "").split():
                    uris = fields.get("uris", "").split()
                    if uris:
                        return uris[0]
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == suite:
                    return m.group(1)
    raise ImageBuildError(f"{ROOTFS_REPO}", "find mirror", f"no apt source for suite {suite!r}")


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def host_apt_conf() -> dict[str, bytes]:
    """Host apt.conf.d snippets the mirror needs inside the image (validity/date checks)."""
    wanted: dict[str, bytes] = {}
    conf_dir = Path("/etc/apt/apt.conf.d")
    if conf_dir.is_dir():
        for path in sorted(conf_dir.iterdir()):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if re.search(rb"Check-Valid-Until|Check-Date|Acquire::.*Proxy", data, re.I):
                wanted[path.name] = data
    return wanted


def image_exists(tag: str) -> bool:
    """Whether the engine holds ``tag`` locally (there is no registry to pull it from)."""
    client = get_client()
    try:
        with engine_errors(f"inspect image {tag}"):
            client.images.get(tag)
    except SandboxError as exc:
        if isinstance(exc.__cause__, docker.errors.ImageNotFound):
            return False
        raise
    return True


def build_rootfs(tag: str, work_root: Path, say: Progress) -> None:
    """Debootstrap a minbase Debian from the host's mirror and import it as ``tag``.

    Raises:
        ImageBuildError: not root, no debootstrap, or a step failed (its last lines).
    """
    if os.geteuid() != 0:
        raise ImageBuildError(
            tag, "debootstrap", "building the base rootfs needs root (run: make image)"
        )
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            tag, "debootstrap", "debootstrap is not installed (apt-get install -y debootstrap)"
        )
    mirror = host_apt_mirror()
    say(
        f"building base rootfs {tag}: debootstrap --variant={VARIANT} {SUITE} from {mirror} (about a minute)"
    )
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=work_root))
    started = time.monotonic()
    try:
        rootfs = work / "rootfs"
        _run_logged(
            ["debootstrap", f"--variant={VARIANT}", SUITE, str(rootfs), mirror],
            tag,
            "debootstrap",
            say,
        )
        conf_dir = rootfs / "etc/apt/apt.conf.d"
        for name, data in host_apt_conf().items():
            (conf_dir / name).write_bytes(data)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        tarball = work / "rootfs.tar"
        _run_logged(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], tag, "tar", say)
        say(f"importing rootfs ({tarball.stat().st_size / 1e6:.0f} MB) as {tag}")
        repo, _, ver = tag.partition(":")
        changes = [f'LABEL {k}="{v}"' for k, v in image_labels("rootfs").items()]
        client = get_client()
        with engine_errors(f"import {tag}"):
            client.api.import_image_from_file(
                str(tarball), repository=repo, tag=ver, changes=changes
            )
        say(f"rootfs image ready in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_logged(cmd: list[str], tag: str, step: str, say: Progress) -> None:
    tail: list[str] = []
    last_report = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-19:], line.rstrip()]
            if time.monotonic() - last_report > 5:
                say(f"  {step}: {line.strip()[:120]}")
                last_report = time.monotonic()
        rc = proc.wait()
    if rc != 0:
        raise ImageBuildError(tag, step, "\n".join(tail))


def _base_labels(client: Any, rootfs: str) -> dict[str, str]:
    """Image labels of the base; any session key the rootfs carries is blanked."""
    with engine_errors(f"inspect image {rootfs}"):
        inherited = dict(client.images.get(rootfs).labels or {})
    return blank_session_labels(inherited, image_labels("base"))


def build_from_dockerfile(
    tag: str, base: str, files: dict[str, bytes], work_root: Path, say: Progress
) -> None:
    """Build ``tag`` from ``base`` with the context ``files`` (the Dockerfile and apt settings).

    Raises:
        ImageBuildError: the build failed or left no image (its last lines).
    """
    say(f"building {tag} from {base} (apt-get install python3, git, ...)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ctx-", dir=work_root) as ctx:
        for name, data in files.items():
            dest = Path(ctx) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        (Path(ctx) / "apt.conf.d").mkdir(exist_ok=True)
        client = get_client()
        tail: list[str] = []
        with engine_errors(f"build {tag}"):
            stream = client.api.build(
                path=ctx,
                tag=tag,
                buildargs={"BASE": base},
                labels=_base_labels(client, base),
                rm=True,
                forcerm=True,
                decode=True,
                network_mode="bridge",
            )
            last_report = 0.0
            for chunk in stream:
                if "error" in chunk:
                    raise ImageBuildError(
                        tag, "docker build", "\n".join([*tail, str(chunk["error"])])
                    )
                line = str(chunk.get("stream", "")).rstrip()
                if line:
                    tail = [*tail[-19:], line]
                    if line.startswith("Step ") or time.monotonic() - last_report > 5:
                        say(f"  {line[:120]}")
                        last_report = time.monotonic()
    if not image_exists(tag):
        raise ImageBuildError(tag, "docker build", "\n".join(tail))
    say(f"image {tag} ready in {time.monotonic() - started:.0f}s")
