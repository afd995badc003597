"""The plugin manager: built-in plugin modules named in registry.yaml, third-party entry points, presets.

Built-in components and third-party ones register through the same hook (``cdp_components``).  A plugin
that fails to import, or that registers a name already taken, is recorded as *broken* with its origin;
the other plugins keep working.  The core never imports a plugin by name: the names live in registry.yaml.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pluggy

from cdp.core import hookspec
from cdp.core.components import COMPONENT_KINDS
from cdp.core.configs import fill_backbone
from cdp.core.prior import check_prior_config
from cdp.core.types import CdpError
from cdp.core.yamlio import read_yaml_mapping

ENTRY_POINT_GROUP = "cdp"
PRESET_KEYS = ("featurizer", "graph", "backbone", "readout")


@dataclass
class PluginInfo:
    """One plugin as loaded: its name, where it came from, what it registered, and any error."""

    name: str
    origin: str
    components: List[str] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ComponentEntry:
    kind: str
    name: str
    factory: Callable
    plugin: str


def registry_file() -> Path:
    """Path of the registry.yaml in use: ``$CDP_REGISTRY`` if set, else the one shipped in the package."""
    env = os.environ.get("CDP_REGISTRY")
    if env:
        return Path(env)
    return packaged_registry_file()


def packaged_registry_file() -> Path:
    """Path of the registry.yaml shipped in the package."""
    return Path(str(importlib.resources.files("cdp").joinpath("registry.yaml")))


def load_registry_yaml(path: Path) -> dict:
    """Read and validate registry.yaml; errors name the file and the offending key."""
    data = read_yaml_mapping(path, "registry", "a mapping with keys 'plugins' and 'presets'")
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise CdpError(f"{path}: 'plugins' must be a list of module names")
    presets = data.get("presets", {})
    if not isinstance(presets, dict):
        raise CdpError(f"{path}: 'presets' must be a mapping of preset names")
    presets = {name: copy.deepcopy(preset) for name, preset in presets.items()}  # YAML aliases share one object
    for name, preset in presets.items():
        validate_preset(preset, f"{path}: presets.{name}")
        preset["backbone"] = fill_backbone(preset["backbone"])
    training = data.get("training", {})
    if not isinstance(training, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in training.items()):
        raise CdpError(f"{path}: 'training' must be a mapping of training preset names to mappings of keys")
    training = {name: copy.deepcopy(preset) for name, preset in training.items()}
    return {"plugins": plugins, "presets": presets, "training": training}


def validate_preset(preset: Any, where: str) -> None:
    """Check a model config ``{featurizer, graph, backbone, readout[, prior, train, description]}``."""
    if not isinstance(preset, dict):
        raise CdpError(f"{where}: must be a mapping")
    for key in PRESET_KEYS:
        if key not in preset:
            raise CdpError(f"{where}: missing key '{key}'")
        comp = preset[key]
        if not isinstance(comp, dict) or not isinstance(comp.get("name"), str):
            raise CdpError(f"{where}.{key}: must be a mapping with a string 'name'")
    train = preset.get("train", {})
    if not isinstance(train, dict):
        raise CdpError(f"{where}.train: must be a mapping")
    unknown = set(preset) - set(PRESET_KEYS) - {"prior", "train", "description"}
    if unknown:
        raise CdpError(f"{where}: unknown key '{sorted(unknown)[0]}'")
    if "prior" in preset:
        check_prior_config(preset["prior"], f"{where}.prior")


class Registry:
    """Components and presets from every plugin, with a record of the plugins that failed."""

    def __init__(self, path: Optional[Path] = None, entry_points: bool = True):
        self.path = Path(path) if path is not None else registry_file()
        self.pm = pluggy.PluginManager(hookspec.PROJECT)
        self.pm.add_hookspecs(hookspec)
        self.plugins: List[PluginInfo] = []
        self.components: Dict[str, Dict[str, ComponentEntry]] = {k: {} for k in COMPONENT_KINDS}
        self.presets: Dict[str, dict] = {}
        data = load_registry_yaml(self.path)
        for module in data["plugins"]:
            self._load_module(module, origin=f"built-in ({self.path.name})")
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = getattr(ep, "dist", None)
                origin = f"entry point {ep.name} = {ep.value}" + (f" ({dist.name} {dist.version})" if dist else "")
                self._load_entry_point(ep, origin)
        #: named training presets ({name: {key: value}}); a registry file without any uses the packaged ones
        self.training: Dict[str, dict] = data["training"]
        if not self.training and self.path != packaged_registry_file():
            self.training = load_registry_yaml(packaged_registry_file())["training"]
        self.preset_origin: Dict[str, str] = {name: "plugin" for name in self.presets}
        #: plugin presets hidden by a registry.yaml preset of the same name: {name: plugin}
        self.shadowed: Dict[str, str] = {}
        plugin_of = {c.split(":", 1)[1]: p.name for p in self.plugins for c in p.components if c.startswith("preset:")}
        for name, preset in data["presets"].items():
            if name in self.presets:  # registry.yaml wins; the plugin's preset is reported as shadowed
                self.shadowed[name] = plugin_of.get(name, "a plugin")
            self.presets[name] = preset
            self.preset_origin[name] = "registry.yaml"

    # -- loading ---------------------------------------------------------------------------------
    # A plugin is foreign code: anything it raises while importing or in a hook (SystemExit included,
    # KeyboardInterrupt excepted) marks it BROKEN, and malformed hook results are refused entry by entry.
    def _load_module(self, module_name: str, origin: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not break the others
            self.plugins.append(PluginInfo(module_name, origin, error=f"import failed: {_describe(exc)}"))
            return
        self.register(module, module_name, origin)

    def _load_entry_point(self, ep, origin: str) -> None:
        try:
            obj = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.plugins.append(PluginInfo(ep.name, origin, error=f"import failed: {_describe(exc)}"))
            return
        self.register(obj, ep.name, origin)

    def _call_hook(self, plugin: Any, hook: str) -> list:
        caller = self.pm.subset_hook_caller(hook, remove_plugins=[p for p in self.pm.get_plugins() if p is not plugin])
        return list(caller())

    def register(self, plugin: Any, name: str, origin: str) -> PluginInfo:
        """Register one plugin object (a module or an object with hookimpls) and collect its components."""
        info = PluginInfo(name, origin)
        self.plugins.append(info)
        try:
            if self.pm.is_registered(plugin) or self.pm.has_plugin(name):
                info.error = "already registered"
                return info
            self.pm.register(plugin, name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            info.error = f"invalid hooks: {_describe(exc)}"
            return info
        try:  # a hook implementation whose name is no cdp hook (a misspelling) would otherwise never run
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            info.error = f"unknown hook: {_describe(exc)}"
            return info
        problems: List[str] = []
        try:
            results = self._call_hook(plugin, "cdp_components")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            info.error = f"cdp_components failed: {_describe(exc)}"
            return info
        for result in results:
            self._add_components(result, name, info, problems)
        try:
            preset_results = self._call_hook(plugin, "cdp_presets")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            problems.append(f"cdp_presets failed: {_describe(exc)}")
            preset_results = []
        for result in preset_results:
            self._add_presets(result, name, info, problems)
        if not info.components and not problems:
            problems.append("registers no components and no presets (is the hook named cdp_components?)")
        if problems:
            info.error = "; ".join(problems)
        return info

    def _add_components(self, result: Any, plugin: str, info: PluginInfo, problems: List[str]) -> None:
        if not isinstance(result, dict):
            problems.append(f"cdp_components must return {{kind: {{name: factory}}}}, got {_kind(result)}")
            return
        for kind, entries in result.items():
            if not isinstance(kind, str) or kind not in self.components:
                problems.append(f"unknown component kind {_short(kind)}")
                continue
            if entries is None:
                continue
            if not isinstance(entries, dict):
                problems.append(f"cdp_components['{kind}'] must be a mapping of names to factories, got {_kind(entries)}")
                continue
            for cname, factory in entries.items():
                if not isinstance(cname, str) or not cname:
                    problems.append(f"{kind} name {_short(cname)} is not a string")
                    continue
                if not callable(factory):
                    problems.append(f"{kind} '{cname}': factory {_short(factory)} is not callable")
                    continue
                taken = self.components[kind].get(cname)
                if taken is not None:
                    problems.append(f"duplicate {kind} '{cname}' (already registered by {taken.plugin})")
                    continue
                self.components[kind][cname] = ComponentEntry(kind, cname, factory, plugin)
                info.components.append(f"{kind}:{cname}")

    def _add_presets(self, result: Any, plugin: str, info: PluginInfo, problems: List[str]) -> None:
        if result is None:
            return
        if not isinstance(result, dict):
            problems.append(f"cdp_presets must return {{name: preset}}, got {_kind(result)}")
            return
        for pname, preset in result.items():
            if not isinstance(pname, str) or not pname:
                problems.append(f"preset name {_short(pname)} is not a string")
                continue
            try:
                validate_preset(preset, f"{plugin}: preset {pname}")
            except CdpError as exc:
                problems.append(str(exc))
                continue
            if pname in self.presets:
                owner = next((p.name for p in self.plugins if f"preset:{pname}" in p.components), None)
                problems.append(f"duplicate preset '{pname}'" + (f" (already registered by {owner})" if owner else ""))
            else:
                self.presets[pname] = preset
                info.components.append(f"preset:{pname}")

    # -- use ---------------------------------------------------------------------------------------
    def factory(self, kind: str, name: str) -> Callable:
        """The factory registered for ``kind``/``name``, or a CdpError listing what is available."""
        if kind not in self.components:
            raise CdpError(f"unknown component kind '{kind}' (kinds: {', '.join(COMPONENT_KINDS)})")
        entry = self.components[kind].get(name)
        if entry is None:
            known = ", ".join(sorted(self.components[kind])) or "none"
            raise CdpError(f"unknown {kind} '{name}' (registered: {known})")
        return entry.factory

    def build(self, kind: str, spec: dict, **extra):
        """Instantiate a component from ``{"name": ..., **params}``; bad params raise a CdpError naming them."""
        params = {k: v for k, v in spec.items() if k != "name"}
        factory = self.factory(kind, spec["name"])
        try:
            return factory(**params, **extra)
        except CdpError:
            raise
        except (TypeError, ValueError) as exc:
            raise CdpError(f"{kind} '{spec['name']}': bad parameters ({exc})") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # plugin code: SystemExit or any other failure is one line, never a crash
            raise CdpError(f"{kind} '{spec['name']}': failed to build ({_describe(exc)})") from None

    def preset(self, name: str) -> dict:
        if name not in self.presets:
            raise CdpError(f"unknown model preset '{name}' (presets: {', '.join(sorted(self.presets))})")
        return self.presets[name]

    def training_preset(self, name: str) -> dict:
        """A copy of the named training preset, or a CdpError listing the known names."""
        if name not in self.training:
            raise CdpError(f"unknown training preset '{name}' (presets: {', '.join(sorted(self.training))})")
        return copy.deepcopy(self.training[name])


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by plugin code."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a foreign object whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


_DEFAULT: Optional[Registry] = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None or reload:
        _DEFAULT = Registry()
    return _DEFAULT


def build_parts(config: dict, registry: Optional["Registry"] = None) -> tuple:
    """(featurizer, backbone, readout) of a model config ``{"featurizer": {...}, "backbone": {...}, "readout":
    {...}}``, each built by name through the registry (the importers use this, never a plugin module)."""
    registry = registry or get_registry()
    backbone = registry.build("backbone", dict(config["backbone"]))
    featurizer = registry.build("featurizer", dict(config["featurizer"]))
    return featurizer, backbone, registry.build("readout", dict(config["readout"]), in_spec=backbone.out_spec)
