"""``fsm-runner doctor`` and ``gc``: what the host needs for runs, and what dead runs left on it."""

from __future__ import annotations

import os
import shutil
from typing import Annotated

import typer
from rich.markup import escape

from runner.cli import engine
from runner.cli.common import err, fail, out
from runner.cli.engine import SandboxLayerError

Check = tuple[str, str, str, str]
"""(mark: ok / warn / fail, what, detail, fix)"""


def gc(
    all_: Annotated[
        bool, typer.Option("--all", help="Also remove live sessions' objects.")
    ] = False,
    kept: Annotated[
        bool, typer.Option("--kept", help="Also remove sandboxes left running by run --keep.")
    ] = False,
    pid: Annotated[
        list[int] | None,
        typer.Option(metavar="PID", help="Only objects created by this process (repeatable)."),
    ] = None,
) -> None:
    """Remove the containers, networks, volumes and firewall rules of dead runs."""
    try:
        report = engine.gc(include_live=all_, include_kept=kept, creator_pids=pid or None)
    except SandboxLayerError as exc:
        raise fail(exc) from exc
    out.print(engine.gc_summary(report), markup=False)
    if report.kept_on_purpose:
        out.print("gc --kept removes the sandboxes kept by run --keep", markup=False)
    for line in report.failed:
        err.print(f"could not remove {line}", markup=False)
    if report.failed:
        raise typer.Exit(1)


def _opencode_check() -> Check:
    """OpenCode is optional: only scaffolding and repairing a contract need it."""
    from runner.agent.binary import ENV_BIN, find_opencode

    found = find_opencode()
    if found is not None:
        return "ok", "OpenCode", str(found), ""
    explicit = os.environ.get(ENV_BIN, "").strip()
    why = f"{ENV_BIN}={explicit} is not an opencode executable" if explicit else "not found"
    fix = f"bash images/install-opencode.sh   # or put opencode on PATH, or set {ENV_BIN}"
    return "warn", "OpenCode", f"{why} (needed only to scaffold or repair contracts)", fix


def _firewall_check() -> Check:
    """Networked stages (bootstrap, llm) need host firewall rules, or they are refused."""
    fw = engine.firewall_status()
    if fw.enforced:
        return "ok", "host firewall", "llm/egress stages cannot reach this host's services", ""
    if fw.allowed_without:
        detail = f"{fw.reason}: llm/egress stages run WITHOUT it ({engine.ALLOW_HOST_ENV}=1)"
        return "warn", "host firewall", detail, "run as root with iptables installed"
    detail = f"{fw.reason}: llm/egress stages are refused"
    fix = f"run as root with iptables, or accept the risk: {engine.ALLOW_HOST_ENV}=1"
    return "fail", "host firewall", detail, fix


def doctor() -> None:
    """Check what runs need: engine, image, disk, host firewall, OpenCode (with the fixes)."""
    checks: list[Check] = []
    root = engine.cache_dir()
    try:
        info = engine.engine_info()
        checks.append(
            ("ok", "Docker engine", f"reachable (server {info.get('ServerVersion')})", "")
        )
        root = str(info.get("DockerRootDir") or root)
        tag = engine.default_image_tag()
        built = engine.image_exists(tag)
        checks.append(
            ("ok", "default image", f"{tag} built", "")
            if built
            else ("fail", "default image", f"{tag} not built", "fsm-runner images build")
        )
    except SandboxLayerError as exc:
        detail = str(getattr(exc, "detail", exc)).splitlines()[0]
        checks.append(("fail", "Docker engine", detail, engine.ENGINE_FIX_COMMAND))
    where = root if os.path.isdir(root) else engine.cache_dir()
    free = shutil.disk_usage(where).free / 1e9
    mark = "fail" if free < 2 else "warn" if free < 10 else "ok"
    fix = "fsm-runner gc && fsm-runner images prune" if mark != "ok" else ""
    checks.append((mark, "disk space", f"{free:.1f} GB free in {where}", fix))
    checks.append(_firewall_check())
    checks.append(_opencode_check())
    glyph = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[bold red]✗[/]"}
    for mark, what, detail, fix in checks:
        out.print(f"{glyph[mark]} {what:<14} {escape(detail)}")
        if fix:
            out.print(f"    fix: {fix}", markup=False)
    raise typer.Exit(1 if any(c[0] == "fail" for c in checks) else 0)
