"""cdp.cli."""
