"""Import of published ChargE3Net checkpoints: both on-disk formats, config variants, refusals, safety."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from cdp.core.types import CdpError
from cdp.importers.charge3net import import_charge3net, parse_config, read_state_dict

from tests.helpers.paths import FIXTURES as REF

SMALL = REF / "charge3net_small.pt"
SMALL_HP = {"num_interactions": 2, "num_neighbors": 20, "mul": 150, "lmax": 2, "cutoff": 4.0, "basis": "gaussian",
            "num_basis": 10}


@functools.lru_cache(maxsize=None)
def _small_sd():
    return torch.load(SMALL, map_location="cpu", weights_only=True)["model"]


@functools.lru_cache(maxsize=None)
def _small_import():
    return import_charge3net(SMALL, dict(SMALL_HP))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Marker:
    """Unpickling this with a plain unpickler creates a file (stands in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class HParams(dict):
    """Like Lightning's AttributeDict: a dict subclass from a module the importer must not import."""


def _lightning_file(path, marker):
    sd = {f"network.{k}": v for k, v in _small_sd().items()}
    torch.save({
        "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.9.0",
        "state_dict": sd,
        "hyper_parameters": HParams(lr=0.005, model=_Marker(marker)),
        "callbacks": {"ModelCheckpoint{'monitor': 'val/nmape'}": {"best_model_score": torch.tensor(1.0)}},
        "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": [{"last_epoch": 0}],
    }, path)


def test_trainer_format_keys_and_config(fixtures_dir):
    config, sd = _small_import()
    assert config["backbone"] == {"name": "chargee3net", **SMALL_HP}
    assert config["readout"] == {"name": "linear"} and config["featurizer"] == {"name": "onehot"}
    assert all(k.split(".")[0] in ("featurizer", "backbone", "readout") for k in sd)
    src = _small_sd()
    assert torch.equal(sd["backbone.atom_convs.1.fc.layer1.weight"], src["atom_model.convolutions.1.fc.layer1.weight"])
    assert torch.equal(sd["readout.linear.weight"], src["probe_model.readout.weight"])
    assert torch.equal(sd["backbone.probe_basis.inv_std"], src["probe_model.basis.inv_std"])


def test_lightning_format_never_runs_pickled_code(fixtures_dir, tmp_path):
    ckpt, marker = tmp_path / "lightning.ckpt", tmp_path / "MARKER"
    _lightning_file(ckpt, marker)
    with pytest.raises(Exception):  # the safe loader of torch refuses the file outright
        torch.load(ckpt, weights_only=True)
    config, sd = import_charge3net(ckpt, dict(SMALL_HP))
    assert not marker.exists()
    ref_config, ref_sd = _small_import()
    assert config == ref_config
    _assert_same_weights(sd, ref_sd)
    # the file really is dangerous: an unrestricted load creates the marker
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_published_lightning_fixture(fixtures_dir):
    sd = read_state_dict(REF / "charge3net_paper.pt")
    assert "atom_model.convolutions.2.fc.layer0.weight" in sd and not any(k.startswith("network.") for k in sd)


def test_hyperparameters_inferred_without_config(fixtures_dir):
    config, sd = import_charge3net(SMALL)
    bb = config["backbone"]
    assert (bb["num_interactions"], bb["lmax"], bb["num_basis"], bb["mul"]) == (2, 2, 10, 150)
    assert (bb["cutoff"], bb["num_neighbors"], bb["basis"]) == (4.0, 20, "gaussian")  # paper defaults
    _assert_same_weights(sd, _small_import()[1])


CONFIG_VARIANTS = {
    "flat.yaml": "num_interactions: 2\nmul: 150\nlmax: 2\ncutoff: 3.5\nnum_basis: 1e1\nnum_neighbors: 2e1\n",
    "model.yaml": ("model:\n  _target_: src.charge3net.models.e3.E3DensityModel\n  num_interactions: 2\n"
                   "  num_neighbors: 20\n  mul: 150\n  lmax: 2\n  cutoff: 3.5\n  basis: \"gaussian\"\n  num_basis: 10\n"
                   "optimizer:\n  _target_: torch.optim.Adam\nbatch_size: ${batch_size}\n"),
    "run.yaml": ("cutoff: 3.5\nbatch_size: 16\nsteps: 1e6\nlog_dir: ${hydra:run.dir}\n"
                 "model:\n  lr_scheduler:\n    beta: 3e3\n  model:\n    _target_: src.charge3net.models.e3.E3DensityModel\n"
                 "    num_interactions: 2\n    mul: 150\n    lmax: 2\n    num_basis: 10\n    cutoff: ${cutoff}\n"),
    "hp.json": json.dumps({"kind": "charge3net", "hyperparameters": {**SMALL_HP, "cutoff": 3.5}}),
}


@pytest.mark.parametrize("name", sorted(CONFIG_VARIANTS))
def test_config_variants(tmp_path, name):
    path = tmp_path / name
    path.write_text(CONFIG_VARIANTS[name])
    hp = parse_config(path)
    assert hp["cutoff"] == 3.5 and hp["num_interactions"] == 2 and hp["mul"] == 150 and hp["lmax"] == 2
    if "num_basis" in hp:
        assert hp["num_basis"] == 10 and isinstance(hp["num_basis"], int)
    if name == "flat.yaml":
        assert hp["num_neighbors"] == 20.0


def test_config_cutoff_is_used(fixtures_dir, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG_VARIANTS["run.yaml"])
    config, _ = import_charge3net(SMALL, path)
    assert config["backbone"]["cutoff"] == 3.5 and config["backbone"]["mul"] == 150


@pytest.mark.parametrize("key,value,inferred", [("num_interactions", 3, 2), ("lmax", 4, 2), ("num_basis", 20, 10),
                                                 ("mul", 500, 150), ("spin", True, False)])
def test_contradiction_is_refused(fixtures_dir, key, value, inferred):
    with pytest.raises(CdpError) as err:
        import_charge3net(SMALL, {**SMALL_HP, key: value})
    msg = str(err.value)
    assert key in msg and str(value) in msg and str(inferred) in msg


def test_shape_mismatch_names_the_key(fixtures_dir, tmp_path):
    sd = dict(_small_sd())
    sd["probe_model.convolutions.1.lin2.weight"] = sd["probe_model.convolutions.1.lin2.weight"][:-3]
    path = tmp_path / "bad.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CdpError, match=r"probe_model\.convolutions\.1\.lin2\.weight.*\(13049,\).*\(13052,\)"):
        import_charge3net(path, dict(SMALL_HP))


def test_unknown_key_and_bad_files_refused(fixtures_dir, tmp_path):
    sd = dict(_small_sd())
    sd["atom_model.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CdpError, match="atom_model.extra.weight"):
        import_charge3net(path, dict(SMALL_HP))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CdpError, match="junk.pt"):
        import_charge3net(junk)
    with pytest.raises(CdpError, match="no such"):
        import_charge3net(tmp_path / "absent.pt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  _target_: src.charge3net.models.densitymodel.PainnDensityModel\n")
    with pytest.raises(CdpError, match="PainnDensityModel"):
        parse_config(bad)
    bad.write_text("num_basis: ten\n")
    with pytest.raises(CdpError, match="num_basis"):
        parse_config(bad)
    bad.write_text("model:\n  model:\n    cutoff: ${nowhere}\n")
    with pytest.raises(CdpError, match="nowhere"):
        parse_config(bad)


def test_cli_writes_a_loadable_cdp_checkpoint(fixtures_dir, tmp_path):
    from click.testing import CliRunner

    from cdp.cli.import_cmd import command
    from cdp.core.checkpoint import load_checkpoint

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(SMALL_HP))
    out = tmp_path / "small.ckpt"
    res = CliRunner().invoke(command, ["charge3net", str(SMALL), "--config", str(cfg), "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    raw = torch.load(out, weights_only=True)
    assert raw["metadata"]["elements"] is None and raw["config"]["backbone"]["name"] == "chargee3net"
    model, _ = load_checkpoint(out)
    _assert_same_weights({k: v for k, v in model.state_dict().items()}, _small_import()[1])


def test_restricted_loader_stubs_unknown_globals_and_admits_extra_ones(tmp_path):
    from cdp.core.safe_pickle import PickleStub, find_stubs, load_torch_file

    path, marker = tmp_path / "obj.pt", tmp_path / "MARKER"
    torch.save({"w": torch.arange(3.0), "h": HParams(a=1), "m": _Marker(marker)}, path)
    data = load_torch_file(path)
    assert not marker.exists()
    assert torch.equal(data["w"], torch.arange(3.0))
    assert isinstance(data["h"], PickleStub) and data["h"]._stub_items == [("a", 1)]
    assert sorted(find_stubs(data)) == ["io.open", f"{HParams.__module__}.HParams"]
    allowed = load_torch_file(path, extra_globals={(HParams.__module__, "HParams"): HParams})
    assert type(allowed["h"]) is HParams and allowed["h"] == {"a": 1}
    assert isinstance(allowed["m"], PickleStub) and not marker.exists()
