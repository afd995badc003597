"""pluggy hook specifications: the one place where cdp's extension points are declared.

Built-in components (``cdp/plugins``) and third-party packages (entry-point group ``cdp``) register
through the same hooks.  A plugin module implements any of them with ``@cdp.core.hookspec.hookimpl``.
"""

from __future__ import annotations

from typing import Callable, Dict

import pluggy

PROJECT = "cdp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cdp_components() -> Dict[str, Dict[str, Callable]]:
    """Return the components this plugin provides as ``{kind: {name: factory}}``.

    ``kind`` is one of ``featurizer``, ``graph``, ``backbone``, ``readout``; ``factory(**params)``
    builds the component (a class is a factory).  A readout factory also receives ``in_spec``, the
    :class:`~cdp.core.components.Spec` produced by the backbone it is attached to.  What a factory builds
    must keep the contract of its kind, the base classes of :mod:`cdp.core.components` (checked when a
    model is assembled; :mod:`cdp.testing` checks the rest in a plugin's own tests).
    Names must be unique per kind across all plugins; a duplicate is reported, not overridden.
    """


@hookspec
def cdp_presets() -> Dict[str, dict]:
    """Return model presets ``{name: config}``, each config as in registry.yaml.

    A config is ``{featurizer, graph, backbone, readout: {name, **params}}`` plus optional ``prior``
    (``{kind: atomic, n_basis: ...}`` or null), ``train`` (training defaults: loss, lr, beta, batch_size,
    probes) and ``description``; a config that fails this check is reported and skipped.  A preset is
    then usable as ``model: <name>`` in a training config and by ``cdp.load_model("<name>")``.  A name
    already taken by another plugin's preset is reported as a duplicate (the first stays); a preset of
    registry.yaml with the same name wins and ``cdp plugins list`` shows the plugin's as shadowed.
    """
