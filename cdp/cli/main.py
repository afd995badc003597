"""The ``cdp`` command: a click group whose subcommands live in one small module each.

Subcommands are imported lazily, so a broken or slow module never breaks ``cdp --help`` or the others;
user errors (:class:`~cdp.core.types.CdpError`) print one line and exit with status 2.  SIGTERM (what
schedulers send) is handled as Ctrl-C: it raises :class:`Terminated`, a KeyboardInterrupt, so temp files
are removed and a training run keeps its last checkpoint and prints how to resume (exit status 130 for Ctrl-C, 143
for SIGTERM, as shells report them).
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import warnings
from typing import Dict, Optional

import click

from cdp.cli.signals import SIGINT_STATUS, SIGTERM_STATUS, Terminated, on_sigterm

from cdp._version import __version__
from cdp.core.errors import CdpError, CdpWarning
from cdp.core.malloc import keep_freed_memory

# command name -> (module, one-line help shown in `cdp --help`)
COMMANDS: Dict[str, tuple] = {
    "plugins": ("cdp.cli.plugins", "List registered plugins, components and presets."),
    "inspect": ("cdp.cli.inspect", "Describe a CHGCAR or cube file."),
    "import": ("cdp.cli.import_cmd", "Convert a published checkpoint into a cdp checkpoint."),
    "predict": ("cdp.cli.predict", "Predict densities on full grids for new structures."),
    "data": ("cdp.cli.data", "Make reference densities with DFT and describe datasets."),
    "train": ("cdp.cli.train", "Train a model from a config."),
    "evaluate": ("cdp.cli.evaluate", "Evaluate a model on full reference grids."),
    "compare": ("cdp.cli.compare", "Train and evaluate several models side by side."),
    "export": ("cdp.cli.export", "Export a model to ONNX, TorchScript or pt2."),
    "models": ("cdp.cli.models", "List the pretrained models shipped with cdp and their model cards."),
    "bench": ("cdp.cli.bench", "Run the performance benchmarks."),
    "experiment": ("cdp.cli.experiment", "Run the paper's experiments: L-sweep, scaling."),
    "scf": ("cdp.cli.scf", "Start a PySCF SCF from a predicted density and compare guesses."),
}


class LazyGroup(click.Group):
    """A group that imports each subcommand's module only when it is used."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        module_name, help_text = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _unavailable(name, help_text)
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, help_text: str) -> click.Command:
    """A clearly-labelled placeholder for a command this installation does not provide yet."""

    @click.command(name, help=f"{help_text} (not available in this version)",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def stub():
        raise CdpError(f"`cdp {name}` is not implemented in cdp {__version__} yet")

    return stub


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="cdp")
def cli() -> None:
    """cdp: machine-learned electron charge density prediction (ChargE3Net, DeepDFT)."""
    keep_freed_memory()  # reuse per-batch temporaries instead of page-faulting them every batch


_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None):
    """cdp's own warnings (:class:`CdpWarning`) as ``warning: ...``; others as Python formats them."""
    if issubclass(category, CdpWarning):
        return f"warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def main(argv=None) -> int:
    """Entry point of the console script: one-line errors, non-zero exit codes, no tracebacks for user errors."""
    warnings.formatwarning = _one_line_warning
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv) -> int:
    try:
        status = cli.main(args=argv, prog_name="cdp", standalone_mode=False)
        if type(status) is int and status != 0:  # click hands back a command's click.exceptions.Exit(code)
            return status
    except CdpError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, EOFError):  # click turns any EOFError into Abort: a file ended early
            click.echo(f"error: unexpected end of file ({exc.__cause__ or 'EOFError'})", err=True)
            return 2
        if isinstance(exc.__cause__, Terminated):
            click.echo("terminated", err=True)
            return SIGTERM_STATUS
        click.echo("aborted", err=True)
        return SIGINT_STATUS
    except Terminated:
        click.echo("terminated", err=True)
        return SIGTERM_STATUS
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return SIGINT_STATUS
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
