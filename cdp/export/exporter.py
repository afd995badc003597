"""``export_model``: a DensityModel → DIR/{encoder,decoder}.<ext> + cdp_export.json, for one artifact format.

A failure while tracing/exporting is turned into a CdpError that names the component (featurizer,
backbone or readout, with its class and the source line) and the exporter's reason.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from cdp._version import __version__
from cdp.core.checkpoint import checked_elements, file_sha256
from cdp.core.constants import NUM_ELEMENTS
from cdp.core.provenance import component_provenance
from cdp.core.types import CdpError
from cdp.export import metadata as md
from cdp.export.context import blame, export_context, intra_op_threads  # noqa: F401  (export_context re-exported)
from cdp.export.examples import EXAMPLE_SIZES, decoder_example, encoder_example
from cdp.export.onnx import export_onnx
from cdp.export.pt2 import export_pt2
from cdp.export.torchscript import export_torchscript
from cdp.export.wrappers import DECODER_EDGE_INPUTS, ENCODER_INPUTS, atom_output_names, split_model

DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


@dataclass
class ExportJob:
    """What every format's exporter receives: the model, its split halves, example inputs, the metadata."""

    model: torch.nn.Module
    enc: torch.nn.Module
    dec: torch.nn.Module
    enc_args: Tuple
    dec_args: Tuple
    names: List[str]  # atom-output names (layers, then the prior's coefficients when there is one)
    out: Path
    meta: dict
    opset: int
    log: Callable[[str], None]
    threads: int = 1  # the caller's intra-op thread count (the export itself runs with one)
    jobs: int = 1  # processes for the two stages (onnx: 2 exports the encoder in a forked second process)


def _onnx(job: ExportJob) -> dict:
    return export_onnx(job.model, job.enc, job.dec, job.enc_args, job.dec_args, job.names, job.out, job.meta,
                       opset=job.opset, log=job.log, jobs=job.jobs)


def _torchscript(job: ExportJob) -> dict:
    return export_torchscript(job.model, job.enc, job.dec, job.enc_args, job.dec_args, job.out, job.meta, log=job.log)


def _pt2(job: ExportJob) -> dict:
    return export_pt2(job.model, job.enc, job.dec, job.enc_args, job.dec_args, job.out, job.meta, log=job.log, threads=job.threads)


# format name → exporter writing DIR/{encoder,decoder}.<ext>; its return value is stored under meta[format]
EXPORTERS: Dict[str, Callable[[ExportJob], dict]] = {"onnx": _onnx, "torchscript": _torchscript, "pt2": _pt2}
assert set(EXPORTERS) == set(md.ARTIFACTS), "every artifact kind has exactly one exporter"


def probe_memory_record(model) -> Optional[dict]:
    """The backbone's decode-memory model as cdp_export.json records it, or None when it has none:
    one decode call of M probes with e edges per probe needs ``fixed + M·(per_probe + per_edge·e)`` bytes."""
    itemsize = torch.finfo(model.dtype).bits // 8
    at_zero = model.backbone.probe_memory(itemsize, 0.0)  # Backbone contract: None when unknown
    if at_zero is None:
        return None
    fixed, base = (int(v) for v in at_zero)
    _, one = (int(v) for v in model.backbone.probe_memory(itemsize, 1.0))
    return {"fixed": fixed, "per_probe": base, "per_edge": one - base}


def model_elements(model, info: Optional[dict] = None) -> List[int]:
    """Elements the model accepts: the checkpoint's recorded elements, else every Z its featurizer embeds."""
    recorded = ((info or {}).get("metadata") or {}).get("elements")
    if recorded:
        return checked_elements(recorded, "checkpoint metadata")
    return list(range(1, min(int(model.featurizer.num_elements), NUM_ELEMENTS)))  # Featurizer contract: Z < num_elements


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an export target that is not a directory, or one that holds anything, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise CdpError(f"{out}: exists and is not a directory")
    if out.is_dir() and not force:
        try:
            first = next(iter(sorted(p.name for p in out.iterdir())), None)
        except OSError as exc:
            raise CdpError(f"{out}: cannot list the directory ({exc.strerror})") from None
        if first is not None:
            raise CdpError(f"{out}: directory is not empty (holds '{first}'); choose an empty one or use --force")


def export_model(
    model,
    out_dir,
    fmt: str = "onnx",
    info: Optional[dict] = None,
    source: Optional[str] = None,
    opset: int = 20,
    log: Callable[[str], None] = lambda s: None,
    force: bool = False,
    ops: str = "standard",
    jobs: int = 1,
) -> dict:
    """Write the encoder/decoder of ``model`` in ``fmt`` (onnx, torchscript, pt2) to ``out_dir``; returns the metadata.

    ``ops``: ``"standard"`` (ONNX's / PyTorch's own operators only) or ``"cdp"`` (ONNX and TorchScript; pt2 is
    refused: the backbone's capture form may call its plugin's operators — ChargE3Net's probe convolutions
    as the fused kernel.  ONNX: the export directory then also holds that onnxruntime operator library for
    C++ deployments; TorchScript: the files call ``torch.ops.cdp.*`` and load only where cdp registers
    them, see the README).

    ``out_dir`` must be missing or empty: a directory holding any file (even one this format would not
    write) is refused untouched with a CdpError unless ``force``, which overwrites the files it writes.
    Runs with one intra-op thread (:func:`cdp.export.context.intra_op_threads`); ``jobs`` = 2 exports the
    ONNX encoder in a forked second process while the decoder is exported here (Linux; the same files).
    """
    with intra_op_threads(1) as threads:
        return _export_model(model, out_dir, fmt, info, source, opset, log, force, threads, jobs, ops)


