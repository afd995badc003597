"""Field cases (shared/field-cases): PAW blocks follow the atoms, atoms on top of each other are refused,
sizes must be finite, bad devices and empty files are one line, --no-pbc makes a molecule."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write as ase_write

from cdp.cli.main import main
from cdp.core.types import CdpError
from cdp.core.validate import check_overlap, closest_pair, validate_atoms
from tests.helpers.paths import SHARED

CASES = SHARED / "field-cases"


@pytest.fixture(scope="module")
def cases():
    if not (CASES / "README.md").is_file():
        pytest.skip(f"field cases not found at {CASES}")
    return CASES


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def _aug_blocks(text):
    """{atom index: values} of the first augmentation section of a CHGCAR text."""
    blocks, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*augmentation occupancies\s+(\d+)\s+(\d+)", line)
        if m:
            if int(m.group(1)) in blocks:
                break  # the magnetisation's section starts again at atom 1
            cur = int(m.group(1))
            blocks[cur] = []
        elif cur is not None and len(blocks[cur]) < 4:
            blocks[cur].extend(float(v) for v in line.split())
    return blocks


# -- 1. PAW augmentation follows the atoms -----------------------------------------------------------------


def test_paw_blocks_follow_the_output_atom_order(cases, tmp_path):
    ref = (cases / "paw-order" / "CHGCAR").read_text()
    n_block, o_block = _aug_blocks(ref)[1], _aug_blocks(ref)[2]  # the reference lists N then O
    out = tmp_path / "out.CHGCAR"
    assert main(["predict", str(cases / "paw-order" / "POSCAR_ON"), "--model", "demo",
                 "--grid-like", str(cases / "paw-order" / "CHGCAR"), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[5].split() == ["O", "N"]
    blocks = _aug_blocks(text)
    assert blocks[1] == o_block and blocks[2] == n_block  # O's occupancies on O (atom 1 of the output)
    # same order as the reference: the blocks stay where they were
    out2 = tmp_path / "same.CHGCAR"
    assert main(["predict", str(cases / "paw-order" / "POSCAR"), "--model", "demo",
                 "--grid-like", str(cases / "paw-order" / "CHGCAR"), "-o", str(out2)]) == 0
    blocks2 = _aug_blocks(out2.read_text())
    assert blocks2[1] == n_block and blocks2[2] == o_block


def test_paw_reorder_moves_spin_blocks_and_moments():
    from cdp.io.augmentation import reorder_augmentation

    text = ("augmentation occupancies   1   2\n  0.1E+01  0.2E+01\naugmentation occupancies   2   3\n"
            "  0.3E+01  0.4E+01\n  0.5E+01\n  0.7E+00  -0.9E+00\n")
    out = reorder_augmentation(text, np.array([1, 0]))
    assert out == ("augmentation occupancies   1   3\n  0.3E+01  0.4E+01\n  0.5E+01\n"
                   "augmentation occupancies   2   2\n  0.1E+01  0.2E+01\n  -0.9E+00  0.7E+00\n")
    assert reorder_augmentation(text, np.array([0, 1])) is text
    with pytest.raises(CdpError, match="2 per-atom blocks for 3 atoms"):
        reorder_augmentation(text, np.array([2, 1, 0]))


def test_paw_unmatched_atom_is_refused(cases, tmp_path, capsys):
    from ase.io import read

    moved = read(cases / "paw-order" / "POSCAR_ON", format="vasp")
    moved.positions[0, 2] += 0.3  # O no longer where the reference has it
    ase_write(tmp_path / "POSCAR", moved, format="vasp")
    out = tmp_path / "out.CHGCAR"
    assert main(["predict", str(tmp_path / "POSCAR"), "--model", "demo",
                 "--grid-like", str(cases / "paw-order" / "CHGCAR"), "-o", str(out)]) == 2
    _one_line_error(capsys, "atom 0 (O) has no O atom of the --grid-like reference within 0.01 Å")
    assert not out.exists()


def test_paw_match_is_periodic():
    from cdp.io.augmentation import match_atoms

    ref = Atoms("NO", positions=[[1.0, 1.0, 0.02], [1.0, 1.0, 1.2]], cell=[2, 3, 4], pbc=True)
    atoms = Atoms("ON", positions=[[1.0, 1.0, 1.2], [1.0, 4.0, 3.99 + 0.03]], cell=[2, 3, 4], pbc=True)
    np.testing.assert_array_equal(match_atoms(atoms, ref), [1, 0])


# -- 3. atoms on top of each other ---------------------------------------------------------------------


def test_duplicated_atom_refused_nothing_written(cases, tmp_path, capsys):
    out = tmp_path / "d.cube"
    assert main(["predict", str(cases / "overlap" / "dup.xyz"), "--model", "demo", "-o", str(out)]) == 2
    _one_line_error(capsys, "atom 0 (O) and atom 1 (H) are 0.000 Å apart")
    assert list(tmp_path.iterdir()) == []


def test_roi_cube_refused_then_molecule_gives_its_electrons(cases, tmp_path, capsys):
    roi = tmp_path / "roi.cube"
    shutil.copy(cases / "cube-roi" / "roi.cube", roi)
    out = tmp_path / "p.cube"
    argv = ["predict", str(roi), "--model", "demo", "--grid-like", str(roi), "-o", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, "atom 0 (O) and a periodic image of atom 1 (H) are 0.243 Å apart",
                    '{"pbc": false}', "--no-pbc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi.cube"]
    # declared a molecule, by --no-pbc or by a sidecar: the same ≈ 0.59 electrons
    assert main(argv + ["--no-pbc"]) == 0
    electrons = float(re.search(r"([\d.]+) electrons", capsys.readouterr().out).group(1))
    assert electrons == pytest.approx(0.588, abs=0.005)
    first = out.read_text()
    assert json.loads((tmp_path / "p.cube.json").read_text())["pbc"] is False
    (tmp_path / "roi.cube.json").write_text('{"pbc": false}\n')
    assert main(argv) == 0
    assert out.read_text() == first


def test_evaluate_refuses_before_the_model_loads(cases, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(cases / "cube-roi" / "roi.cube", data / "roi.cube")
    out = tmp_path / "e.json"
    # a model that does not exist: the structure's refusal comes first, and is the only output
    assert main(["evaluate", "--model", str(tmp_path / "missing.ckpt"), "--data", str(data),
                 "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "periodic image of atom 1 (H) are 0.243 Å apart" in captured.err and "\n" not in captured.err.strip()
    assert not out.exists()
    assert main(["evaluate", "--model", "demo", "--data", str(data), "--no-pbc", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["structures"][0]["electrons_pred"] == pytest.approx(0.588, abs=0.005)


def test_closest_pair_kinds():
    si = bulk("Si", "diamond", a=5.43)
    assert closest_pair(si)[:3] == (0, 1, pytest.approx(5.43 * np.sqrt(3) / 4))
    tiny = bulk("Cu", "fcc", a=0.6)  # one atom: its own image at a/√2
    pair = closest_pair(tiny)
    assert (pair.i, pair.j, pair.image) == (0, 0, True) and pair.distance == pytest.approx(0.6 / np.sqrt(2))
    with pytest.raises(CdpError, match=r"atom 0 \(Cu\) and its own periodic image are 0.424 Å apart"):
        check_overlap(tiny, "cu")
    across = Atoms("H2", positions=[[0, 0, 0], [0.1, 0, 3.9]], cell=[4, 4, 4], pbc=True)
    pair = closest_pair(across)
    assert pair.image and pair.distance == pytest.approx(np.hypot(0.1, 0.1))
    across.pbc = False
    assert not closest_pair(across).image
    check_overlap(across)  # 3.9 Å apart as a molecule


def test_closest_pair_large_cell_is_fast():
    import time

    big = bulk("Cu", "fcc", a=3.6, cubic=True) * (12, 12, 12)  # 6912 atoms
    t0 = time.perf_counter()
    pair = closest_pair(big)
    assert pair.distance == pytest.approx(3.6 / np.sqrt(2))
    assert time.perf_counter() - t0 < 5.0


def test_inspect_reports_closest_pair_and_no_pbc(cases, capsys):
    roi = str(cases / "cube-roi" / "roi.cube")
    assert main(["inspect", roi]) == 0
    text = capsys.readouterr().out
    assert "closest:    atom 0 (O) and a periodic image of atom 1 (H) are 0.243 Å apart" in text
    assert main(["inspect", roi, "--no-pbc", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pbc"] == [False, False, False]
    assert info["closest_pair"]["atoms"] == [0, 1] and info["closest_pair"]["distance"] == pytest.approx(0.957, abs=1e-3)


def test_train_refuses_overlapping_item(cases, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(cases / "cube-roi" / "roi.cube", data / "roi.cube")
    (tmp_path / "t.yaml").write_text(f"model: invdeepdft-cpu\ndataset: {data}\nsteps: 1\n")
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "t.yaml"), "--run", str(run)]) == 2
    _one_line_error(capsys, "roi: atom 0 (O) and a periodic image of atom 1 (H)")
    assert not run.exists()


# -- 5. sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--spacing", "inf"], "--spacing must be a finite positive number of Å, got inf"),
    (["--spacing", "nan"], "--spacing must be a finite positive number of Å, got nan"),
    (["--spacing", "-0.1"], "--spacing must be a finite positive number of Å, got -0.1"),
    (["--spacing", "1e-300"], "grid spacing 1e-300 Å gives inf points over the cell (at most 1e+10)"),
    (["--spacing", "1e-3"], "grid spacing 0.001 Å gives 2.98e+11 points over the cell (at most 1e+10)"),
    (["--max-memory", "1e400"], "--max-memory 1e400: max memory must be a finite positive number of bytes, got inf"),
    (["--max-memory", "nan"], "--max-memory nan: max memory must be a finite positive number of bytes, got nan"),
    (["--max-memory", "1e30"], "--max-memory 1e30: max memory 1e+30 bytes is beyond any machine (at most 2^62)"),
    (["--max-memory", "1k"], "--max-memory: max memory 1.0 KiB is below the"),
])
def test_sizes_refused(cases, tmp_path, capsys, args, needle):
    out = tmp_path / "w.cube"
    assert main(["predict", str(cases / "overlap" / "water.xyz"), "--model", "demo", "-o", str(out), *args]) == 2
    _one_line_error(capsys, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def demo():
    from cdp.predict import load_model

    return load_model("demo")


def test_max_memory_minimum_is_enough(demo):
    from cdp.predict import Predictor

    w = molecule("H2O")
    fixed, per_probe = demo.model.backbone.probe_memory(4, float(len(w)))
    assert Predictor(demo.model, max_memory=fixed + per_probe).batch_for_memory(w) == 1
    assert Predictor(demo.model, max_memory=fixed + 10 * per_probe).batch_for_memory(w) == 10
    with pytest.raises(CdpError, match=f"give at least {fixed + per_probe} bytes"):
        Predictor(demo.model, max_memory=fixed + per_probe - 1).batch_for_memory(w)


def test_api_sizes_refused(demo):
    from cdp.predict import Predictor, grid_frame, grid_shape_for

    with pytest.raises(CdpError, match="finite positive"):
        grid_shape_for(np.eye(3), float("inf"))
    with pytest.raises(CdpError, match="at most 1e"):
        grid_frame(molecule("H2O"), (100000, 100000, 100000), cell=np.eye(3))
    with pytest.raises(CdpError, match="finite positive number of bytes"):
        Predictor(demo.model, max_memory=float("inf"))
    with pytest.raises(CdpError, match="unknown device 'meta'"):
        Predictor(demo.model, device="meta")


# -- 16. devices, empty files, zero cell vectors -----------------------------------------------------------


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:x"])
def test_bad_device_one_line(cases, tmp_path, capsys, device):
    assert main(["predict", str(cases / "overlap" / "water.xyz"), "--model", "demo", "-o",
                 str(tmp_path / "w.cube"), "--device", device]) == 2
    _one_line_error(capsys, f"unknown device '{device}' (cpu, cuda, cuda:N, mps or auto)")


def test_empty_probes_and_checkpoint_one_line(cases, tmp_path, capsys):
    (tmp_path / "e.npy").write_bytes(b"")
    (tmp_path / "e.ckpt").write_bytes(b"")
    water = str(cases / "overlap" / "water.xyz")
    assert main(["predict", water, "--model", "demo", "--probes", str(tmp_path / "e.npy"),
                 "-o", str(tmp_path / "p.npy")]) == 2
    _one_line_error(capsys, "e.npy: the probes file is empty (0 bytes)")
    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY")  # truncated header
    assert main(["predict", water, "--model", "demo", "--probes", str(tmp_path / "t.npy"),
                 "-o", str(tmp_path / "p.npy")]) == 2
    _one_line_error(capsys, "t.npy: cannot read probe points")
    assert main(["predict", water, "--model", str(tmp_path / "e.ckpt"), "-o", str(tmp_path / "p.cube")]) == 2
    _one_line_error(capsys, "e.ckpt: the checkpoint file is empty (0 bytes)")
    assert main(["evaluate", "--model", str(tmp_path / "e.ckpt")]) == 2
    _one_line_error(capsys, "e.ckpt: the checkpoint file is empty (0 bytes)")
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "p.cube").exists()


def test_zero_cell_vector_names_the_axis():
    slab = Atoms("C2", positions=[[0, 0, 0], [1.42, 0, 0]], cell=[[2.46, 0, 0], [-1.23, 2.13, 0], [0, 0, 0]],
                 pbc=[True, True, False])
    with pytest.raises(CdpError, match=r"g: cell vector c \(axis 2\) is zero on a non-periodic axis"):
        validate_atoms(slab, "g")


# -- 18. --no-pbc -------------------------------------------------------------------------------------------


def test_predict_no_pbc_makes_a_molecule(tmp_path):
    from cdp.io import read

    w = molecule("H2O")
    w.cell, w.pbc = np.eye(3) * 4.0, True
    ase_write(tmp_path / "w.traj", w)
    out = tmp_path / "w.cube"
    assert main(["predict", str(tmp_path / "w.traj"), "--model", "demo", "-o", str(out), "--spacing", "0.5",
                 "--no-pbc"]) == 0
    atoms, grid = read(out)
    assert not atoms.pbc.any()
    extent = w.positions.max(0) - w.positions.min(0) + 6.0  # the molecule's box, not the 4 Å cell
    np.testing.assert_allclose(np.diag(grid.cell), extent, atol=1e-5)


def test_stray_eof_is_an_error_not_an_abort(monkeypatch, capsys, tmp_path):
    """click turns an EOFError raised anywhere into Abort ("aborted", 130); cdp reports it as an error."""
    import cdp.cli.predict as cli_predict

    def eof(path):
        raise EOFError("No data left in file")

    monkeypatch.setattr(cli_predict, "read_structure", eof)
    (tmp_path / "w.xyz").write_text("1\n\nH 0 0 0\n")
    assert main(["predict", str(tmp_path / "w.xyz"), "--model", "demo", "-o", str(tmp_path / "w.cube")]) == 2
    assert capsys.readouterr().err.strip() == "error: unexpected end of file (No data left in file)"


def test_grid_like_with_atoms_elsewhere_is_refused(tmp_path, capsys):
    """A molecule predicted into its own box, fed back with its original positions: the grid is not its grid."""
    water = molecule("H2O")
    ase_write(tmp_path / "w.xyz", water)
    assert main(["predict", str(tmp_path / "w.xyz"), "--model", "demo", "-o", str(tmp_path / "w.cube"), "--spacing", "0.4"]) == 0
    capsys.readouterr()
    rc = main(["predict", str(tmp_path / "w.xyz"), "--model", "demo", "--grid-like", str(tmp_path / "w.cube"),
               "-o", str(tmp_path / "again.cube")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "has no O atom of the --grid-like reference within 0.01 Å" in err
    assert not (tmp_path / "again.cube").exists()


def test_xyz_claiming_more_atoms_than_it_can_hold_is_refused(tmp_path, capsys):
    bomb = tmp_path / "bigcount.xyz"
    bomb.write_text("99999999999\nx\nO 0 0 0\n")
    (tmp_path / "empty.xyz").write_text("")
    assert main(["predict", str(bomb), "--model", "demo", "-o", str(tmp_path / "x.cube")]) != 0
    assert "declares 99999999999 atoms but the file has only" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "empty.xyz"), "--model", "demo", "-o", str(tmp_path / "x.cube")]) != 0
    assert "file is empty" in capsys.readouterr().err


def test_spacing_larger_than_the_cell_is_refused():
    from cdp.predict import grid_shape_for

    with pytest.raises(CdpError, match="larger than the cell"):
        grid_shape_for(np.eye(3) * 5.0, 1e300)
    assert grid_shape_for(np.eye(3) * 5.0, 5.0) == (1, 1, 1)
