"""ChargE3Net backbone plugin: e3nn gated convolutions, numerically the published model."""

from __future__ import annotations

from cdp.core.hookspec import hookimpl
from cdp.plugins.backbones.chargee3net.backbone import ChargE3NetBackbone
from cdp.plugins.backbones.chargee3net.conv import E3Convolution
from cdp.plugins.backbones.chargee3net.irreps import get_irreps, tp_path_exists
from cdp.plugins.backbones.chargee3net.radial import RadialBasis

__all__ = ["ChargE3NetBackbone", "E3Convolution", "RadialBasis", "get_irreps", "tp_path_exists"]


@hookimpl
def cdp_components():
    return {"backbone": {"chargee3net": ChargE3NetBackbone}}
