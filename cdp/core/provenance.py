"""Which installed package built each component of a model: recorded in checkpoints, checked on load.

A checkpoint records, per component kind, ``{"name", "class", "distribution", "version"}``: the registered
name, the class's import path, and the Python distribution (and version) that provides the class's
module — ``"cdp"`` and cdp's version for the built-in components; ``None`` for a module that no
installed distribution provides (a local file on ``sys.path``).  On load, a component whose plugin
package is not installed (or no longer registers that name) is refused in one line naming the package;
a different installed version of it warns in one line (:class:`~cdp.core.errors.CdpWarning`).  cdp's
own components are not version-checked (``cdp_version`` and the format version cover them).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import warnings
from typing import Dict, Optional, Tuple

from cdp._version import __version__
from cdp.core.errors import CdpError, CdpWarning

KINDS = ("featurizer", "graph", "backbone", "readout")
BUILTIN = "cdp"


@functools.lru_cache(maxsize=None)
def _entry_point_index() -> Dict[str, Tuple[str, str]]:
    """Top-level package of each ``cdp`` entry point → (distribution, version)."""
    index: Dict[str, Tuple[str, str]] = {}
    for ep in importlib.metadata.entry_points(group="cdp"):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            index.setdefault(ep.value.split(":")[0].split(".")[0], (dist.metadata["Name"], dist.version))
    return index


@functools.lru_cache(maxsize=None)
def _packages_distributions() -> Dict[str, list]:
    return importlib.metadata.packages_distributions()


def _provides(dist_name: str, top: str) -> bool:
    """Whether distribution ``dist_name`` holds the file of the imported module ``top``."""
    module = sys.modules.get(top)
    filename = getattr(module, "__file__", None)
    if not filename:
        return False
    target = os.path.realpath(filename)
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return False
    for f in dist.files or []:
        parts = f.parts
        if parts and (parts[0] == top or parts[0] == f"{top}.py"):
            if os.path.realpath(dist.locate_file(f)) == target:
                return True
    return False


@functools.lru_cache(maxsize=None)
def distribution_of(module: str) -> Optional[Tuple[str, str]]:
    """(distribution name, version) providing the Python module ``module``, or None when none does.

    cdp's own modules give ("cdp", cdp's version); a plugin announced through the ``cdp`` entry-point
    group gives its distribution; any other module is looked up in the installed distributions' file
    lists (and must really be the file that was imported).
    """
    top = module.split(".")[0]
    if top == BUILTIN:

        return BUILTIN, __version__
    hit = _entry_point_index().get(top)
    if hit is not None:
        return hit
    for name in _packages_distributions().get(top, []):
        if _provides(name, top):
            return name, importlib.metadata.version(name)
    return None


def component_provenance(model) -> Dict[str, dict]:
    """``{kind: {"name", "class", "distribution", "version"}}`` for the four components of a DensityModel."""
    config = getattr(model, "config", None) or {}
    out: Dict[str, dict] = {}
    for kind in KINDS:
        cls = type(getattr(model, kind))
        dist = distribution_of(cls.__module__)
        name = (config.get(kind) or {}).get("name")
        out[kind] = {
            "name": name if isinstance(name, str) else None,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "distribution": dist[0] if dist else None,
            "version": dist[1] if dist else None,
        }
    return out


def check_provenance(recorded, registry, where: str) -> None:
    """Refuse (CdpError) a model whose plugin package is missing; warn once when its version differs.

    ``recorded``: the checkpoint's ``components`` record (absent in checkpoints written before it
    existed: nothing is checked).  ``registry``: the :class:`~cdp.core.registry.Registry` that will
    build the model.
    """
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise CdpError(f"{where}: checkpoint 'components' must be a mapping")
    differ = []
    for kind in KINDS:
        rec = recorded.get(kind)
        if rec is None:
            continue
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), (str, type(None))) for k in
                                                ("name", "distribution", "version")):
            raise CdpError(f"{where}: checkpoint 'components.{kind}' must map name, distribution and version to strings")
        dist, version, name = rec.get("distribution"), rec.get("version"), rec.get("name")
        if dist is None or dist == BUILTIN or name is None:
            continue
        saved = f"{dist} {version}" if version else dist
        entry = registry.components.get(kind, {}).get(name)
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if entry is None:
            if installed is None:
                raise CdpError(f"{where}: its {kind} '{name}' comes from the plugin package {saved}, which is not "
                               f"installed (pip install '{dist}{'==' + version if version else ''}')")
            raise CdpError(f"{where}: its {kind} '{name}' comes from the plugin package {saved}; {dist} {installed} "
                           f"is installed but registers no {kind} '{name}' (see `cdp plugins list`)")
        module = getattr(entry.factory, "__module__", None)
        if not isinstance(module, str):  # a factory object without a module (functools.partial): nothing to compare
            continue
        now = distribution_of(module)
        if now is None or now[0] != dist:
            differ.append(f"{kind} '{name}' was built by {saved}, now by {now[0] + ' ' + now[1] if now else 'a local module'}")
        elif version is not None and now[1] != version:
            differ.append(f"{kind} '{name}' was built by {saved}, installed is {now[1]}")
    if differ:
        warnings.warn(CdpWarning(f"{where}: {'; '.join(differ)}"), stacklevel=3)


def forget() -> None:
    """Drop the cached distribution lookups (after installing or removing packages in this process)."""
    for fn in (_entry_point_index, _packages_distributions, distribution_of):
        fn.cache_clear()
