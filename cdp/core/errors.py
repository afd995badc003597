"""The one exception type for errors caused by user input (a leaf module: imports nothing of cdp)."""


class CdpError(Exception):
    """An error caused by user input (a file, a config, a structure); printed as one line by the CLI."""


class CdpWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""
