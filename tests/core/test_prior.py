"""Atomic reference densities (cdp.core.prior): the constrained fit, the model paths that add the prior,
export parity, checkpoints with and without a prior, and the fit at the start of training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms

from cdp.core.checkpoint import FORMAT_VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from cdp.core.model import DensityModel
from cdp.core.prior import (AtomicDensityPrior, NormalEquations, check_prior_config, electrons_per_element,
                            fit_coefficients)
from cdp.core.types import Batch, CdpError, edge_vectors
from cdp.export.examples import TINY_CONFIGS
from cdp.predict import Predictor

from tests.helpers.train import make_dataset, tiny_config
from tests.helpers.geometry import _random_rotation

CUTOFF = 3.0


def _tiny(prior: dict = {"kind": "atomic", "n_basis": 6}, seed: int = 0) -> DensityModel:
    torch.manual_seed(seed)
    model = DensityModel.from_config({**TINY_CONFIGS["invdeepdft"], "prior": prior}).double().eval()
    if model.prior is None:
        return model
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for z in (1, 6, 8):  # a prior with elements of different shapes, as a fit would give
            model.prior.coefficients[z] = torch.from_numpy(rng.uniform(0.0, 2.0, model.prior.n_basis))
        model.prior.fitted[[1, 6, 8]] = True
    return model


def _structures(rng, count):
    """Random C/H/O molecules in open boxes and a periodic cell, with probes on and around atoms."""
    out = []
    for i in range(count):
        n = int(rng.integers(2, 6))
        pos = rng.normal(scale=1.0, size=(n, 3)) + 4.0
        atoms = Atoms(numbers=rng.choice([1, 6, 8], n), positions=pos, cell=np.eye(3) * 8.0, pbc=(i % 2 == 1))
        probes = np.concatenate([rng.uniform(0.0, 8.0, size=(400, 3)), pos + rng.normal(scale=0.3, size=(n, 3))])
        out.append((atoms, probes))
    return out


def _edges(model, atoms, probes):
    batch = Batch.from_atoms([atoms])
    p = torch.from_numpy(probes)
    g = model.probe_graph(batch, p)
    vec = edge_vectors(batch.positions, p, g.edge_index, g.offsets, batch.cell, batch.atom_batch)
    return batch, g, vec


# -- the fit ----------------------------------------------------------------------------------------
def test_fit_recovers_profiles_in_the_basis_and_meets_the_integral():
    truth = _tiny()
    rng = np.random.default_rng(1)
    integrals = truth.prior.basis_integrals()
    eqs = NormalEquations(AtomicDensityPrior(6, CUTOFF, 0.1, 1.6))
    for atoms, probes in _structures(rng, 8):
        batch, g, vec = _edges(truth, atoms, probes)
        with torch.no_grad():
            rho = truth.prior(batch.numbers, g.edge_index, vec, len(probes)).numpy()
        eqs.add(atoms.numbers, g.edge_index.numpy(), (vec * vec).sum(-1).numpy(), rho)
    n_z = {z: float(truth.prior.coefficients[z].numpy() @ integrals) for z in (1, 6, 8)}
    fit = fit_coefficients(eqs, n_z)
    r = np.linspace(0.0, CUTOFF, 61)
    for z in (1, 6, 8):
        got = (eqs.prior.basis(torch.from_numpy(r**2)).numpy() * fit.coefficients[z]).sum(-1)
        want = truth.prior.radial(z, r)
        assert np.abs(got - want).max() < 1e-3 * np.abs(want).max(), z
        assert abs(fit.coefficients[z] @ integrals - n_z[z]) < 1e-6
    assert fit.constraint_error < 1e-6 and fit.relative_l2 < 1e-4
    assert set(fit.electrons) == {1, 6, 8} and fit.structures == 8


def test_fit_of_a_profile_outside_the_basis_keeps_the_electron_count():
    """Normalised Gaussians (σ 0.35 Å, Z/2 electrons) are not in the basis: the fit is close and ∫ρ⁰_Z = n_Z."""
    prior = AtomicDensityPrior(10, 4.0, 0.1, 1.6)
    rng = np.random.default_rng(2)
    model = DensityModel.from_config({**TINY_CONFIGS["invdeepdft"], "backbone": {**TINY_CONFIGS["invdeepdft"]["backbone"], "cutoff": 4.0}})
    eqs = NormalEquations(prior)
    sigma = 0.35

    def rho_atom(z, r2):
        return 0.5 * z * np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2) ** 1.5

    for atoms, probes in _structures(rng, 6):
        batch, g, vec = _edges(model, atoms, probes)
        r2 = (vec * vec).sum(-1).numpy()
        rho = np.zeros(len(probes))
        np.add.at(rho, g.edge_index[1].numpy(), rho_atom(atoms.numbers[g.edge_index[0].numpy()], r2))
        eqs.add(atoms.numbers, g.edge_index.numpy(), r2, rho)
    fit = fit_coefficients(eqs, {1: 0.5, 6: 3.0, 8: 4.0})
    integrals = prior.basis_integrals()
    for z, n in ((1, 0.5), (6, 3.0), (8, 4.0)):
        assert abs(fit.coefficients[z] @ integrals - n) < 1e-6
        r = np.linspace(0.0, 2.0, 41)
        got = (prior.basis(torch.from_numpy(r**2)).numpy() * fit.coefficients[z]).sum(-1)
        assert np.abs(got - rho_atom(z, r**2)).max() < 0.02 * rho_atom(z, 0.0)
    assert fit.relative_l2 < 0.02


def test_basis_integrals_match_a_fine_radial_sum():
    prior = AtomicDensityPrior(5, 4.0, 0.05, 2.0)
    r = np.linspace(0.0, 4.0, 400001)
    phi = prior.basis(torch.from_numpy(r**2)).numpy()
    ref = np.trapezoid(4 * np.pi * r[:, None] ** 2 * phi, r, axis=0)
    np.testing.assert_allclose(prior.basis_integrals(), ref, rtol=1e-8)


def test_electrons_per_element_from_structure_totals():
    comps = [{1: 2, 8: 1}, {6: 1, 1: 4}, {7: 1, 1: 3}, {6: 2, 1: 2}, {8: 2}]
    n, resid = electrons_per_element(comps, [8.0, 8.0, 8.0, 10.0, 12.0], integer=True)
    assert n == {1: 1.0, 6: 4.0, 7: 5.0, 8: 6.0} and resid < 1e-9
    n, _ = electrons_per_element(comps, [8.02, 7.97, 8.0, 10.01, 12.0])
    assert abs(n[8] - 6.0) < 0.05 and n[8] != 6.0  # grid totals stay unrounded


def test_prior_config_errors():
    assert check_prior_config(None) is None
    assert check_prior_config({"n_basis": 8}) == {"n_basis": 8, "kind": "atomic", "min_width": 0.1, "max_width": 1.6}
    with pytest.raises(CdpError, match=r"model.prior: unknown key 'basis'"):
        check_prior_config({"basis": 8})
    with pytest.raises(CdpError, match=r"model.prior.kind: must be one of atomic"):
        check_prior_config({"kind": "free-atom"})
    with pytest.raises(CdpError, match=r"n_basis: must be an integer in 1..64"):
        check_prior_config({"n_basis": 0})
    with pytest.raises(CdpError, match=r"prior.cutoff 5.0 Å exceeds the model cutoff 3.0 Å"):
        DensityModel.from_config({**TINY_CONFIGS["invdeepdft"], "prior": {"cutoff": 5.0}})


# -- the model paths ----------------------------------------------------------------------------------
def _molecule():
    return Atoms("COHH", positions=[[0, 0, 0], [1.2, 0, 0], [-0.6, 0.9, 0], [-0.6, -0.9, 0.1]], cell=np.eye(3) * 7.0, pbc=False)


def test_prediction_is_network_plus_prior_and_a_zeroed_network_gives_the_superposition():
    model = _tiny()
    atoms = _molecule()
    probes = np.random.default_rng(4).uniform(-2.0, 3.0, size=(50, 3))
    probes[0] = atoms.positions[1]
    total = Predictor(model, probe_batch=7).predict(atoms, probes)
    bare = _tiny(None)  # the same network (same seed), no prior
    network = Predictor(bare, probe_batch=7).predict(atoms, probes)
    # the superposition by hand: each atom's radial profile at its distance (within the cutoff)
    d = np.linalg.norm(probes[:, None, :] - atoms.positions[None], axis=-1)
    hand = sum(np.where(d[:, a] < CUTOFF, model.prior.radial(z, d[:, a]), 0.0) for a, z in enumerate(atoms.numbers))
    np.testing.assert_allclose(total, network + hand, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the readout's last layer (weight and bias) zeroed: the network outputs 0
        model.readout.net[-1].weight.zero_()
        model.readout.net[-1].bias.zero_()
    np.testing.assert_allclose(Predictor(model).predict(atoms, probes), hand, rtol=1e-10, atol=1e-12)
    grid = Predictor(model).predict_grid(atoms, (6, 5, 7))
    assert np.isfinite(grid.values).all() and grid.values.min() >= 0.0


def test_prior_predictions_are_invariant():
    model = _tiny()
    rng = np.random.default_rng(5)
    atoms = _molecule()
    probes = rng.uniform(-2.0, 3.0, size=(40, 3))
    ref = Predictor(model).predict(atoms, probes)
    scale = np.abs(ref).max()
    q = _random_rotation(rng)
    shift = np.array([0.7, -1.3, 2.1])
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + shift
    got = Predictor(model).predict(moved, probes @ q.T + shift)
    assert np.abs(got - ref).max() < 1e-5 * scale
    perm = rng.permutation(len(atoms))
    shuffled = atoms[perm]
    assert np.abs(Predictor(model).predict(shuffled, probes) - ref).max() < 1e-5 * scale
    # periodic: a lattice translation of the probes gives the same density
    cell = np.array([[4.1, 0.0, 0.0], [0.9, 3.8, 0.0], [0.6, -0.7, 4.4]])
    crystal = Atoms(numbers=[6, 8, 1], scaled_positions=rng.uniform(size=(3, 3)), cell=cell, pbc=True)
    pts = rng.uniform(size=(20, 3)) @ cell
    a = Predictor(model).predict(crystal, pts)
    b = Predictor(model).predict(crystal, pts + cell[0] - 2 * cell[2])
    assert np.abs(a - b).max() < 1e-5 * np.abs(a).max()


# -- checkpoints and export -----------------------------------------------------------------------------
def test_checkpoint_with_prior_round_trips(tmp_path):
    model = _tiny()
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model)
    data = read_checkpoint(path)
    assert data["format_version"] == FORMAT_VERSION == 2 and data["config"]["prior"]["n_basis"] == 6
    assert "prior.coefficients" in data["state_dict"]
    loaded, _ = load_checkpoint(path)
    atoms, probes = _molecule(), np.random.default_rng(6).uniform(-1, 2, size=(9, 3))
    np.testing.assert_array_equal(Predictor(loaded).predict(atoms, probes), Predictor(model).predict(atoms, probes))


def test_demo_checkpoint_loads_and_predicts_as_before():
    """demo.ckpt (format 1, no prior): the values the code before priors gave."""
    from ase.build import molecule

    from cdp.predict import load_model

    p = load_model("demo")
    assert p.model.prior is None and "prior" not in p.model.config
    a = molecule("CH3OH")
    a.center(vacuum=3.0)
    pts = np.concatenate([a.positions[:2] + np.array([[0.3, 0.1, -0.2], [0.0, 0.5, 0.4]]), [[0.0, 0.0, 0.0], [3.1, 2.9, 3.3]]])
    want = np.array([1.8846979141235352, 1.7355444431304932, 0.0, 0.09496600925922394])
    # float32 model: positions are shifted into the local frame before the cast, so agree to 1e-6 of max |ρ|
    np.testing.assert_allclose(p.predict(a, pts), want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_onnx_export_parity_with_prior(tmp_path):
    from cdp.export import export_model
    from cdp.export.runtime import load_exported

    from tests.helpers.export import cases

    model = _tiny()
    model = model.float()
    with torch.no_grad():
        for p in model.readout.parameters():
            p.mul_(10.0)
    meta = export_model(model, tmp_path / "onnx", "onnx")
    assert meta["prior"]["input"] == "atom_prior" and meta["num_layers"] == 2
    assert [i["name"] for i in meta["encoder"]["outputs"]][-1] == "atom_prior"
    rt = load_exported(tmp_path / "onnx")
    for label, atoms, probes in cases():
        atoms = atoms.copy()
        atoms.numbers = np.array([(1, 6, 8)[i % 3] for i in range(len(atoms))])
        ref = Predictor(model, probe_batch=4).predict(atoms, probes)
        got = rt.predict(atoms, probes, probe_batch=4)
        rho0 = model.prior_density(Batch.from_atoms([atoms], dtype=torch.float32), torch.from_numpy(probes).float())
        assert float(rho0.abs().max()) > 0.1, label  # the prior contributes to what is compared
        assert np.abs(got - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-6), label


# -- training -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_training_fits_and_logs_the_prior(dataset, tmp_path):
    from cdp.train import train_run

    result = train_run(tiny_config(dataset, steps=3, validate_every=3), run_dir=tmp_path / "run")
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    prior = records[0]["prior"]
    assert records[0]["step"] == 0
    # grid totals of Z-electron Gaussians on a 0.5 Å grid: n_Z ≈ Z
    assert prior["electrons_source"].startswith("grid totals")
    for z, n in prior["electrons"].items():
        assert abs(n - int(z)) < 0.05 * int(z), (z, n)
    assert prior["constraint_error"] < 1e-6 and 0 < prior["relative_l2"] < 1 and prior["val_nmape"] > 0
    assert prior["structures"] == 4 and result.prior == prior and len(result.load_average) == 3
    from cdp.cli.train import prior_line

    line = prior_line(prior)
    assert line.startswith("prior: atomic reference densities, n_Z H ") and "(grid totals" in line
    assert f"prior alone {prior['val_nmape']:.2f} % val NMAPE" in line
    model, data = load_checkpoint(result.last_checkpoint)
    assert model.prior is not None and sorted(model.prior.elements()) == [1, 6, 7, 8]
    val = [r for r in records if "val_nmape" in r and "prior" not in r]
    assert val and val[-1]["step"] == 3


def test_prior_off_and_a_run_from_before_priors_resumes(dataset, tmp_path):
    from cdp.train import train, train_run

    run = tmp_path / "old"
    cfg = tiny_config(dataset, steps=2, validate_every=2)
    cfg["model"]["prior"] = None
    train_run(cfg, run_dir=run)
    model, _ = load_checkpoint(run / "last.ckpt")
    assert model.prior is None
    # a run directory written before priors existed: no 'prior' key in its config
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["prior"] is None
    del saved["model"]["prior"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    del cfg["model"]["prior"]  # the user's config names the preset, which now has a prior
    train(tiny_config(dataset, steps=4, validate_every=2), resume=run)
    model, data = load_checkpoint(run / "last.ckpt")
    assert model.prior is None and data["metadata"]["step"] == 4


def test_a_model_without_prior_is_written_as_format_1(tmp_path):
    save_checkpoint(tmp_path / "bare.ckpt", _tiny(None))
    data = read_checkpoint(tmp_path / "bare.ckpt")
    assert data["format_version"] == 1 and "prior" not in data["config"]
    assert not any(k.startswith("prior.") for k in data["state_dict"])
