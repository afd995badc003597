"""benchmarks/scf.py: the report's per-guess and per-model summaries, and a missing model skipped by name."""

from __future__ import annotations

import json

import pytest
from ase.build import molecule

pytest.importorskip("pyscf")


def test_benchmark_report_on_one_small_molecule(monkeypatch, capsys):
    from benchmarks import scf

    monkeypatch.setattr(scf, "molecules", lambda n: [(1, molecule("H2O"))])
    scf.main(["--models", "demo,no-such-model", "--molecules", "1", "--guesses", "minao,huckel"])
    out = capsys.readouterr().out
    res = json.loads(out[: out.index("\nSCF from each guess")])
    assert res["molecules"] == [1] and res["baselines"] == ["minao", "huckel"]
    assert "no-such-model" in res["skipped_models"] and "skipped no-such-model" in out
    assert set(res["guesses"]) == {"minao", "huckel"}
    demo = res["models"]["demo"]
    assert demo["all_agree"] is True and demo["gradient"] == "autograd"
    rec = res["records"][0]
    assert 0 < rec["models"]["demo"]["eps_mae"] < 100
    saved = rec["runs"]["minao"]["iterations"] - rec["models"]["demo"]["run"]["iterations"]
    assert demo["iterations_saved_vs_minao"]["mean"] == saved
    assert demo["iterations"]["stderr"] is None  # one molecule: no standard error
