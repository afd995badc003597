"""cdp.plugins.graphs."""
