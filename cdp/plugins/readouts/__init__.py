"""cdp.plugins.readouts."""
