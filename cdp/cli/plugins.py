"""``cdp plugins list``: what the registry loaded, where from, and which plugins are broken."""

from __future__ import annotations

import json

import click

from cdp.core.registry import get_registry


def plugins_report() -> dict:
    """Plugins (ok or broken, with origin), components per kind and presets, as plain data."""
    reg = get_registry()
    return {
        "registry": str(reg.path),
        "plugins": [
            {"name": p.name, "origin": p.origin, "ok": p.ok, "components": p.components, "error": p.error}
            for p in reg.plugins
        ],
        "components": {kind: {n: e.plugin for n, e in sorted(entries.items())} for kind, entries in reg.components.items()},
        "presets": sorted(reg.presets),
        "shadowed_presets": dict(sorted(reg.shadowed.items())),
    }


@click.group("plugins")
def command() -> None:
    """Inspect the plugin registry."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any plugin is BROKEN (for a plugin's CI).")
def list_cmd(as_json: bool, strict: bool) -> None:
    """List plugins with their origin and components; broken ones are marked with the reason."""
    report = plugins_report()
    broken = [p["name"] for p in report["plugins"] if not p["ok"]]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        if strict and broken:
            raise click.exceptions.Exit(1)
        return
    click.echo(f"registry: {report['registry']}")
    for p in report["plugins"]:
        status = "ok" if p["ok"] else "BROKEN"
        click.echo(f"  [{status:6}] {p['name']}  ({p['origin']})")
        if p["components"]:
            click.echo(f"           {', '.join(p['components'])}")
        if p["error"]:
            click.echo(f"           error: {p['error']}")
    click.echo("components:")
    for kind, entries in report["components"].items():
        click.echo(f"  {kind}: {', '.join(entries) or '-'}")
    click.echo(f"presets: {', '.join(report['presets'])}")
    for name, plugin in report["shadowed_presets"].items():
        click.echo(f"  shadowed: preset '{name}' of plugin {plugin} (registry.yaml's preset of that name wins)")
    if strict and broken:
        click.echo(f"error: {len(broken)} broken plugin{'s' if len(broken) != 1 else ''}: {', '.join(broken)}", err=True)
        raise click.exceptions.Exit(1)
