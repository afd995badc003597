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

from tests.helpers.paths import FIXTURES as REF


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


# -- YAML alias bombs ---------------------------------------------------------------------------------
def _laughs(levels=9, fan=10):
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    return "\n".join(lines) + f"\nmodel: *a{levels - 1}\nsteps: 1\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (_laughs(), r"refused: more than 100000 nodes once its aliases are expanded"),
        ("x: &x 1\nl: [" + ", ".join(["*x"] * 101) + "]\n", r"refused: more than 100 YAML aliases"),
        ("a: &a [*a]\n", "refused: a recursive YAML alias"),
    ],
)
def test_yaml_alias_bomb_refused_quickly(tmp_path, text, message):
    from cdp.train.config import resolve_config

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(CdpError, match=rf"bomb\.yaml: {message}"):
        resolve_config(path)
    assert time.perf_counter() - t0 < 3.0


def test_yaml_aliases_within_limits_still_work(tmp_path):
    from cdp.core.yamlio import read_yaml_mapping

    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 0.01, steps: 3}\nrun: {<<: *b, steps: 5}\nagain: *b\n")
    assert read_yaml_mapping(path, "config") == {"base": {"lr": 0.01, "steps": 3}, "run": {"lr": 0.01, "steps": 5},
                                                 "again": {"lr": 0.01, "steps": 3}}


def test_cli_train_refuses_bomb_in_one_line(tmp_path, capsys):
    from cdp.cli.main import main

    path = tmp_path / "bomb.yaml"
    path.write_text(_laughs())
    assert main(["train", str(path), "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused: more than 100000 nodes" in err
    assert not (tmp_path / "run").exists()


# -- absurd model sizes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [{"node_size": 1e8}, {"num_interactions": 1e6, "node_size": 128}])
def test_deepdft_arguments_with_absurd_sizes_refused_before_reading(tmp_path, monkeypatch, change):
    from cdp.importers.deepdft import import_deepdft

    monkeypatch.delenv("CDP_MAX_MODEL_MEMORY", raising=False)
    (tmp_path / "arguments.json").write_text(json.dumps({"num_interactions": 3, "node_size": 128, "cutoff": 4.0, **change}))
    # no best_model.pth at all: the refusal comes before the weights are looked at
    with pytest.raises(CdpError, match=r"arguments\.json: the model's sizes need about .* TiB for its parameters alone, "
                                       r"over the limit of .*CDP_MAX_MODEL_MEMORY"):
        import_deepdft(tmp_path)


def test_checkpoint_with_absurd_mul_refused_before_building(tmp_path, monkeypatch):
    from cdp.core.checkpoint import load_checkpoint, save_checkpoint
    from cdp.core.model import DensityModel
    from cdp.core.registry import get_registry

    monkeypatch.delenv("CDP_MAX_MODEL_MEMORY", raising=False)
    model = DensityModel.from_config(get_registry().preset("invdeepdft-cpu"))
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model)
    data = torch.load(path, weights_only=True)
    data["config"]["backbone"] = {"name": "chargee3net", "mul": 262144, "lmax": 4, "num_interactions": 3}
    torch.save(data, path)
    monkeypatch.setattr(DensityModel, "from_config", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(CdpError, match=r"m\.ckpt: the model's sizes need about .*GiB"):
        load_checkpoint(path)


def test_model_memory_limit_and_env(monkeypatch):
    from cdp.core.model_size import DEFAULT_LIMIT, check_model_memory, estimate_parameters, memory_limit
    from cdp.core.registry import get_registry

    monkeypatch.delenv("CDP_MAX_MODEL_MEMORY", raising=False)
    assert memory_limit() <= DEFAULT_LIMIT
    big = {"featurizer": {"name": "embedding", "size": 100000}, "backbone": {"name": "x", "node_size": 100000, "num_interactions": 1}}
    assert estimate_parameters(big) == 20 * 100000**2 + 119 * 100000
    with pytest.raises(CdpError, match="over the limit"):
        check_model_memory(big, "cfg")
    monkeypatch.setenv("CDP_MAX_MODEL_MEMORY", "100T")
    check_model_memory(big, "cfg")  # raised by the variable
    monkeypatch.setenv("CDP_MAX_MODEL_MEMORY", "lots")
    with pytest.raises(CdpError, match="CDP_MAX_MODEL_MEMORY: cannot read 'lots' as a size"):
        check_model_memory(big, "cfg")
    monkeypatch.delenv("CDP_MAX_MODEL_MEMORY")
    reg = get_registry()
    for name in ("chargee3net", "equideepdft", "invdeepdft"):  # published sizes pass (and the estimate is a lower bound)
        check_model_memory(reg.preset(name), name)
    assert estimate_parameters(reg.preset("invdeepdft")) <= 2_071_681
    assert estimate_parameters(reg.preset("equideepdft")) <= 1_487_233


# -- malformed values in metadata, manifests and splits: one line ----------------------------------------
@pytest.mark.parametrize("elements, shown", [([1000], "1000"), ("H", "'H'"), ([[1]], r"\[1\]"), ([True], "True")])
def test_checkpoint_elements_must_be_atomic_numbers(tmp_path, elements, shown):
    from cdp.cli.main import main
    from cdp.core.checkpoint import read_checkpoint, save_checkpoint
    from cdp.core.model import DensityModel
    from cdp.core.registry import get_registry

    path = tmp_path / "m.ckpt"
    save_checkpoint(path, DensityModel.from_config(get_registry().preset("invdeepdft-cpu")), {"elements": elements})
    with pytest.raises(CdpError, match=rf"m\.ckpt: metadata: 'elements' .*{shown}"):
        read_checkpoint(path)
    assert main(["export", str(path), "--format", "onnx", "-o", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e").exists()


def test_checkpoint_elements_as_symbols_are_read():
    from cdp.core.checkpoint import checked_elements

    assert checked_elements(["O", 1, "H", 6], "x") == [1, 6, 8]


def test_manifest_file_and_split_entries_that_are_lists(tmp_path, capsys):
    from cdp.data.datasets import directory_dataset, load_split

    (tmp_path / "a.cube").write_text("")
    (tmp_path / "manifest.json").write_text(json.dumps({"structures": {"a": {"file": ["a.cube"]}}}))
    with pytest.raises(CdpError, match=r"manifest\.json: entry 'a': 'file' must be a file name, got \['a.cube'\]"):
        directory_dataset(str(tmp_path))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [["a"]], "test": []}))
    with pytest.raises(CdpError, match=r"split\.json: 'train' entries must be item names or indices, got \['a'\]"):
        load_split(str(split))
