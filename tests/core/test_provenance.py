"""Checkpoints record the package and version that built each component; a missing plugin package is refused."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from cdp.core import provenance
from cdp.core.checkpoint import load_checkpoint, save_checkpoint
from cdp.core.errors import CdpWarning
from cdp.core.model import DensityModel
from cdp.core.types import CdpError
from tests.helpers.paths import REPO
from tests.helpers.toy_components import TOY_CONFIG, toy_registry

PLUGIN_SOURCE = '''
from cdp.core.hookspec import hookimpl
from tests.helpers.toy_components import ToyReadout

class FakeHead(ToyReadout):
    pass

@hookimpl
def cdp_components():
    return {"readout": {"fake-head": FakeHead}}
'''


def install_fake_plugin(site, version: str) -> None:
    """A distribution 'fake-density-plugin' (module fakeplug, entry point in group cdp) in ``site``."""
    (site / "fakeplug").mkdir(exist_ok=True)
    (site / "fakeplug" / "__init__.py").write_text(PLUGIN_SOURCE)
    for old in site.glob("fake_density_plugin-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"fake_density_plugin-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-density-plugin\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[cdp]\nfake = fakeplug\n")
    (info / "RECORD").write_text(f"fakeplug/__init__.py,,\n{info.name}/METADATA,,\n")
    provenance.forget()


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_plugin(site, "1.0")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("fakeplug", None)
    provenance.forget()


def fake_model(tmp_path):
    import fakeplug

    reg = toy_registry(tmp_path)
    assert reg.register(fakeplug, "fake", "test").ok
    return reg, DensityModel.from_config(dict(TOY_CONFIG, readout={"name": "fake-head"}), registry=reg)


def test_checkpoint_records_package_and_version(site, tmp_path):
    reg, model = fake_model(tmp_path)
    save_checkpoint(tmp_path / "m.ckpt", model)
    recorded = torch.load(tmp_path / "m.ckpt", weights_only=True)["components"]
    assert recorded["readout"] == {"name": "fake-head", "class": "fakeplug.FakeHead",
                                   "distribution": "fake-density-plugin", "version": "1.0"}
    from cdp import __version__

    assert recorded["graph"] == {"name": "periodic", "class": "cdp.plugins.graphs.periodic.PeriodicGraphBuilder",
                                 "distribution": "cdp", "version": __version__}
    assert recorded["backbone"]["distribution"] is None  # tests/helpers is no installed package
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(tmp_path / "m.ckpt", registry=reg)


def test_other_plugin_version_warns_in_one_line(site, tmp_path):
    reg, model = fake_model(tmp_path)
    save_checkpoint(tmp_path / "m.ckpt", model)
    install_fake_plugin(site, "2.0")
    with pytest.warns(CdpWarning) as record:
        load_checkpoint(tmp_path / "m.ckpt", registry=reg)
    assert [str(w.message) for w in record] == [
        f"{tmp_path / 'm.ckpt'}: readout 'fake-head' was built by fake-density-plugin 1.0, installed is 2.0"]


def test_missing_plugin_package_is_refused_naming_it(site, tmp_path):
    reg, model = fake_model(tmp_path)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model)
    reg.components["readout"].pop("fake-head")  # installed, but its plugin no longer registers the name
    with pytest.raises(CdpError, match=r"^.*m.ckpt: its readout 'fake-head' comes from the plugin package "
                                       r"fake-density-plugin 1.0; fake-density-plugin 1.0 is installed but registers "
                                       r"no readout 'fake-head' \(see `cdp plugins list`\)$"):
        load_checkpoint(path, registry=reg)
    for f in site.glob("*.dist-info/*"):
        f.unlink()
    provenance.forget()
    with pytest.raises(CdpError) as err:
        load_checkpoint(path, registry=reg)
    assert str(err.value) == (f"{path}: its readout 'fake-head' comes from the plugin package fake-density-plugin 1.0, "
                              "which is not installed (pip install 'fake-density-plugin==1.0')")


@pytest.mark.parametrize("name", ["demo.ckpt", "qm9.ckpt"])
def test_checkpoints_without_the_record_load_unchanged(name):
    raw = torch.load(REPO / "cdp" / "assets" / name, weights_only=True)
    assert "components" not in raw
    with warnings.catch_warnings():
        warnings.simplefilter("error", CdpWarning)
        model, data = load_checkpoint(REPO / "cdp" / "assets" / name)
    assert data["format_version"] == raw["format_version"]


def test_cli_refuses_missing_plugin_in_one_line(tmp_path, capsys):
    from cdp.cli.main import main

    raw = torch.load(REPO / "cdp" / "assets" / "demo.ckpt", weights_only=True)
    raw["config"]["readout"] = {"name": "missing-head"}
    raw["components"] = {"readout": {"name": "missing-head", "class": "missing_plugin_xyz.Head",
                                     "distribution": "cdp-missing-plugin-xyz", "version": "3.1"}}
    torch.save(raw, tmp_path / "m.ckpt")
    assert main(["export", str(tmp_path / "m.ckpt"), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'm.ckpt'}: its readout 'missing-head' comes from the plugin package "
                          "cdp-missing-plugin-xyz 3.1, which is not installed (pip install 'cdp-missing-plugin-xyz==3.1')\n")
    assert not (tmp_path / "out").exists()


def test_cli_prints_cdp_warnings_in_one_line():
    from cdp.cli.main import _one_line_warning

    assert _one_line_warning(CdpWarning("m.ckpt: readout 'x' was built by p 1.0, installed is 2.0"), CdpWarning,
                             "f.py", 3) == "warning: m.ckpt: readout 'x' was built by p 1.0, installed is 2.0\n"


def test_malformed_record_is_one_line(tmp_path):
    raw = torch.load(REPO / "cdp" / "assets" / "demo.ckpt", weights_only=True)
    raw["components"] = {"readout": {"name": 3}}
    torch.save(raw, tmp_path / "m.ckpt")
    with pytest.raises(CdpError, match=r"checkpoint 'components.readout' must map name, distribution and version to strings"):
        load_checkpoint(tmp_path / "m.ckpt")
