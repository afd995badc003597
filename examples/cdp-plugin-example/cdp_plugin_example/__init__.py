"""Example third-party plugin for cdp."""
