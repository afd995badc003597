"""cdp.io."""
