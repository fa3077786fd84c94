"""``fsm-runner images``: build, list and prune the base images and bootstrap snapshots."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from runner.cli import engine
from runner.cli.common import Quiet, err, fail, out, plain_line
from runner.cli.engine import SandboxLayerError
from runner.cli.progress import bare_table, view_style

__all__ = ["images_app"]

images_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="The sandbox images (built offline)."
)


@images_app.command("build")
def images_build(
    image: Annotated[str | None, typer.Option(help="Check this local image instead.")] = None,
    quiet: Quiet = False,
) -> None:
    """Build (or confirm) the default image; instant when cached."""
    style = "quiet" if quiet else view_style(err)
    try:
        if style == "live":
            with err.status("checking the default image") as status:
                tag = engine.ensure_image(image, progress=lambda m: status.update(m[:100]))
        else:
            tag = engine.ensure_image(image, progress=None if quiet else plain_line)
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    out.print(tag, markup=False)


@images_app.command("list")
def images_list() -> None:
    """Base images and bootstrap snapshots; `*` marks the current default base image."""
    try:
        current, images, snaps = (
            engine.default_image_tag(),
            engine.base_images(),
            engine.snapshots(),
        )
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    table = bare_table("", "image", "size", "created / last used (UTC)")
    for img in images:
        mark = "*" if current in img.names else ""
        size = f"{img.size_bytes / 1e6:.0f} MB"
        table.add_row(mark, ", ".join(img.names), size, img.created[:19])
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
    try:
        bases = engine.prune_base_images(keep or 0, dry_run=dry_run, label=label)
        snaps = []
        if keep is not None or max_gb is not None:
            snaps = engine.prune_snapshots(
                keep=keep,
                max_bytes=int(max_gb * 1e9) if max_gb is not None else None,
                label=label,
                dry_run=dry_run,
            )
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    for base in bases:
        if dry_run:
            out.print(f"would remove {', '.join(base.names)}", markup=False)
        elif not base.removed:
            err.print(f"kept {base.names[0]}: {base.why_kept}", markup=False)
    removed = sum(1 for base in bases if base.removed)
    for snap in snaps:
        verb = "would remove" if dry_run else "removed"
        out.print(
            f"{verb} {snap.tag} (+{snap.size_bytes / 1e6:.0f} MB, {snap.reason})", markup=False
        )
    if not dry_run:
        out.print(
            f"removed {removed} image(s) and {len(snaps)} snapshot(s); "
            f"kept the current default {engine.default_image_tag()}"
        )
