"""cdp.plugins.featurizers."""
