"""Loading untrusted files: TorchScript/foreign zips refused unread, YAML alias bombs, absurd model sizes."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import torch

from cdp.core.safe_pickle import check_torch_save_layout, load_torch_file
from cdp.core.types import CdpError

from conftest import FIXTURES as REF


def _scripted_archive(path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def _no_jit(monkeypatch):
    def boom(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("torch.jit.load was reached")

    monkeypatch.setattr(torch.jit, "load", boom)


def test_torchscript_archive_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "scripted.pt"
    _scripted_archive(path)
    _no_jit(monkeypatch)
    with pytest.raises(CdpError, match=r"scripted\.pt: a TorchScript archive \('scripted/code/.*refused unread"):
        load_torch_file(path)


@pytest.mark.parametrize("entry", ["constants.pkl", "bytecode.pkl", "extra/notes.txt"])
def test_foreign_zip_entries_refused(tmp_path, entry):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        root = src.namelist()[0].split("/")[0]
        dst.writestr(f"{root}/{entry}", b"x")
    expected = "TorchScript archive" if entry != "extra/notes.txt" else "unexpected entry"
    with pytest.raises(CdpError, match=expected):
        load_torch_file(bad)
    check_torch_save_layout(good)  # torch.save's own layout passes


def test_two_roots_refused(tmp_path):
    path = tmp_path / "two.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/data.pkl", b"")
        zf.writestr("b/data.pkl", b"")
    with pytest.raises(CdpError, match="entries under 2 top-level folders"):
        load_torch_file(path)


def test_cli_import_refuses_torchscript(tmp_path, monkeypatch):
    from cdp.cli.main import main

    path = tmp_path / "scripted.pt"
    _scripted_archive(path)
    _no_jit(monkeypatch)
    assert main(["import", "charge3net", str(path), "-o", str(tmp_path / "x.ckpt")]) == 2
    dd = tmp_path / "dd"
    dd.mkdir()
    (dd / "arguments.json").write_text(json.dumps({"num_interactions": 1, "node_size": 4, "cutoff": 4.0}))
    _scripted_archive(dd / "best_model.pth")
    assert main(["import", "deepdft", str(dd), "-o", str(tmp_path / "y.ckpt")]) == 2
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "y.ckpt").exists()


def test_cdp_checkpoint_reader_refuses_torchscript(tmp_path, monkeypatch):
    from cdp.core.checkpoint import read_checkpoint

    path = tmp_path / "m.ckpt"
    _scripted_archive(path)
    _no_jit(monkeypatch)
    with pytest.raises(CdpError, match="TorchScript archive"):
        read_checkpoint(path)


def test_published_fixtures_pass_the_layout_check(fixtures_dir):
    for path in (REF / "charge3net_small.pt", REF / "deepdft_painn_small" / "best_model.pth"):
        check_torch_save_layout(path)
        assert isinstance(load_torch_file(path), dict)
