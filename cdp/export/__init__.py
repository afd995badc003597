"""cdp.export: two-stage deployable artifacts (atom encoder, probe decoder) in ONNX, TorchScript or pt2.

``export_model(model, DIR, fmt)`` writes them; ``cdp.export.runtime`` runs them with onnxruntime (or
torch.jit / AOTInductor) behind the same predict/predict_grid interface as :class:`cdp.predict.Predictor`.
"""

from __future__ import annotations

__all__ = ["export_model"]


def export_model(*args, **kwargs):
    """See :func:`cdp.export.exporter.export_model`."""
    from cdp.export.exporter import export_model as _export  # start-up: the exporters load on first use

    return _export(*args, **kwargs)
