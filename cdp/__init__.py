"""cdp: machine-learned electron charge density prediction (ChargE3Net, DeepDFT) as a plugin framework.

``cdp.load_model(...)`` returns a :class:`cdp.predict.Predictor`; see the README for the CLI.
"""

from cdp._version import __version__

__all__ = ["__version__", "load_model", "Predictor"]


def __getattr__(name):
    # Lazy, so that `import cdp` (and `cdp --help`) stay cheap.
    if name in ("load_model", "Predictor"):
        from cdp import predict  # start-up: torch loads on first use, not on `import cdp`

        return getattr(predict, name)
    raise AttributeError(f"module 'cdp' has no attribute {name!r}")
