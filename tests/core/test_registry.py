"""Registry: registry.yaml validation, plugin loading, broken and duplicate plugins, entry points."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml

from cdp.core.components import Readout, Spec
from cdp.core.hookspec import hookimpl
from cdp.core.registry import Registry, get_registry, load_registry_yaml
from cdp.core.types import CdpError
from tests.helpers.paths import REPO


def write_registry(tmp_path, data) -> str:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_plugin(name: str, components: dict) -> types.ModuleType:
    mod = types.ModuleType(name)

    @hookimpl
    def cdp_components():
        return components

    mod.cdp_components = cdp_components
    return mod


class Dummy(Readout):
    def __init__(self, in_spec=None):
        super().__init__()
        self.in_spec = in_spec


def test_shipped_registry_lists_presets_and_components():
    reg = get_registry()
    for name in ("chargee3net", "equideepdft", "invdeepdft", "chargee3net-cpu", "equideepdft-cpu", "invdeepdft-cpu"):
        preset = reg.preset(name)
        assert set(preset) >= {"featurizer", "graph", "backbone", "readout", "train"}
        for key in ("loss", "lr", "beta"):
            assert key in preset["train"], (name, key)
    assert "periodic" in reg.components["graph"]


def test_registry_file_is_the_packaged_one_unless_cdp_registry(tmp_path, monkeypatch):
    import cdp
    from cdp.core.registry import registry_file

    monkeypatch.delenv("CDP_REGISTRY", raising=False)
    assert registry_file() == Path(cdp.__file__).parent / "registry.yaml"  # the wheel test checks what ships there
    assert load_registry_yaml(registry_file()) == load_registry_yaml(REPO / "registry.yaml")
    monkeypatch.setenv("CDP_REGISTRY", str(write_registry(tmp_path, {"plugins": [], "presets": {}})))
    assert registry_file() == tmp_path / "registry.yaml" and Registry().presets == {}


def test_numbers_in_registry_are_numbers():
    data = load_registry_yaml(REPO / "registry.yaml")
    for preset in data["presets"].values():
        assert isinstance(preset["train"]["lr"], float)
        assert isinstance(preset["train"]["beta"], float)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"plugins": "x"}, "plugins"),
        ({"presets": {"m": {"graph": {"name": "g"}}}}, "presets.m"),
        ({"presets": {"m": {"featurizer": {"name": "a"}, "graph": {"name": "b"}, "backbone": {"name": "c"},
                            "readout": {"name": "d"}, "extra": 1}}}, "extra"),
        ({"presets": {"m": {"featurizer": {}, "graph": {"name": "b"}, "backbone": {"name": "c"},
                            "readout": {"name": "d"}}}}, "presets.m.featurizer"),
    ],
)
def test_invalid_registry_names_the_key(tmp_path, data, key):
    with pytest.raises(CdpError, match=key.replace(".", r"\.")):
        load_registry_yaml(write_registry(tmp_path, data))


def test_invalid_yaml_is_one_line_error(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("plugins: [unclosed\n")
    with pytest.raises(CdpError, match="invalid YAML"):
        load_registry_yaml(path)


def test_broken_plugin_does_not_break_others(tmp_path):
    path = write_registry(tmp_path, {"plugins": ["cdp.plugins.graphs.periodic", "no_such_module_xyz"], "presets": {}})
    reg = Registry(path, entry_points=False)
    broken = [p for p in reg.plugins if not p.ok]
    assert [p.name for p in broken] == ["no_such_module_xyz"]
    assert "import failed" in broken[0].error
    assert "periodic" in reg.components["graph"]


def test_duplicate_component_is_reported_with_origin(tmp_path):
    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    first = reg.register(make_plugin("first", {"readout": {"dummy": Dummy}}), "first", "test")
    second = reg.register(make_plugin("second", {"readout": {"dummy": Dummy, "other": Dummy}}), "second", "test")
    assert first.ok
    assert not second.ok and "duplicate readout 'dummy'" in second.error and "first" in second.error
    assert reg.components["readout"]["dummy"].plugin == "first"
    assert reg.components["readout"]["other"].plugin == "second"  # the rest of the plugin still registers


def test_plugin_whose_hook_raises_is_broken(tmp_path):
    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    mod = types.ModuleType("bad")

    @hookimpl
    def cdp_components():
        raise RuntimeError("boom")

    mod.cdp_components = cdp_components
    info = reg.register(mod, "bad", "test")
    assert not info.ok and "boom" in info.error


def test_unknown_component_lists_available():
    reg = get_registry()
    with pytest.raises(CdpError, match="unknown backbone 'nope'"):
        reg.factory("backbone", "nope")
    with pytest.raises(CdpError, match="unknown model preset"):
        reg.preset("nope")


def test_bad_component_parameters_name_the_component(tmp_path):
    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    reg.register(make_plugin("p", {"readout": {"dummy": Dummy}}), "p", "test")
    with pytest.raises(CdpError, match="readout 'dummy': bad parameters"):
        reg.build("readout", {"name": "dummy", "nonsense": 3})


@pytest.mark.parametrize(
    "components, message",
    [
        (["readout"], "cdp_components must return {kind: {name: factory}}, got list ['readout']"),
        ({"readout": ["dummy"]}, "cdp_components['readout'] must be a mapping of names to factories, got list ['dummy']"),
        ({"readout": {"dummy": 3}}, "readout 'dummy': factory 3 is not callable"),
        ({"readout": {7: Dummy}}, "readout name 7 is not a string"),
        ({("a",): {}}, "unknown component kind ('a',)"),
    ],
)
def test_malformed_hook_result_is_broken_others_work(tmp_path, components, message):
    reg = Registry(write_registry(tmp_path, {"plugins": ["cdp.plugins.graphs.periodic"], "presets": {}}), entry_points=False)
    info = reg.register(make_plugin("bad", components), "bad", "test")
    assert not info.ok and info.error == message
    assert "periodic" in reg.components["graph"] and reg.components["readout"] == {}
    good = reg.register(make_plugin("good", {"readout": {"dummy": Dummy}}), "good", "test")
    assert good.ok and reg.build("readout", {"name": "dummy"}).in_spec is None


@pytest.mark.parametrize("presets, message", [("abc", "cdp_presets must return {name: preset}, got str 'abc'"),
                                              ({"p": {"graph": 1}}, "bad: preset p: missing key 'featurizer'")])
def test_malformed_presets_are_broken(tmp_path, presets, message):
    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    mod = types.ModuleType("bad")

    @hookimpl
    def cdp_presets():
        return presets

    mod.cdp_presets = cdp_presets
    info = reg.register(mod, "bad", "test")
    assert not info.ok and message in info.error and reg.presets == {}


def test_plugin_calling_sys_exit_is_broken_and_commands_keep_working(tmp_path, monkeypatch, capsys):
    import sys

    import cdp.core.registry as registry
    from cdp.cli.main import main

    (tmp_path / "exiting_plugin_xyz.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped = load_registry_yaml(registry.registry_file())
    path = write_registry(tmp_path, {"plugins": shipped["plugins"] + ["exiting_plugin_xyz"], "presets": shipped["presets"]})
    monkeypatch.setenv("CDP_REGISTRY", str(path))
    monkeypatch.setattr(registry, "_DEFAULT", None)
    reg = get_registry()
    broken = [p for p in reg.plugins if not p.ok]
    assert [(p.name, p.error) for p in broken] == [("exiting_plugin_xyz", "import failed: SystemExit: 3")]
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN" in out and "import failed: SystemExit: 3" in out
    assert main(["plugins", "list", "--strict"]) == 1  # for a plugin author's CI
    assert capsys.readouterr().err.strip() == "error: 1 broken plugin: exiting_plugin_xyz"
    assert main(["plugins", "list", "--strict", "--json"]) == 1
    assert reg.build("graph", {"name": "periodic"}) is not None
    sys.modules.pop("exiting_plugin_xyz", None)


def test_factory_calling_sys_exit_is_one_line(tmp_path):
    def factory(**kw):
        raise SystemExit(4)

    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    reg.register(make_plugin("p", {"readout": {"quits": factory}}), "p", "test")
    with pytest.raises(CdpError, match=r"^readout 'quits': failed to build \(SystemExit: 4\)$"):
        reg.build("readout", {"name": "quits"})


def test_misspelt_hook_is_reported_not_silently_ok(tmp_path):
    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    mod = types.ModuleType("typo")

    @hookimpl
    def cdp_component():  # the hook is cdp_components
        return {"readout": {"dummy": Dummy}}

    mod.cdp_component = cdp_component
    info = reg.register(mod, "typo", "test")
    assert not info.ok and info.error.startswith("unknown hook") and "cdp_component" in info.error
    assert "dummy" not in reg.components["readout"]
    assert reg.register(make_plugin("fine", {"readout": {"dummy": Dummy}}), "fine", "test").ok  # others still load


def test_plugin_that_registers_nothing_is_reported(tmp_path):
    reg = Registry(write_registry(tmp_path, {"plugins": [], "presets": {}}), entry_points=False)
    info = reg.register(types.ModuleType("empty"), "empty", "test")
    assert not info.ok and "registers no components and no presets" in info.error


def test_registry_yaml_preset_shadows_a_plugin_preset(tmp_path, monkeypatch):
    shipped = load_registry_yaml(REPO / "registry.yaml")
    (tmp_path / "shadowing_plugin.py").write_text(
        "from cdp.core.hookspec import hookimpl\n"
        f"PRESET = {shipped['presets']['equideepdft-cpu']!r}\n"
        "@hookimpl\n"
        "def cdp_presets():\n"
        "    return {'chargee3net-cpu': PRESET}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"plugins": ["shadowing_plugin"], "presets": {"chargee3net-cpu": shipped["presets"]["chargee3net-cpu"]}}
    reg = Registry(write_registry(tmp_path, data), entry_points=False)
    assert reg.shadowed == {"chargee3net-cpu": "shadowing_plugin"}
    assert reg.presets["chargee3net-cpu"]["backbone"]["name"] == "chargee3net"  # registry.yaml wins


def test_plugins_list_shows_the_shadowed_preset(tmp_path, monkeypatch, capsys):
    import cdp.core.registry as registry
    from cdp.cli.main import main

    (tmp_path / "shadowing_plugin2.py").write_text(
        "from cdp.core.hookspec import hookimpl\n"
        "from cdp.core.registry import load_registry_yaml, registry_file\n"
        "@hookimpl\n"
        "def cdp_presets():\n"
        "    return {'invdeepdft-cpu': load_registry_yaml(registry_file())['presets']['equideepdft-cpu']}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped = load_registry_yaml(REPO / "registry.yaml")
    path = write_registry(tmp_path, {"plugins": shipped["plugins"] + ["shadowing_plugin2"], "presets": shipped["presets"]})
    monkeypatch.setenv("CDP_REGISTRY", str(path))
    monkeypatch.setattr(registry, "_DEFAULT", None)
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "  shadowed: preset 'invdeepdft-cpu' of plugin shadowing_plugin2 (registry.yaml's preset of that name wins)" in out
    assert get_registry().preset("invdeepdft-cpu")["backbone"]["name"] == "invdeepdft"
    monkeypatch.setattr(registry, "_DEFAULT", None)
    import sys

    sys.modules.pop("shadowing_plugin2", None)


def test_plugin_presets_are_registered_and_build(tmp_path):
    from cdp.core.model import DensityModel
    from tests.helpers.toy_components import TOY_CONFIG, toy_registry

    reg = toy_registry(tmp_path)
    mod = types.ModuleType("presets_plugin")
    mod.cdp_presets = hookimpl(lambda: {"toy-wide": dict(TOY_CONFIG, featurizer={"name": "toy", "size": 6},
                                                         backbone={"name": "toy", "size": 6, "cutoff": 2.5})})
    info = reg.register(mod, "presets_plugin", "test")
    assert info.ok and info.components == ["preset:toy-wide"]
    model = DensityModel.from_config(reg.preset("toy-wide"), registry=reg)
    assert model.cutoff == 2.5 and model.backbone.out_spec == Spec(size=6)
    again = types.ModuleType("presets_again")
    again.cdp_presets = hookimpl(lambda: {"toy-wide": TOY_CONFIG})
    info = reg.register(again, "presets_again", "test")
    assert not info.ok and info.error == "duplicate preset 'toy-wide' (already registered by presets_plugin)"
    assert reg.preset("toy-wide")["backbone"]["size"] == 6  # the first one stays
