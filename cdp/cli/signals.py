"""SIGTERM as an exception: :class:`Terminated` unwinds like Ctrl-C (temp files removed, checkpoints kept).

A leaf module, so the command modules and ``cdp.cli.main`` (also run as ``python -m cdp.cli.main``, i.e.
as ``__main__``) share one class.
"""

from __future__ import annotations

SIGINT_STATUS = 130  # 128 + SIGINT, as a shell reports it
SIGTERM_STATUS = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM, so that it unwinds exactly like Ctrl-C."""


def on_sigterm(signum, frame):
    """A ``signal.signal`` handler raising :class:`Terminated`."""
    raise Terminated()
