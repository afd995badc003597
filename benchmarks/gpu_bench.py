"""GPU inference: cdp's fast and e3nn backends, the published ChargE3Net and onnxruntime-gpu on one CUDA device.

    python -m benchmarks gpu [--reference DIR] [--probes 1000 100000] [--onnx demo=DIR ...] [--repeat 5] [--json F]

Models: ``paper`` is the published ChargE3Net size (3 layers, mul 500, lmax 4) with seeded random weights, saved
in the published format and imported (the same weights on both sides; without ``--reference`` the registry's
``chargee3net`` preset with seed 0 and no published side); ``demo`` is the shipped demo checkpoint.  Workload:
Si 2×2×2 (64 atoms; benzene in a 12 Å box for ``demo``) and ``--probes`` random probes; the wall seconds of one whole
``predict(atoms, probes)`` call (graph construction included, model loading not), the median of ``--repeat``
calls after one warm-up, with the device synchronised; the peak of ``torch.cuda.max_memory_allocated`` during
the calls.  cdp runs with its default probe batch (2,500) and with ``--large-batch`` probes per batch; the
published code decodes ``--published-batch`` probes per forward pass, as its own inference loop does with
probe chunks.  ONNX: an export directory per model (``--onnx demo=DIR``, standard operators) run by cdp's
runtime with onnxruntime's CUDA execution provider (the run is refused if that provider is not the one used).
Every output is compared with the e3nn backend's on the same device (max |Δρ| / max |ρ|).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _structure(model: str):
    """Si 2×2×2 (64 atoms) for the paper-size model; benzene in a 12 Å box for the demo (H, C, N, O only)."""
    from ase.build import bulk, molecule

    if model == "demo":
        atoms = molecule("C6H6")
        atoms.set_cell([12.0, 12.0, 12.0])
        atoms.center()
        return atoms
    return bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)


def _probes(atoms, m: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (m, 3)) @ np.asarray(atoms.cell.array)


def _timed(fn, repeat: int, device: str) -> dict:
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    fn()  # warm-up: allocator, lazy constants, kernel selection
    sync()
    if time.perf_counter() - t0 > 20.0:  # a slow case is timed once (the device's time is short)
        repeat = 1
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        walls.append(time.perf_counter() - t0)
    rho = np.asarray(out, dtype=np.float64).reshape(-1)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    return {"wall_s": statistics.median(walls), "wall_min_s": min(walls), "repeats": repeat,
            "peak_cuda_mib": peak, "rho": rho}


def _paper_models(reference: str | None, tmp: Path, device: str):
    """(cdp model factory for a backend, published predict factory or None)."""
    import torch

    from benchmarks.chargee3net_bench import PAPER_HP, _model, _published_model, published_batch
    from cdp.core.model import DensityModel

    if reference is None:
        def cdp_model(backend):
            return _model("chargee3net", backend)
        return cdp_model, None
    E3DensityModel, GraphConstructor, collate = _published_model(reference)
    torch.manual_seed(0)
    ckpt = tmp / "published.pt"
    torch.save({"model": E3DensityModel(**PAPER_HP).state_dict()}, ckpt)

    def cdp_model(backend):
        from cdp.importers.charge3net import import_charge3net

        cfg, state = import_charge3net(str(ckpt), dict(PAPER_HP))
        cfg["backbone"]["backend"] = backend
        model = DensityModel.from_config(cfg)
        model.load_state_dict(state)
        return model

    def published(atoms, batch: int):
        model = E3DensityModel(**PAPER_HP)
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
        model = model.to(device).eval()
        dtype = torch.get_default_dtype()

        def predict(probes):  # noqa: E306
            out = []
            for s in range(0, len(probes), batch):
                batch_in = published_batch(GraphConstructor, collate, atoms, probes[s:s + batch], dtype)
                g = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch_in.items()}
                with torch.no_grad():
                    out.append(model(g).cpu().numpy().reshape(-1))
            return np.concatenate(out)
        return predict
    return cdp_model, published


def _demo_model(backend: str):
    """The shipped demo checkpoint rebuilt with ``backend`` (the same weights)."""
    from cdp.cli.export import _load
    from cdp.core.model import DensityModel

    model, _, _ = _load("demo")
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in model.config.items()}
    cfg["backbone"] = dict(cfg["backbone"], backend=backend)
    out = DensityModel.from_config(cfg)
    out.load_state_dict(model.state_dict())
    return out


def run(reference: str | None, probes=(1000, 100000), onnx: dict | None = None, repeat: int = 5,
        large_batch: int = 20000, published_batch: int = 2500, models=("paper", "demo"), device: str = "cuda",
        sides=("e3nn", "fast", "published", "onnx")) -> dict:
    import torch

    from cdp.predict import Predictor

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: this benchmark measures GPU inference")
    res: dict = {"gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else device, "torch": torch.__version__, "cuda": torch.version.cuda,
                 "python": platform.python_version(), "cpus": os.cpu_count(), "repeat": repeat, "runs": []}
    try:
        import onnxruntime as ort

        res["onnxruntime"] = ort.__version__
        res["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        ort = None
    with tempfile.TemporaryDirectory(prefix="cdp-gpu-bench-") as tmp:
        factories = {}
        published = None
        if "paper" in models:
            factories["paper"], published = _paper_models(reference, Path(tmp), device)
        if "demo" in models:
            factories["demo"] = _demo_model
        for m in probes:  # every model at the smaller workload first
            for name, factory in factories.items():
                atoms = _structure(name)
                pts = _probes(atoms, m)
                ref: dict = {}

                def case(side: str, batch: int, make, _m=m, _name=name, _ref=ref):
                    """Time one side; an error (out of memory, a missing provider) is recorded, not raised."""
                    row = {"model": _name, "probes": _m, "side": side, "batch": batch}
                    try:
                        fn = make()
                        row.update(_timed(fn, repeat, device))
                    except Exception as exc:  # noqa: BLE001  (reported in the row)
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    rho = row.pop("rho", None)
                    if rho is not None:
                        _ref.setdefault("rho", rho)  # the first side (e3nn) is the reference
                        scale = float(np.abs(_ref["rho"]).max())
                        row["vs_e3nn_over_max_rho"] = float(np.abs(rho - _ref["rho"]).max() / scale)
                    res["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()

                for backend in [b for b in ("e3nn", "fast") if b in sides]:
                    model = factory(backend).eval()
                    for batch in (2500, large_batch):
                        def make(_b=batch, _model=model):
                            pred = Predictor(_model, device=device, probe_batch=_b)
                            return lambda: pred.predict(atoms, pts)
                        case(f"cdp {backend}", batch, make)
                    del model
                if name == "paper" and published is not None and "published" in sides:
                    case("published", published_batch, lambda: (lambda fn=published(atoms, published_batch): fn(pts)))
                if onnx and name in onnx and ort is not None and "onnx" in sides:
                    from cdp.export.runtime import load_exported

                    for batch in (2500, large_batch):
                        def make_ort(_b=batch):
                            pred = load_exported(onnx[name], device=device, probe_batch=_b)
                            used = sorted({s.get_providers()[0] for s in pred.backend.sessions.values()})
                            want = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
                            if used != [want]:
                                raise RuntimeError(f"sessions run on {used}, not {want}")
                            return lambda: pred.predict(atoms, pts)
                        case("onnxruntime-gpu" if device.startswith("cuda") else "onnxruntime", batch, make_ort)
    return res


def _table(res: dict) -> str:
    lines = [f"{res['gpu']}, torch {res['torch']} (CUDA {res['cuda']}), onnxruntime {res.get('onnxruntime', '-')}",
             f"{'model':6s} {'probes':>7s} {'side':18s} {'batch':>6s} {'wall s':>9s} {'probes/s':>10s} "
             f"{'peak MiB':>9s} {'vs e3nn':>9s}"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"{r['model']:6s} {r['probes']:7d} {r['side']:18s} {r['batch']:6d} error: {r['error']}")
            continue
        lines.append(f"{r['model']:6s} {r['probes']:7d} {r['side']:18s} {r['batch']:6d} {r['wall_s']:9.4f} "
                     f"{r['probes'] / r['wall_s']:10.0f} {r['peak_cuda_mib']:9.0f} {r['vs_e3nn_over_max_rho']:9.1e}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=os.environ.get("CDP_REFERENCE_CODE"),
                    help="the published source tree (default $CDP_REFERENCE_CODE; without it no published side)")
    ap.add_argument("--probes", type=int, nargs="+", default=[1000, 100000])
    ap.add_argument("--onnx", nargs="*", default=[], metavar="MODEL=DIR", help="standard ONNX export of a model")
    ap.add_argument("--models", default="paper,demo")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--large-batch", type=int, default=20000)
    ap.add_argument("--published-batch", type=int, default=2500)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the same cases)")
    ap.add_argument("--sides", default="e3nn,fast,published,onnx")
    ap.add_argument("--device-tp", choices=["blocked", "e3nn"], default=None,
                    help="the fast backend's GPU implementation (tp_scatter.DEVICE_IMPLEMENTATION)")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    onnx = dict(item.split("=", 1) for item in a.onnx)
    if a.device_tp:
        from cdp.plugins.backbones.chargee3net import tp_scatter

        tp_scatter.DEVICE_IMPLEMENTATION = a.device_tp
    res = run(a.reference, a.probes, onnx, a.repeat, a.large_batch, a.published_batch, tuple(a.models.split(",")), a.device,
              tuple(a.sides.split(",")))
    text = json.dumps(res, indent=1)
    if a.json_path:
        Path(a.json_path).write_text(text)
    print(_table(res))


if __name__ == "__main__":
    sys.exit(main())
