"""``cdp export MODEL --format onnx|torchscript|pt2 -o DIR [--example-inputs DIR2]``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from cdp.core.checkpoint import load_checkpoint
from cdp.core.components import for_capture
from cdp.core.model import DensityModel
from cdp.core.registry import get_registry
from cdp.core.types import CdpError
from cdp.export.context import intra_op_threads
from cdp.export.examples import default_structure, example_probes, write_example_inputs
from cdp.export.exporter import check_out_dir, export_model
from cdp.export.fork import default_jobs
from cdp.predict import Predictor, _named_models


def _load(model_text: str):
    """(DensityModel, checkpoint dict or None, source path or None) from a checkpoint file or a preset name."""
    path = Path(model_text)
    if path.is_file():
        model, info = load_checkpoint(path)
        return model, info, str(path)
    shipped = _named_models()
    if model_text in shipped:  # the shipped models `cdp predict --model` accepts (demo)
        model, info = load_checkpoint(shipped[model_text])
        return model, info, str(shipped[model_text])
    reg = get_registry()
    if model_text in reg.presets:
        return DensityModel.from_config(reg.preset(model_text)).eval(), None, None
    raise CdpError(f"{model_text}: no such checkpoint file, shipped model ({', '.join(sorted(shipped))}) or preset")


@click.command("export")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "pt2"]), default="onnx", show_default=True,
              help="Artifact format (pt2 = torch.export + AOTInductor, compiles C++: slow).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for encoder/decoder files and cdp_export.json.")
@click.option("--example-inputs", "example_dir", type=click.Path(file_okay=False), default=None,
              help="Also write one structure, its probes and PyTorch's densities as .npy files (input of examples/cpp).")
@click.option("--structure", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ase-readable structure for --example-inputs (default: a small built-in slab).")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset (≥ 18).")
@click.option("--ops", type=click.Choice(["standard", "cdp"]), default="standard", show_default=True,
              help="Operators: standard ones only, or cdp's own where the model has them (ChargE3Net: its probe "
                   "convolutions as the fused kernel). onnx: the onnxruntime library is written beside the models; "
                   "torchscript: the files then load only in a process with cdp; pt2: refused.")
@click.option("--force", is_flag=True, help="Write into DIR even when it already holds files.")
@click.option("--jobs", type=click.IntRange(1, 2), default=None,
              help="onnx: 2 exports encoder and decoder side by side (a forked second process, Linux); "
                   "default 2 when a second CPU is free (load average), else 1.")
def command(model, fmt, out_dir, example_dir, structure, opset, ops, force, jobs):
    """Export MODEL (a cdp checkpoint, a shipped model such as demo, or a preset name) as a two-stage
    encoder/decoder for deployment.  DIR must be missing or empty unless --force."""
    check_out_dir(Path(out_dir), force)  # before loading anything: a refused DIR is never touched
    # built only to be captured (no native kernel compiled), unless PyTorch also predicts the example inputs;
    # with one intra-op thread, as the export itself (cdp.export.context.intra_op_threads)
    with for_capture() if not example_dir else contextlib.nullcontext(), intra_op_threads(1):
        net, info, source = _load(model)
    meta = export_model(net, out_dir, fmt, info=info, source=source, opset=opset, force=force, ops=ops,
                        log=lambda s: click.echo(f"  {s}", err=True), jobs=default_jobs() if jobs is None else jobs)
    library = (meta.get("onnx") or {}).get("custom_ops", {}).get("library")
    click.echo(f"wrote {out_dir}/{meta['encoder']['file']}, {meta['decoder']['file']}, "
               f"{library + ', ' if library else ''}cdp_export.json "
               f"({fmt}, cutoff {meta['cutoff']} Å, {meta['num_layers']} layers, {meta['dtype']})")
    if example_dir:
        if structure:
            import ase.io  # start-up: only --structure reads a file (ase.io imports scipy: 0.6 s)

            try:
                atoms = ase.io.read(structure)
            except Exception as exc:
                raise CdpError(f"{structure}: cannot read a structure ({type(exc).__name__}: {exc})") from None
        else:
            atoms = default_structure(meta["elements"])
        probes = example_probes(atoms)
        density = Predictor(net, probe_batch=8).predict(atoms, probes)
        files = write_example_inputs(example_dir, atoms, probes, density, meta["cutoff"])
        click.echo(f"wrote {example_dir}/ ({', '.join(files)})")
