"""Helpers shared by the test modules, imported as ``tests.helpers.<module>`` (never as top-level names)."""
