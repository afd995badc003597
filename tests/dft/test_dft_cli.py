"""`cdp scf`: the JSON report's fields, exit codes, and one-line refusals before any work."""

from __future__ import annotations

import json

import pytest
from ase.build import molecule
from ase.io import write as ase_write

pytest.importorskip("pyscf")

from cdp.cli.main import main  # noqa: E402
from cdp.dft.runs import GUESSES, check_guesses  # noqa: E402

RUN_FIELDS = {"guess", "iterations", "converged", "energy_hartree", "scf_seconds", "guess_seconds"}


@pytest.fixture
def water(tmp_path):
    path = tmp_path / "h2o.xyz"
    ase_write(path, molecule("H2O"))
    return path


def test_json_report_has_the_documented_fields(tmp_path, water, capsys):
    out = tmp_path / "scf.json"
    assert main(["scf", str(water), "--model", "demo", "--guess", "cdp,minao,huckel", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert {"structure", "model", "recipe", "inference_seconds", "runs", "energies_agree"} <= set(rep)
    assert rep["structure"] == "h2o" and rep["model"] == "demo" and rep["energies_agree"] is True
    assert rep["recipe"]["basis"] == "gth-dzvp" and rep["recipe"]["conv_tol"] == 1e-9
    assert rep["inference_seconds"] > 0
    assert [r["guess"] for r in rep["runs"]] == ["cdp", "minao", "huckel"]
    for r in rep["runs"]:
        assert RUN_FIELDS <= set(r)
        assert r["converged"] is True and isinstance(r["iterations"], int) and r["iterations"] >= 1
        assert abs(r["energy_hartree"] - rep["runs"][0]["energy_hartree"]) <= 1e-6
    d = rep["density"]
    assert d["electrons"] == 8.0 and d["rescaled"] is True and d["gradient"] == "autograd"
    assert abs(d["electrons_dm0"] - 8.0) < 1e-8 and 6.0 < d["electrons_predicted"] < 10.0
    assert "rescaled to N" in capsys.readouterr().out


def test_pyscf_guesses_without_a_model_and_charged_molecules(tmp_path, capsys):
    path = tmp_path / "oh.xyz"
    ase_write(path, molecule("OH"))
    out = tmp_path / "oh.json"
    assert main(["scf", str(path), "--guess", "minao,1e", "--charge", "-1", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["charge"] == -1 and rep["model"] is None and rep["inference_seconds"] is None
    assert [r["guess"] for r in rep["runs"]] == ["minao", "1e"] and rep["energies_agree"]


def test_unconverged_run_is_one_line_and_non_zero(water, monkeypatch, capsys):
    from cdp.data import molecules

    monkeypatch.setitem(molecules.RECIPE, "max_cycle", 2)
    assert main(["scf", str(water), "--guess", "minao"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: h2o: the SCF from minao did not converge in 2 cycles"


def _refusal(args, capsys):
    rc = main(["scf", *args])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_refusals_are_one_line(tmp_path, water, capsys):
    periodic = molecule("CH4")
    periodic.center(vacuum=3.0)
    periodic.pbc = True
    ase_write(tmp_path / "ch4.traj", periodic)
    err = _refusal([str(tmp_path / "ch4.traj"), "--model", "demo"], capsys)
    assert "periodic structure" in err
    ase_write(tmp_path / "oh.xyz", molecule("OH"))
    err = _refusal([str(tmp_path / "oh.xyz"), "--model", "demo"], capsys)
    assert "7 valence electrons at charge 0 is an open shell" in err
    assert "guess 'vsap' is refused" in _refusal([str(water), "--model", "demo", "--guess", "cdp,vsap"], capsys)
    assert "unknown guess 'sto'" in _refusal([str(water), "--guess", "sto"], capsys)
    assert _refusal([str(water), "--guess", "cdp"], capsys) == "error: guess 'cdp' needs --model"
    assert "no such structure file" in _refusal([str(tmp_path / "nope.xyz"), "--guess", "minao"], capsys)
    out = tmp_path / "missing" / "x.json"
    assert "output directory does not exist" in _refusal([str(water), "--guess", "minao", "--json", str(out)], capsys)


def test_every_offered_pyscf_guess_builds_with_gth():
    """Each PySCF guess the command offers builds a density matrix under the GTH recipe (vsap does not)."""
    import numpy as np
    from pyscf import dft

    from cdp.dft import recipe_mol

    mol = recipe_mol(molecule("H2O"))
    mf = dft.RKS(mol, xc="pbe")
    for g in check_guesses(GUESSES[1:]):
        dm = mf.get_init_guess(mol, key=g)
        assert dm.shape == (mol.nao, mol.nao) and np.all(np.isfinite(dm))
    with pytest.raises(AssertionError):
        mf.get_init_guess(mol, key="vsap")
