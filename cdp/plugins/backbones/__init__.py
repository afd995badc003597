"""cdp.plugins.backbones."""
