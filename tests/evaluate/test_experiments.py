"""cdp experiment: the L-sweep and the scaling study on tiny budgets; the power-law fit on known exponents."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cdp.core.types import CdpError
from cdp.evaluate.experiments import lsweep, parse_lmax
from cdp.evaluate.scaling import fit_exponent, read_structure, scaling_study, supercell_sizes
from tests.helpers.train import make_dataset

QUIET = dict(echo=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    make_dataset(d, shape=(8, 8, 8))
    (d / "split.json").write_text(json.dumps({"train": ["h2o", "ch4"], "validation": ["nh3"], "test": ["co", "h2"]}))
    return str(d)


@pytest.fixture(scope="module")
def sweep(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ls") / "sweep"
    result = lsweep(lmax=[0, 1], data=tiny_data, steps=2, out=out, threads=1, isolate=False, **QUIET)
    return out, result


def _irreps_counts(text: str) -> dict:
    return {(int(l), p): int(m) for m, l, p in re.findall(r"(\d+)x(\d+)([eo])", text)}


def test_lsweep_files_and_numbers(sweep, tiny_data):
    out, result = sweep
    for f in ("lsweep.json", "lsweep.md", "lsweep.png", "models/L0.ckpt", "models/L1.ckpt", "logs/L1.jsonl"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "lsweep.json").read_text())
    rows = saved["rows"]
    assert [r["lmax"] for r in rows] == [0, 1] and not saved["errors"]
    md = (out / "lsweep.md").read_text()
    for r in rows:
        assert r["steps"] == 2 and r["mul"] == saved["mul"] == 48
        per = [s["eps_mae"] for s in r["structures"]]
        assert [s["name"] for s in r["structures"]] == ["co", "h2"]
        assert r["eps_mae"]["mean"] == pytest.approx(np.mean(per))
        assert r["eps_mae"]["stderr"] == pytest.approx(np.std(per, ddof=1) / np.sqrt(len(per)))
        assert f"{r['eps_mae']['mean']:.3f} ± {r['eps_mae']['stderr']:.3f}" in md
        assert f"{r['parameters']:,}" in md
        assert r["inference_probes_per_s"] > 0 and r["train_seconds"] > 0
        # the channel budget is split as round(mul / (L+1) / (2l+1)) per (l, parity): equal representation size
        counts = _irreps_counts(r["hidden_irreps"])
        L = r["lmax"]
        assert counts == {(l, p): round(48 / (L + 1) / (2 * l + 1)) for l in range(L + 1) for p in "eo"}
    assert rows[0]["hidden_dim"] == rows[1]["hidden_dim"] == 96
    assert rows[0]["parameters"] != rows[1]["parameters"]


def test_lsweep_checkpoint_is_the_evaluated_model(sweep, tiny_data):
    from cdp.evaluate.evaluate import evaluate
    from cdp.predict import load_model

    out, result = sweep
    row = result["rows"][1]
    pred = load_model(out / "models" / "L1.ckpt")
    assert pred.model.backbone.lmax == 1 and pred.model.num_parameters() == row["parameters"]
    again = evaluate(pred, data=tiny_data, progress=False)
    assert again["eps_mae"]["mean"] == pytest.approx(row["eps_mae"]["mean"], rel=1e-6)


def test_lsweep_refuses_existing_results_and_bad_input(sweep, tiny_data):
    out, _ = sweep
    with pytest.raises(CdpError, match="already holds lsweep.json"):
        lsweep(lmax=[0], data=tiny_data, steps=1, out=out, isolate=False, **QUIET)
    with pytest.raises(CdpError, match="not a ChargE3Net"):
        lsweep(lmax=[0], preset="equideepdft-cpu", steps=1, out=out / "x", isolate=False, **QUIET)
    with pytest.raises(CdpError, match="either --steps or --time-budget"):
        lsweep(lmax=[0], steps=1, time_budget=1.0, out=out / "x", isolate=False, **QUIET)
    assert parse_lmax("0-2,4") == [0, 1, 2, 4]
    with pytest.raises(CdpError, match="--lmax"):
        parse_lmax("a")


def test_fit_exponent_recovers_known_power_laws():
    n = np.array([8, 64, 216, 512, 1000], dtype=float)
    for alpha, c in ((1.0, 0.02), (1.7, 3.0), (3.0, 1e-6)):
        a, pref = fit_exponent(n, c * n**alpha)
        assert a == pytest.approx(alpha, abs=1e-10) and pref == pytest.approx(c, rel=1e-9)
    # symmetric multiplicative noise in log space: the least-squares slope is close to the true one
    rng = np.random.default_rng(0)
    n = np.geomspace(8, 8000, 40)
    t = 0.5 * n**1.3 * np.exp(rng.normal(0, 0.05, n.size))
    a, _ = fit_exponent(n, t)
    assert a == pytest.approx(1.3, abs=0.03)
    assert a == pytest.approx(np.polyfit(np.log(n), np.log(t), 1)[0])
    with pytest.raises(ValueError):
        fit_exponent([8, 8], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_exponent([8, 64], [1.0, 0.0])


def test_supercell_sizes():
    assert supercell_sizes(8, 512) == [1, 2, 3, 4]
    assert supercell_sizes(8, 511) == [1, 2, 3]
    assert supercell_sizes(8, 4) == [1]


def test_scaling_study_files_and_numbers(tmp_path):
    out = tmp_path / "scaling"
    result = scaling_study(max_atoms=64, probes_per_atom=3, threads=1, out=out, isolate=False, probe_batch=100)
    for f in ("scaling.json", "scaling.md", "scaling.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "scaling.json").read_text())
    rows = saved["rows"]
    assert [r["atoms"] for r in rows] == [8, 64] and [r["rep"] for r in rows] == [1, 2]
    for r in rows:
        assert r["probes"] == 3 * r["atoms"]
        assert r["total_s"] == pytest.approx(r["graph_s"] + r["encode_s"] + r["decode_s"])
        assert r["graph_s"] == pytest.approx(r["atom_graph_s"] + r["probe_graph_s"])
        assert r["peak_rss_mb"] > 0
    # a periodic supercell has the same neighbours per atom as its unit cell
    assert rows[1]["atom_edges"] == 8 * rows[0]["atom_edges"] > 0
    alpha = saved["fit"]["total"]["exponent"]
    assert np.isfinite(alpha)
    assert alpha == pytest.approx(fit_exponent([8, 64], [r["total_s"] for r in rows])[0])
    assert f"{alpha:.2f}" in (out / "scaling.md").read_text()
    assert result["fit"]["total"]["exponent"] == pytest.approx(alpha)


def test_scaling_bad_input(tmp_path):
    from ase import Atoms

    mol = tmp_path / "mol.xyz"
    Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]).write(str(mol))
    with pytest.raises(CdpError, match="3D periodic"):
        read_structure(mol)
    with pytest.raises(CdpError, match="no such structure file"):
        read_structure(tmp_path / "missing.vasp")
    with pytest.raises(CdpError, match="neither a checkpoint file nor a preset"):
        scaling_study(model="nope", max_atoms=8, isolate=False)


@pytest.mark.slow
def test_cli_runs_both_experiments_in_spawned_processes(tiny_data, tmp_path):
    from cdp.cli.main import main

    assert main(["experiment", "lsweep", "--lmax", "0,1", "--steps", "2", "--data", tiny_data,
                 "--out", str(tmp_path / "ls"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "ls" / "lsweep.json").read_text())["isolated"] is True
    assert main(["experiment", "scaling", "--max-atoms", "64", "--probes-per-atom", "2",
                 "--out", str(tmp_path / "sc")]) == 0
    saved = json.loads((tmp_path / "sc" / "scaling.json").read_text())
    assert [r["atoms"] for r in saved["rows"]] == [8, 64] and np.isfinite(saved["fit"]["total"]["exponent"])
    assert main(["experiment", "scaling", "--max-atoms", "8", "--out", str(tmp_path / "sc")]) == 2  # refused
