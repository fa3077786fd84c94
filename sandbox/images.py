"""Ensure the default sandbox image exists, building it offline when needed.

No container registry is reachable on the machines we target, so the base is built
from a Debian rootfs (``image_build.py``). Tags are content hashes of the inputs: an
unchanged input is an instant cache hit and a changed one rebuilds. A user may name
any other local image instead. Listing and pruning old base images is here too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from .engine import IMAGE_LABEL_KIND, LABEL_KIND, LEGACY_IMAGE_KIND, engine_errors, get_client
from .errors import SandboxError
from .image_build import (
    ROOTFS_REPO,
    SUITE,
    VARIANT,
    Progress,
    build_from_dockerfile,
    build_rootfs,
    host_apt_conf,
)
from .image_build import image_exists as image_exists

BASE_REPO = "fsm-runner/base"
BUILDER_VERSION = "2"
"""Bump when the build procedure changes in a way the hashed inputs do not show.
2: image labels only (``fsm-runner.image.kind``), no session keys (issue 15 item 3)."""


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


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the lock file ``name`` under ``cache_dir()`` (flock): one process at a time."""
    lock_path = cache_dir() / name
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
    # Two sessions must not debootstrap at once.
    with cache_lock("image-build.lock"):
        if image_exists(tag):  # another process built it while we waited
            return tag
        base = rootfs_tag()
        if not image_exists(base):
            build_rootfs(base, cache_dir(), say)
        build_from_dockerfile(tag, base, _context_files(), cache_dir(), say)
    return tag


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
