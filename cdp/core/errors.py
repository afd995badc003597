"""The one exception type for errors caused by user input (a leaf module: imports nothing of cdp)."""


class CdpError(Exception):
    """An error caused by user input (a file, a config, a structure); printed as one line by the CLI."""
