"""cdp: machine-learned electron charge density prediction (ChargE3Net, DeepDFT) as a plugin framework."""

__version__ = "0.1.0"
