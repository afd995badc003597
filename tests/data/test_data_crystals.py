"""GPAW crystal densities (optional extra): install hint when missing, Si primitive cell at low cutoff when present."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cdp.cli.data import command
from cdp.core.types import CdpError

HAS_GPAW = importlib.util.find_spec("gpaw") is not None


@pytest.mark.skipif(HAS_GPAW, reason="GPAW installed: the missing-GPAW message cannot be shown")
def test_missing_gpaw_explains_how_to_install(tmp_path):
    res = CliRunner().invoke(command, ["make", "crystals", "--builtin", "-o", str(tmp_path / "out")])
    assert res.exit_code != 0 and isinstance(res.exception, CdpError)  # `cdp` prints it as one error line
    msg = str(res.exception)
    assert "libxc-dev libopenblas-dev" in msg and 'CC=g++ LDSHARED="g++ -shared" pip install gpaw' in msg


def test_builtin_crystals_are_periodic_and_named():
    from cdp.data.crystals import builtin_crystals

    items = builtin_crystals()
    names = [n for n, _ in items]
    assert len(names) == len(set(names)) and "Si_diamond" in names
    for _, atoms in items:
        assert atoms.pbc.all() and abs(atoms.cell.volume) > 1.0


@pytest.mark.skipif(not HAS_GPAW, reason="GPAW not installed (optional; see cdp.data.crystals.GPAW_INSTALL)")
def test_gpaw_silicon_low_cutoff(tmp_path):
    import ase.io
    from ase.build import bulk

    src = tmp_path / "si.traj"
    ase.io.write(src, bulk("Si", "diamond", a=5.43))
    out = tmp_path / "out"
    res = CliRunner().invoke(command, ["make", "crystals", "--from", str(src), "--cutoff", "250", "--kpt-density", "2",
                                       "--no-progress", "-o", str(out)])
    assert res.exit_code == 0, res.output
    import cdp.io

    entry = json.loads((out / "manifest.json").read_text())["structures"]["si"]
    atoms, grid = cdp.io.read(out / entry["file"])
    assert entry["electrons_expected"] == 8.0
    assert abs(grid.electrons - 8.0) < 1e-3
    np.testing.assert_allclose(grid.cell, bulk("Si", "diamond", a=5.43).cell.array, atol=1e-8)
