"""Importing published DeepDFT model directories: key mapping, checkpoint round trip through the CLI and
the predictor, spin heads, and one-line refusals of broken directories (never executing pickled code)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cdp.core.types import CdpError
from cdp.importers.deepdft import import_deepdft

from tests.helpers.paths import FIXTURES as REF

STEMS = ["deepdft_schnet_small", "deepdft_painn_small"]


def _copy(stem, tmp_path):
    dst = tmp_path / stem
    shutil.copytree(REF / stem, dst)
    for f in dst.iterdir():
        os.chmod(f, 0o644)
    os.chmod(dst, 0o755)
    return dst


@pytest.mark.parametrize("stem", STEMS)
def test_mapping_keeps_every_tensor(fixtures_dir, stem):
    raw = torch.load(REF / stem / "best_model.pth", weights_only=True)["model"]
    config, sd = import_deepdft(REF / stem)
    assert len(sd) == len(raw)
    assert all(k.split(".")[0] in ("featurizer", "backbone", "readout") for k in sd)
    assert sorted(float(v.double().sum()) for v in sd.values()) == sorted(float(v.double().sum()) for v in raw.values())
    torch.testing.assert_close(sd["featurizer.embedding.weight"], raw["atom_model.atom_embeddings.weight"], rtol=0, atol=0)
    painn = stem.endswith("painn_small")
    assert config["backbone"]["name"] == ("equideepdft" if painn else "invdeepdft")
    assert config["readout"] == {"name": "mlp", "activation": "silu" if painn else "ssp"}


@pytest.mark.parametrize("stem", STEMS)
def test_cli_checkpoint_predicts_published_density(fixtures_dir, stem, tmp_path):
    """cdp import deepdft → checkpoint → predictor reproduces the published densities (f64 and f32)."""
    from ase import Atoms

    from cdp.cli.import_deepdft import deepdft
    from cdp.predict import load_model

    out = tmp_path / "m.ckpt"
    res = CliRunner().invoke(deepdft, [str(REF / stem), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    meta = json.loads((REF / f"{stem}.json").read_text())
    data = np.load(REF / f"{stem}_cases.npz")
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731  (the published pipeline's inputs)
    # measured through load_model: float64 8.3e-10 (positions wrapped into the cell), float32 2.7e-6
    for dtype, key, tol in (("float64", "density_f64", 1e-8), ("float32", "density_f32", 1e-5)):
        pred = load_model(out, dtype=dtype, probe_batch=23)
        for s in meta["structures"]:
            g = lambda k: data[f"{s}/{k}"]  # noqa: E731
            atoms = Atoms(numbers=g("numbers"), positions=f32(g("positions")), cell=f32(g("cell")), pbc=g("pbc"))
            rho = pred.predict(atoms, f32(g("probes")))
            ref = g(key)
            assert np.abs(rho - ref).max() / np.abs(ref).max() <= tol, (s, key)


def test_spin_head_is_recognised(fixtures_dir, tmp_path):
    d = _copy("deepdft_painn_small", tmp_path)
    ckpt = torch.load(d / "best_model.pth", weights_only=True)
    w = ckpt["model"]["probe_model.readout_function.2.weight"]
    ckpt["model"]["probe_model.readout_function.2.weight"] = torch.cat([w, 0.5 * w])
    ckpt["model"]["probe_model.readout_function.2.bias"] = torch.tensor([0.1, 0.2])
    torch.save(ckpt, d / "best_model.pth")
    config, sd = import_deepdft(d)
    assert config["readout"]["spin"] is True
    from cdp.importers.deepdft import build_components

    _, backbone, readout = build_components(config)
    readout.load_state_dict({k[len("readout."):]: v for k, v in sd.items() if k.startswith("readout.")})
    out = readout(torch.randn(5, backbone.out_spec.dim))
    assert out.shape == (5, 2)


def _edit_args(d, **changes):
    args = json.loads((d / "arguments.json").read_text())
    args.update(changes)
    (d / "arguments.json").write_text(json.dumps(args))


@pytest.mark.parametrize(
    "breakage,fragment",
    [
        ("no_dir", "not a DeepDFT model directory"),
        ("no_args", "arguments.json: missing"),
        ("no_weights", "best_model.pth: missing"),
        ("bad_json", "not readable JSON"),
        ("no_cutoff", "missing key 'cutoff'"),
        ("node_size", "has shape"),
        ("fewer_layers", "unexpected weight"),
        ("more_layers", "missing weight"),
        ("wrong_kind", "unexpected weight"),
        ("not_torch", "best_model.pth"),
    ],
)
def test_broken_directories_are_refused(fixtures_dir, tmp_path, breakage, fragment):
    d = _copy("deepdft_schnet_small", tmp_path)
    if breakage == "no_dir":
        d = tmp_path / "nowhere"
    elif breakage == "no_args":
        (d / "arguments.json").unlink()
    elif breakage == "no_weights":
        (d / "best_model.pth").unlink()
    elif breakage == "bad_json":
        (d / "arguments.json").write_text("{not json")
    elif breakage == "no_cutoff":
        args = json.loads((d / "arguments.json").read_text())
        del args["cutoff"]
        (d / "arguments.json").write_text(json.dumps(args))
    elif breakage == "node_size":
        _edit_args(d, node_size=16)
    elif breakage == "fewer_layers":
        _edit_args(d, num_interactions=2)
    elif breakage == "more_layers":
        _edit_args(d, num_interactions=4)
    elif breakage == "wrong_kind":
        _edit_args(d, use_painn_model=True)
    elif breakage == "not_torch":
        (d / "best_model.pth").write_bytes(b"this is not a torch file")
    with pytest.raises(CdpError) as exc:
        import_deepdft(d)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('CDP_EVIL_MARKER', '/tmp/cdp_evil_marker')}",))


def test_pickled_code_is_never_executed(fixtures_dir, tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    monkeypatch.setenv("CDP_EVIL_MARKER", str(marker))
    d = _copy("deepdft_schnet_small", tmp_path)
    ckpt = torch.load(d / "best_model.pth", weights_only=True)
    ckpt["model"]["atom_model.atom_embeddings.weight"] = _Evil()
    torch.save(ckpt, d / "best_model.pth")
    with pytest.raises(CdpError):
        import_deepdft(d)
    assert not marker.exists()
