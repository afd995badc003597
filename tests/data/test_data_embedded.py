"""The embedded default dataset: contents, split, size, `cdp data info`, and regeneration with its recorded command."""

from __future__ import annotations

import json
import os
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from cdp.cli.data import command
from cdp.data import embedded_path, load_dataset, load_split

EMB = embedded_path()


def _manifest() -> dict:
    with open(os.path.join(EMB, "manifest.json")) as fh:
        return json.load(fh)


def test_embedded_dataset_contents_and_split():
    ds = load_dataset()  # default: the embedded one
    assert os.path.abspath(ds.source) == os.path.abspath(EMB)
    man = _manifest()
    assert sorted(ds.names) == sorted(man["structures"])
    assert len(ds) >= 30
    split = load_split()
    assert set(split) == {"train", "validation", "test"}
    assert 1 <= len(split["test"]) <= 8 and len(split["validation"]) >= 1
    allnames = split["train"] + split["validation"] + split["test"]
    assert sorted(allnames) == sorted(ds.names)  # disjoint (load_split checks) and complete
    for name in ds.names:
        assert name.startswith("qm9_") and 1 <= int(name[4:]) <= 100_000  # cdp's QM9 range only
    total = sum(os.path.getsize(os.path.join(EMB, f)) for f in os.listdir(EMB))
    assert total < 40e6


def test_embedded_files_match_their_manifest():
    ds = load_dataset()
    man = _manifest()["structures"]
    for s in list(ds)[:6]:
        entry = man[s.name]
        assert not s.atoms.pbc.any() and list(s.grid.shape) == entry["shape"]
        assert abs(s.grid.electrons - entry["electrons_grid"]) < 1e-6 * entry["electrons_expected"]
        assert abs(s.grid.electrons - entry["electrons_expected"]) < 0.02 * entry["electrons_expected"]
        assert s.grid.values.min() >= -1e-12


def test_data_info_cli_describes_embedded():
    res = CliRunner().invoke(command, ["info", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["embedded"] and info["items"] == len(_manifest()["structures"])
    assert set(info["elements"]) <= {"H", "C", "N", "O", "F"} and "C" in info["elements"]
    assert info["split"]["test"] <= 8
    text = CliRunner().invoke(command, ["info"]).output
    assert "cdp data make molecules" in text and "gth-dzvp" in text


def test_regenerate_one_embedded_molecule_with_recorded_command(tmp_path):
    """Rerun the recorded command for the smallest molecule (one thread) and match the shipped file."""
    pytest.importorskip("pyscf")
    man = _manifest()
    entries = man["structures"]
    name = min(entries, key=lambda n: np.prod(entries[n]["shape"]) * len(entries[n]["formula"]))
    recorded = man["generator"]["command"]
    args = shlex.split(recorded)
    assert args[:4] == ["cdp", "data", "make", "molecules"]
    args = args[4:]
    args[args.index("--qm9") + 1] = str(int(name[4:]))
    args[args.index("-o") + 1] = str(tmp_path)
    res = CliRunner().invoke(command, ["make", "molecules", *args, "--workers", "1", "--threads", "1", "--no-progress"])
    if res.exit_code != 0 and "qm9pack" in res.output:
        pytest.skip("qm9pack not installed")
    assert res.exit_code == 0, res.output
    import cdp.io

    _, new = cdp.io.read(tmp_path / entries[name]["file"])
    _, old = cdp.io.read(os.path.join(EMB, entries[name]["file"]))
    assert new.shape == old.shape
    np.testing.assert_allclose(new.cell, old.cell, atol=1e-9)
    scale = np.abs(old.values).max()
    assert np.abs(new.values - old.values).max() <= 1e-5 * scale
