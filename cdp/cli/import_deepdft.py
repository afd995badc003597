"""``cdp import deepdft MODEL_DIR -o OUT.ckpt``: a published DeepDFT model directory as a cdp checkpoint."""

from __future__ import annotations

from pathlib import Path

import click


def write_deepdft_checkpoint(model_dir, output) -> dict:
    """Import ``model_dir``, load the weights into a checked DensityModel, save atomically; return the config."""
    from cdp.core.checkpoint import load_state_dict_checked, save_checkpoint  # start-up: loaded when the command runs, not for --help
    from cdp.core.model import DensityModel  # start-up: loaded when the command runs, not for --help
    from cdp.importers.deepdft import WEIGHTS, import_deepdft, read_arguments  # start-up: loaded when the command runs, not for --help

    config, state_dict = import_deepdft(model_dir)
    args = read_arguments(model_dir)
    model = DensityModel.from_config(config)
    floats = [v.dtype for v in state_dict.values() if v.dtype.is_floating_point]
    if floats:
        model.to(floats[0])
    load_state_dict_checked(model, state_dict, str(Path(model_dir) / WEIGHTS))
    metadata = {
        "imported_from": "deepdft",
        "source": Path(model_dir).resolve().name,
        "elements": None,
        # trained with periodic boundaries switched off (DeepDFT's --ignore_pbc), e.g. the QM9 SchNet model
        "ignore_pbc": bool(args.get("ignore_pbc", False)),
    }
    save_checkpoint(output, model, metadata=metadata)
    return config


@click.command("deepdft")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=True, help="Output .ckpt file.")
def deepdft(model_dir: str, output: str) -> None:
    """Import a DeepDFT model directory (arguments.json + best_model.pth)."""
    cfg = write_deepdft_checkpoint(model_dir, output)
    bb = cfg["backbone"]
    click.echo(
        f"imported DeepDFT {bb['name']} ({bb['num_interactions']} x {bb['node_size']}, cutoff {bb['cutoff']}, "
        f"readout mlp/{cfg['readout']['activation']}) -> {output}"
    )
