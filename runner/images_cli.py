"""``fsm-runner images``: build, list and prune the base images and bootstrap snapshots."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from runner.cli_common import Quiet, err, fail, out, plain_line
from runner.progress import bare_table, view_style
from sandbox.errors import SandboxError as SandboxLayerError

__all__ = ["images_app"]

images_app = typer.Typer(no_args_is_help=True, help="The sandbox images (built offline).")


@images_app.command("build")
def images_build(
    image: Annotated[str | None, typer.Option(help="Check this local image instead.")] = None,
    quiet: Quiet = False,
) -> None:
    """Build (or confirm) the default image; instant when cached."""
    from sandbox.images import ensure_image

    style = "quiet" if quiet else view_style(err)
    try:
        if style == "live":
            with err.status("checking the default image") as status:
                tag = ensure_image(image, progress=lambda m: status.update(m[:100]))
        else:
            tag = ensure_image(image, progress=None if quiet else plain_line)
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    out.print(tag, markup=False)


def _fsm_images(label: str | None = None) -> list[Any]:
    from sandbox.engine import LABEL_KIND, engine_errors, get_client

    labels = [f"{LABEL_KIND}=image", *([label] if label else [])]
    with engine_errors("list images"):
        images: list[Any] = get_client().images.list(filters={"label": labels})
    return sorted(images, key=lambda i: str(i.attrs.get("Created", "")), reverse=True)


@images_app.command("list")
def images_list() -> None:
    """Base images and bootstrap snapshots; `*` marks the current default base image."""
    from sandbox.images import default_image_tag
    from sandbox.snapshots import list_snapshots

    try:
        current, images, snaps = default_image_tag(), _fsm_images(), list_snapshots()
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    table = bare_table("", "image", "size", "created / last used (UTC)")
    for img in images:
        size, created = img.attrs.get("Size", 0) / 1e6, str(img.attrs.get("Created", ""))
        mark = "*" if current in img.tags else ""
        table.add_row(mark, ", ".join(img.tags) or img.short_id, f"{size:.0f} MB", created[:19])
    for snap in snaps:
        used = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(snap.last_used))
        table.add_row("", snap.tag, f"+{snap.size_bytes / 1e6:.0f} MB", f"used {used}")
    out.print(table)


@images_app.command("prune")
def images_prune(
    keep: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Keep the N newest old base images and the N most recently used snapshots.",
        ),
    ] = None,
    max_gb: Annotated[
        float | None,
        typer.Option(min=0, help="Then drop least recently used snapshots until they fit in G GB."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
    label: Annotated[
        str | None, typer.Option(metavar="KEY=VALUE", help="Only images with this label too.")
    ] = None,
) -> None:
    """Remove old base images (never the current default) and bound the bootstrap cache.

    Old base images go except the N newest. Bootstrap snapshots are only touched when
    --keep or --max-gb is given: least recently used first.
    """
    from sandbox.images import default_image_tag
    from sandbox.snapshots import prune_snapshots

    try:
        removed = _prune_bases(keep or 0, dry_run=dry_run, label=label)
        snaps = []
        if keep is not None or max_gb is not None:
            snaps = prune_snapshots(
                keep=keep,
                max_bytes=int(max_gb * 1e9) if max_gb is not None else None,
                label=label,
                dry_run=dry_run,
            )
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    for snap in snaps:
        verb = "would remove" if dry_run else "removed"
        out.print(
            f"{verb} {snap.tag} (+{snap.size_bytes / 1e6:.0f} MB, {snap.reason})", markup=False
        )
    if not dry_run:
        out.print(
            f"removed {removed} image(s) and {len(snaps)} snapshot(s); "
            f"kept the current default {default_image_tag()}"
        )


def _prune_bases(keep: int, *, dry_run: bool, label: str | None) -> int:
    import docker.errors

    from sandbox.engine import engine_errors, get_client
    from sandbox.images import default_image_tag, rootfs_tag

    current = {default_image_tag(), rootfs_tag()}
    old = [i for i in _fsm_images(label) if not current & set(i.tags)][keep:]
    removed = 0
    for img in old:
        names = img.tags or [img.id]
        if dry_run:
            out.print(f"would remove {', '.join(names)}", markup=False)
            continue
        try:
            with engine_errors(f"remove {names[0]}"):
                for name in names:  # untag each name; the last one deletes the image
                    get_client().images.remove(name)
            removed += 1
        except SandboxLayerError as exc:
            in_use = isinstance(exc.__cause__, docker.errors.APIError)
            err.print(f"kept {names[0]}: {'in use' if in_use else exc}", markup=False)
    return removed
