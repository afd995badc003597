"""``cdp bench``: a thin wrapper over ``python -m benchmarks`` (needs a source checkout holding ``benchmarks/``)."""

from __future__ import annotations

import click

from cdp.core.types import CdpError


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", type=click.Choice(["chargee3net", "graph"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(name, args) -> None:
    """Run benchmark NAME (extra ARGS go to it, e.g. ``cdp bench chargee3net --quick``)."""
    try:
        from benchmarks.__main__ import main  # optional: the benchmarks folder is in a source checkout, not the wheel
    except ImportError:
        raise CdpError("the benchmarks package is not importable: run cdp bench from a source checkout") from None
    main([name, *args])
