"""Dataset layouts: directories with manifests, DeepDFT tars (compressed members, corrupt member), ChargE3Net dirs."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import cdp.io
from cdp.core.types import CdpError, DensityGrid
from cdp.data import load_dataset, load_split
from cdp.data.datasets import Charge3NetDataset, Concat, TarDataset
from cdp.io.compression import compress


def _gaussian_sample(seed: int, shape=(6, 7, 8)):
    """A small periodic structure with a smooth positive density (e/Å³)."""
    rng = np.random.default_rng(seed)
    cell = np.diag([3.0, 3.5, 4.0]) + 0.1 * rng.standard_normal((3, 3)) * np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    atoms = Atoms("HO", scaled_positions=rng.random((2, 3)), cell=cell, pbc=True)
    grid = DensityGrid(cell=cell, values=rng.random(shape) + 0.1)
    return atoms, grid


def _file_bytes(tmp_path, name, atoms, grid) -> bytes:
    path = tmp_path / "scratch" / name
    path.parent.mkdir(exist_ok=True)
    cdp.io.write(path, atoms, grid, sidecar=False)
    return path.read_bytes()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_deepdft_tar_members_and_corrupt_member(tmp_path):
    samples = [_gaussian_sample(i) for i in range(3)]
    names = ["a.CHGCAR.lz4", "b.cube.zz", "c.CHGCAR.gz"]
    tar_path = tmp_path / "set.tar"
    with tarfile.open(tar_path, "w") as tf:
        for n, (at, g) in zip(names, samples):
            _add(tf, n, _file_bytes(tmp_path, n, at, g))
        _add(tf, "broken.CHGCAR.gz", b"\x1f\x8b\x08\x00garbage-not-gzip")
        _add(tf, "README.txt", b"not a density")
    ds = load_dataset(str(tar_path))
    assert isinstance(ds, TarDataset)
    assert ds.names == ["a", "b", "c", "broken"]
    for i, (at, g) in enumerate(samples):
        s = ds[i]
        assert s.name == ["a", "b", "c"][i]
        np.testing.assert_allclose(s.grid.values, g.values, rtol=1e-5)
        np.testing.assert_allclose(s.atoms.positions, at.positions, atol=1e-5)
    with pytest.raises(CdpError, match="broken.CHGCAR.gz"):
        ds[3]
    reports = []
    ds.on_error = reports.append
    got = [s.name for s in ds]
    assert got == ["a", "b", "c"]
    assert len(reports) == 1 and "broken.CHGCAR.gz" in reports[0]

    # a .txt listing tars (paths relative to the list) concatenates them; DeepDFT splits index the result
    (tmp_path / "sub").mkdir()
    tar2 = tmp_path / "sub" / "two.tar"
    with tarfile.open(tar2, "w") as tf:
        at, g = _gaussian_sample(9)
        _add(tf, "d.CHGCAR", _file_bytes(tmp_path, "d.CHGCAR", at, g))
    lst = tmp_path / "sets.txt"
    lst.write_text("set.tar\nsub/two.tar\n")
    cat = load_dataset(str(lst))
    assert isinstance(cat, Concat) and cat.names == ["a", "b", "c", "broken", "d"]
    np.testing.assert_allclose(cat[4].grid.values, g.values, rtol=1e-9)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [0, 4], "validation": [1]}))
    train = cat.split("train", str(split))
    assert train.names == ["a", "d"]
    assert cat.split("test", str(split)).names == []


def test_directory_with_manifest_pbc_and_named_split(tmp_path):
    at, g = _gaussian_sample(1)
    cdp.io.write(tmp_path / "mol1.CHGCAR.gz", at, g, sidecar=False)
    cdp.io.write(tmp_path / "cry.cube", at, g, sidecar=False)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"structures": {"mol1": {"file": "mol1.CHGCAR.gz", "pbc": [False, False, False]}}}))
    (tmp_path / "split.json").write_text(json.dumps({"train": ["cry"], "validation": [], "test": ["mol1"]}))
    ds = load_dataset(str(tmp_path))
    assert sorted(ds.names) == ["cry", "mol1"]
    mol = ds.get("mol1")
    assert not mol.atoms.pbc.any() and not np.asarray(mol.grid.pbc).any()
    assert ds.get("cry").atoms.pbc.all()  # no manifest entry: periodic default
    np.testing.assert_allclose(ds.get("cry").grid.values, g.values, rtol=1e-5)
    assert ds.split("test").names == ["mol1"]
    name, atoms, grid = ds.get("mol1")  # a sample unpacks as (name, atoms, grid)
    assert name == "mol1" and grid.shape == g.shape


def test_split_validation(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["a"], "test": ["a"]}))
    with pytest.raises(CdpError, match="both"):
        load_split(str(bad))
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(CdpError, match="unknown split key"):
        load_split(str(bad))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run > pwned.txt",))


def _charge3net_dir(tmp_path, spin=False):
    d = tmp_path / "c3n"
    d.mkdir()
    items = {}
    for ident in ("mp-1", "mp-2"):
        atoms = bulk("Si", "diamond", a=5.43) if ident == "mp-1" else bulk("NaCl", "rocksalt", a=5.64)
        rng = np.random.default_rng(len(ident) + ord(ident[-1]))
        values = rng.random((5, 6, 7))
        arr = np.stack([values, 0.1 * values], axis=-1) if spin else values
        np.save(d / f"{ident}.npy", arr)
        (d / f"{ident}_atoms.pkl").write_bytes(pickle.dumps(atoms))
        items[ident] = (atoms, values)
    (d / "filelist.txt").write_text("mp-1\nmp-2\n")
    return d, items


def test_charge3net_directory(tmp_path):
    d, items = _charge3net_dir(tmp_path, spin=True)
    ds = load_dataset(str(d))
    assert isinstance(ds, Charge3NetDataset) and ds.names == ["mp-1", "mp-2"]
    for s in ds:
        atoms, values = items[s.name]
        np.testing.assert_array_equal(s.grid.values, values)
        np.testing.assert_array_equal(s.grid.spin, 0.1 * values)
        np.testing.assert_allclose(s.grid.cell, atoms.cell.array)
        assert s.atoms == atoms


def test_charge3net_pickle_that_is_not_atoms_is_refused(tmp_path, monkeypatch):
    d, _ = _charge3net_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    (d / "mp-1_atoms.pkl").write_bytes(pickle.dumps(_Evil()))
    (d / "mp-2_atoms.pkl").write_bytes(pickle.dumps({"numbers": [14, 14]}))
    ds = load_dataset(str(d))
    with pytest.raises(CdpError, match="refused to unpickle"):
        ds[0]
    assert not (tmp_path / "pwned.txt").exists()
    with pytest.raises(CdpError, match="expected ase Atoms"):
        ds[1]
    # a numpy object array is not admitted either (np.load with allow_pickle=False)
    np.save(d / "mp-2.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CdpError, match="mp-2.npy"):
        ds[1]


def test_bad_paths():
    with pytest.raises(CdpError, match="no such dataset"):
        load_dataset("/nonexistent/dir")


def test_compressed_member_names(tmp_path):
    """Members compressed with each codec decompress to the same grid as the plain file."""
    at, g = _gaussian_sample(5)
    plain = _file_bytes(tmp_path, "x.CHGCAR", at, g)
    tar_path = tmp_path / "codecs.tar"
    with tarfile.open(tar_path, "w") as tf:
        for suf, codec in ((".gz", "gzip"), (".lz4", "lz4"), (".zz", "zlib")):
            _add(tf, f"run_{codec}/CHGCAR{suf}", compress(plain, codec))  # VASP run directories
    ds = load_dataset(str(tar_path))
    assert ds.names == ["run_gzip", "run_lz4", "run_zlib"]
    for s in ds:
        np.testing.assert_allclose(s.grid.values, g.values, rtol=1e-9)
