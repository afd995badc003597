"""cdp.evaluate."""
