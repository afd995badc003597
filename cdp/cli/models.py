"""``cdp models``: the pretrained models shipped with cdp, with their model cards."""

from __future__ import annotations

import json

import click

from cdp.shipped import format_card, shipped_models


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the model cards as JSON.")
def command(as_json: bool) -> None:
    """List shipped models (usable as --model NAME) with data, training and measured ε_mae."""
    models = shipped_models()
    if as_json:
        click.echo(json.dumps(models, indent=1, ensure_ascii=False))
        return
    click.echo("\n\n".join(format_card(m) for m in models) or "no shipped models")
