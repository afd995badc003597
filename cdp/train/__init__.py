"""cdp.train."""
