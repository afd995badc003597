"""cdp.plugins."""