def _export_model(model, out_dir, fmt: str, info: Optional[dict], source: Optional[str], opset: int,
                  log: Callable[[str], None], force: bool, threads: int, jobs: int, ops: str = "standard") -> dict:
    if fmt not in EXPORTERS:
        raise CdpError(f"unknown export format '{fmt}' (one of {', '.join(EXPORTERS)})")
    if ops not in ("standard", "cdp"):
        raise CdpError(f"unknown export operators '{ops}' (standard or cdp)")
    if ops == "cdp" and fmt == "pt2":
        raise CdpError("--ops cdp applies to ONNX and TorchScript exports only (AOTInductor cannot compile cdp's "
                       "operators into a pt2 package)")
    dtype = model.dtype
    if dtype not in DTYPE_NAMES:
        raise CdpError(f"cannot export a model in {dtype} (float32 or float64)")
    out = Path(out_dir)
    check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    enc, dec = split_model(model, ops)
    elements = model_elements(model, info)
    cutoff = float(model.cutoff)
    s = EXAMPLE_SIZES
    with torch.no_grad():
        enc_args = encoder_example(elements, cutoff, dtype, s["N"], s["E"])
        try:
            layers = enc(*enc_args)
        except Exception as exc:
            raise blame(exc, model, "encoder") from None
        dec_args = decoder_example(layers, cutoff, s["M"], s["Ep"])
        try:
            dec(*dec_args)
        except Exception as exc:
            raise blame(exc, model, "decoder") from None
    prior = getattr(model, "prior", None)
    num_net = len(layers) - (1 if prior is not None else 0)
    names = atom_output_names(num_net, prior is not None)
    dname = DTYPE_NAMES[dtype]
    widths = [int(t.shape[1]) for t in layers]
    spin = bool(model.spin)
    meta = {
        "format": md.FORMAT,
        "format_version": md.FORMAT_VERSION,
        "artifact": fmt,
        "cdp_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(source), "sha256": file_sha256(source)} if source and Path(source).is_file() else {"path": source, "sha256": None},
        "cutoff": cutoff,
        "elements": elements,
        "dtype": dname,
        "spin": spin,
        "num_layers": num_net,
        "prior": None if prior is None else {"kind": "atomic", "input": names[-1], "n_basis": int(prior.n_basis),
                                              "cutoff": float(prior.cutoff), "elements": prior.elements(),
                                              "note": "the decoder adds the prior: its density output is the total"},
        "model_config": getattr(model, "config", {}),
        "components": component_provenance(model),  # the package and version that built each component
        "probe_memory": probe_memory_record(model),
        "edge_convention": "edge_index [2,E] int64 = [sender, receiver]; edge_vec = r_receiver - (r_sender + n @ cell); probe edges are [atom, probe]; distance <= cutoff",
        "encoder": {
            "file": f"encoder.{md.ARTIFACTS[fmt]}",
            "inputs": [md.io_entry("numbers", "int64", ["N"]), md.io_entry("edge_index", "int64", [2, "E"]), md.io_entry("edge_vec", dname, ["E", 3])],
            "outputs": [md.io_entry(n, dname, ["N", w]) for n, w in zip(names, widths)],
        },
        "decoder": {
            "file": f"decoder.{md.ARTIFACTS[fmt]}",
            "inputs": [md.io_entry(n, dname, ["N", w]) for n, w in zip(names, widths)]
            + [md.io_entry("probe_edge_index", "int64", [2, "Ep"]), md.io_entry("probe_edge_vec", dname, ["Ep", 3]), md.io_entry("probe_slots", dname, ["M"])],
            "outputs": [md.io_entry("density", dname, ["M", 2] if spin else ["M"])],
        },
    }
    assert tuple(i["name"] for i in meta["encoder"]["inputs"]) == ENCODER_INPUTS
    assert tuple(i["name"] for i in meta["decoder"]["inputs"])[len(names):] == DECODER_EDGE_INPUTS
    meta[fmt] = EXPORTERS[fmt](ExportJob(model, enc, dec, enc_args, dec_args, names, out, meta, opset, log, threads, int(jobs)))
    for role in ("encoder", "decoder"):
        meta[role]["sha256"] = file_sha256(out / meta[role]["file"])
    md.write_metadata(out, meta)
    return meta
