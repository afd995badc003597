"""cdp.importers."""
