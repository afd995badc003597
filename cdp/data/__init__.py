"""cdp.data."""
