"""cdp.export."""
