"""``cdp import``: convert published checkpoints into cdp checkpoints (one subcommand per source)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click


def write_imported(out, config: dict, state_dict: dict, source: str, kind: str, components=None) -> None:
    """Assemble the model (from already built ``components`` when given), load the imported weights
    (checked) and save a cdp checkpoint atomically."""
    from cdp.core.checkpoint import load_state_dict_checked, save_checkpoint  # start-up: loaded when the command runs, not for --help
    from cdp.core.model import DensityModel  # start-up: loaded when the command runs, not for --help

    if components is not None:
        from cdp.core.registry import get_registry  # start-up: loaded when the command runs, not for --help

        graph = get_registry().build("graph", config["graph"])
        model = DensityModel(*components, graph, config)
    else:
        model = DensityModel.from_config(config)
    floats = [v.dtype for v in state_dict.values() if v.dtype.is_floating_point]
    if floats:
        model.to(floats[0])
    load_state_dict_checked(model, state_dict, source)
    metadata = {"imported_from": kind, "source": Path(source).name, "elements": None}
    save_checkpoint(out, model, metadata=metadata)


@click.group("import")
def command() -> None:
    """Convert a published checkpoint into a cdp checkpoint."""


@command.command("charge3net")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Hyperparameters: YAML/JSON model or run config, or a flat mapping.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True, help="Output .ckpt file.")
def charge3net(checkpoint: str, config: Optional[str], output: str) -> None:
    """Import a ChargE3Net checkpoint (trainer or Lightning format)."""
    from cdp.importers.charge3net import import_charge3net_components  # start-up: loaded when the command runs, not for --help

    cfg, sd, components = import_charge3net_components(checkpoint, config)
    write_imported(output, cfg, sd, checkpoint, "charge3net", components)
    bb = cfg["backbone"]
    click.echo(
        f"imported ChargE3Net ({bb['num_interactions']} layers, mul {bb['mul']}, lmax {bb['lmax']}, "
        f"cutoff {bb['cutoff']}, readout {cfg['readout']['name']}) -> {output}"
    )


from cdp.cli.import_deepdft import deepdft as _deepdft  # noqa: E402  (DeepDFT model directories)

command.add_command(_deepdft)

