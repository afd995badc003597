"""SIGTERM behaves as Ctrl-C; a full disk gives one line naming the path, no temp file, a resumable run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cdp.core.checkpoint import read_checkpoint
from cdp.core.types import CdpError
from cdp.train import train

from tests.helpers.paths import FIXTURES as REF
from tests.helpers.train import make_dataset, tiny_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("data"))


def temp_files(root: Path):
    return [p for p in Path(root).rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_after(n_ok, real):
    """A writer that works ``n_ok`` times, then writes half a file and fails with ENOSPC."""
    calls = {"n": 0}

    def write(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            Path(path).write_bytes(b"PK\x03\x04partial")
            _enospc()
        return real(obj, path, *a, **k)

    return write


@pytest.mark.slow
def test_sigterm_keeps_checkpoint_no_temp_file_and_resumes(dataset, tmp_path):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(dataset, steps=10**6, validate_every=5, log_every=5)))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cdp.cli.main", "train", str(cfg), "--run", str(run)],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and '"step": 10,' not in ((run / "log.jsonl").read_text() if (run / "log.jsonl").exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 143  # 128 + SIGTERM
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"resume with: cdp train --resume {run}" in lines[0], err
    assert temp_files(run) == []
    step = read_checkpoint(run / "last.ckpt")["train_state"]["step"]
    assert step >= 5 and step % 5 == 0 and f"holds step {step};" in lines[0]
    train(tiny_config(dataset, steps=step + 2, validate_every=5, log_every=5), resume=run)
    assert read_checkpoint(run / "last.ckpt")["train_state"]["step"] == step + 2


def test_full_disk_during_training_is_one_line_and_resumable(dataset, tmp_path, monkeypatch):
    import torch

    import cdp.core.checkpoint as ckpt

    full = tmp_path / "full"
    train(tiny_config(dataset), run_dir=full)
    run = tmp_path / "run"
    # saves: last@0, best@3, last@3, then the disk is full at the best/last of step 6
    monkeypatch.setattr(ckpt.torch, "save", _full_disk_after(3, torch.save))
    with pytest.raises(CdpError) as info:
        train(tiny_config(dataset), run_dir=run)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{run / 'best.ckpt'}: No space left on device at step 6;")
    assert f"{run / 'last.ckpt'} holds step 3; free space, then resume with: cdp train --resume {run}" in msg
    assert temp_files(run) == []
    assert read_checkpoint(run / "last.ckpt")["train_state"]["step"] == 3
    monkeypatch.undo()
    train(None, resume=run)
    a, b = read_checkpoint(run / "last.ckpt")["state_dict"], read_checkpoint(full / "last.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_during_import_and_export(fixtures_dir, tmp_path, monkeypatch, capsys):
    import torch

    import cdp.core.checkpoint as ckpt
    from cdp.cli.main import main

    out = tmp_path / "m.ckpt"
    monkeypatch.setattr(ckpt.torch, "save", _full_disk_after(0, torch.save))
    assert main(["import", "deepdft", str(REF / "deepdft_schnet_small"), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out}: No space left on device\n"
    assert not out.exists() and temp_files(tmp_path) == []
    monkeypatch.undo()

    monkeypatch.setattr(torch.jit, "save", _full_disk_after(0, torch.jit.save))
    exp = tmp_path / "exp"
    assert main(["export", "invdeepdft-cpu", "--format", "torchscript", "-o", str(exp)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {exp / 'encoder.pt'}: No space left on device"
    assert temp_files(tmp_path) == [] and not (exp / "encoder.pt").exists()


def test_full_disk_during_predict(tmp_path, monkeypatch, capsys):
    from cdp.cli.main import main
    from cdp.io import stream

    xyz = tmp_path / "h2.xyz"
    xyz.write_text("2\n\nH 0 0 0\nH 0.74 0 0\n")
    real = stream._Sink.write
    calls = {"n": 0}

    def write(self, data):
        calls["n"] += 1
        if calls["n"] > 1:  # the header goes through, the values do not
            _enospc()
        return real(self, data)

    monkeypatch.setattr(stream._Sink, "write", write)
    out = tmp_path / "rho.cube"
    assert main(["predict", str(xyz), "--model", "demo", "-o", str(out), "--spacing", "0.5"]) == 2
    assert capsys.readouterr().err == f"error: {out}: No space left on device\n"
    assert not out.exists() and temp_files(tmp_path) == []


def test_grid_larger_than_free_space_is_refused(tmp_path, monkeypatch):
    import shutil

    from ase import Atoms

    from cdp.core.types import DensityGrid
    from cdp.io.stream import grid_bytes, stream_grid

    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], cell=np.eye(3) * 4.0, pbc=True)
    frame = DensityGrid(cell=atoms.cell.array, values=np.zeros((100, 100, 100)), pbc=atoms.pbc)
    assert grid_bytes("chgcar", 10**6) == 18 * 10**6
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    produced = []

    def chunks(order):
        produced.append(order)
        yield 0, np.zeros(10**6)

    with pytest.raises(CdpError, match=r"rho\.CHGCAR: the grid \(uncompressed\) needs about 17.2 MiB but only 977 KiB is free on "):
        stream_grid(tmp_path / "rho.CHGCAR", "chgcar", atoms, frame, chunks)
    assert produced == [] and list(tmp_path.iterdir()) == []


def test_atomic_write_names_the_target_not_the_temp_file(tmp_path):
    from cdp.core.atomic import atomic_write

    target = tmp_path / "out.bin"

    def write(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    with pytest.raises(OSError) as info:
        atomic_write(target, write)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)

    def other(tmp):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/elsewhere/input")

    with pytest.raises(OSError) as info:
        atomic_write(target, other)
    assert info.value.filename == "/elsewhere/input"  # an error about another file keeps its name
    assert list(tmp_path.iterdir()) == []
