"""Ensure the default sandbox image exists, building it offline when needed.

No container registry is reachable on the machines we target, so the base is made from
a Debian rootfs (``debootstrap --variant=minbase``) fetched from the mirror the host's
own apt uses, imported as an image, and finished by ``images/base/Dockerfile``.
Tags are content hashes of the inputs: an unchanged input is an instant cache hit and
a changed one rebuilds. A user may name any other local image instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from .engine import (
    IMAGE_LABEL_KIND,
    LABEL_KIND,
    LEGACY_IMAGE_KIND,
    blank_session_labels,
    engine_errors,
    get_client,
    image_labels,
)
from .errors import ImageBuildError, SandboxError

SUITE = "bookworm"
VARIANT = "minbase"
ROOTFS_REPO = "fsm-runner/rootfs"
BASE_REPO = "fsm-runner/base"
BUILDER_VERSION = "2"
"""Bump when the build procedure changes in a way the hashed inputs do not show.
2: image labels only (``fsm-runner.image.kind``), no session keys (issue 15 item 3)."""

Progress = Callable[[str], None]


def _default_progress(msg: str) -> None:
    print(f"[fsm-runner images] {msg}", flush=True)


def image_files_dir() -> Path:
    """The folder holding the default image's Dockerfile (package data, linked to images/base)."""
    return Path(__file__).resolve().parent / "image_files"


def cache_dir() -> Path:
    root = os.environ.get("FSM_RUNNER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fsm-runner"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def rootfs_tag() -> str:
    key = f"{SUITE}|{VARIANT}|{BUILDER_VERSION}".encode()
    return f"{ROOTFS_REPO}:{SUITE}-{_digest(key)}"


def _context_files() -> dict[str, bytes]:
    files = {}
    root = image_files_dir()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    for name, data in host_apt_conf().items():
        files[f"apt.conf.d/{name}"] = data
    return files


def default_image_tag() -> str:
    """``fsm-runner/base:<hash>`` of the rootfs inputs, the Dockerfile and the apt settings."""
    parts = [rootfs_tag().encode()]
    for name, data in sorted(_context_files().items()):
        parts += [name.encode(), data]
    return f"{BASE_REPO}:{_digest(*parts)}"


def image_exists(tag: str) -> bool:
    client = get_client()
    try:
        with engine_errors(f"inspect image {tag}"):
            client.images.get(tag)
    except SandboxError as exc:
        if isinstance(exc.__cause__, docker.errors.ImageNotFound):
            return False
        raise
    return True


@contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds across processes: two sessions must not debootstrap at once."""
    lock_path = cache_dir() / "image-build.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_image(image: str | None = None, *, progress: Progress | None = None) -> str:
    """Return a usable local image tag, building the default one when missing.

    Args:
        image: a user-named local image (used as is; must exist) or None for the default.
        progress: called with one line per build step (long steps never stay silent).

    Raises:
        SandboxError: a named image does not exist locally (no registry to pull from).
        ImageBuildError: the default image could not be built.
    """
    say = progress or _default_progress
    key = image or ""
    if key in _verified:  # opening many sandboxes: check the engine once per process
        return _verified[key]
    tag = _ensure(image, say)
    _verified[key] = tag
    return tag


_verified: dict[str, str] = {}


def _ensure(image: str | None, say: Progress) -> str:
    if image:
        if not image_exists(image):
            raise SandboxError(
                f"image {image!r} not found locally and no registry is reachable; "
                "build or load it first (docker build / docker load), or omit image= for the default"
            )
        return image
    tag = default_image_tag()
    if image_exists(tag):
        return tag
    with _build_lock():
        if image_exists(tag):  # another process built it while we waited
            return tag
        base = rootfs_tag()
        if not image_exists(base):
            _build_rootfs(base, say)
        _build_from_dockerfile(tag, base, say)
    return tag


def _build_rootfs(tag: str, say: Progress) -> None:
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
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
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


def _build_from_dockerfile(tag: str, base: str, say: Progress) -> None:
    say(f"building {tag} from {base} (apt-get install python3, git, ...)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ctx-", dir=cache_dir()) as ctx:
        for name, data in _context_files().items():
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


# -- listing and pruning ------------------------------------------------------------


@dataclass(frozen=True)
class BaseImage:
    """A base image (or rootfs) this project built, as ``fsm-runner images`` lists it."""

    names: tuple[str, ...]
    size_bytes: int
    created: str
    current: bool
    """The default image (or its rootfs) of this checkout: never pruned."""


def base_images(label: str | None = None) -> list[BaseImage]:
    """Our base images, newest first (``label``: only those with this ``KEY=VALUE`` too)."""
    current = {default_image_tag(), rootfs_tag()}
    return [
        BaseImage(
            names=_our_tags(img),
            size_bytes=int(img.attrs.get("Size", 0)),
            created=str(img.attrs.get("Created", "")),
            current=bool(current & set(img.tags)),
        )
        for img in _labelled_images(label)
    ]


def _labelled_images(label: str | None) -> list[Any]:
    """Images we built: our label *and* one of our repository names.

    An image built ``FROM`` ours inherits its labels, so a label alone would make someone
    else's image look like ours (issue 15 item 3); a tag under our repositories does not
    pass on. Base images built before issue 15 carry ``fsm-runner.kind=image``.
    """
    found: dict[str, Any] = {}
    kinds = [
        f"{IMAGE_LABEL_KIND}=base",
        f"{IMAGE_LABEL_KIND}=rootfs",
        f"{LABEL_KIND}={LEGACY_IMAGE_KIND}",
    ]
    for kind in kinds:
        with engine_errors("list images"):
            listed = get_client().images.list(
                filters={"label": [kind, *([label] if label else [])]}
            )
        found.update((img.id, img) for img in listed if _our_tags(img))
    return sorted(found.values(), key=lambda i: str(i.attrs.get("Created", "")), reverse=True)


def _our_tags(img: Any) -> tuple[str, ...]:
    return tuple(t for t in img.tags if t.split(":", 1)[0] in (BASE_REPO, ROOTFS_REPO))


@dataclass(frozen=True)
class PruneOutcome:
    """One old base image: removed, kept because a container uses it, or left by dry run."""

    names: tuple[str, ...]
    removed: bool
    why_kept: str = ""


def prune_base_images(keep: int, *, dry_run: bool, label: str | None = None) -> list[PruneOutcome]:
    """Remove old base images except the ``keep`` newest; never the current default."""
    old = [i for i in base_images(label) if not i.current][keep:]
    outcomes = []
    for img in old:
        if dry_run:
            outcomes.append(PruneOutcome(img.names, removed=False, why_kept="dry run"))
            continue
        try:
            with engine_errors(f"remove {img.names[0]}"):
                for name in img.names:  # untag each name; the last one deletes the image
                    get_client().images.remove(name)
            outcomes.append(PruneOutcome(img.names, removed=True))
        except SandboxError as exc:
            in_use = isinstance(exc.__cause__, docker.errors.APIError)
            outcomes.append(
                PruneOutcome(img.names, removed=False, why_kept="in use" if in_use else str(exc))
            )
    return outcomes


def main() -> None:
    """``python -m sandbox.images``: build (or confirm) the default image, printing progress."""
    print(ensure_image())


if __name__ == "__main__":
    main()
