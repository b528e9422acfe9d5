"""The entry point: runs the application and turns errors into one line (user errors) or a
bug report (anything else)."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from .common import app

# Errors that report the user's data, arguments or machine rather than a bug: file-system and
# network problems (OSError) and bad values (ValueError, raised for wrong arguments and
# settings), besides every error class defined in desertseg (see desertseg.errors).
EXPECTED_ERRORS = (OSError, ValueError, MemoryError)
DEBUG_ENV = "DESERTSEG_DEBUG"


def _expected(e: BaseException) -> bool:
    """Whether ``e`` is a problem the user can fix (one line) rather than a bug (a report)."""
    if isinstance(e, EXPECTED_ERRORS) or any(c.__module__.startswith("desertseg.") for c in type(e).__mro__):
        return True
    # Library errors that name the machine or a setting: out of GPU memory; a Lightning setting
    # the machine cannot satisfy (e.g. --accelerator gpu without one). Loaded, if raised.
    torch, fabric = sys.modules.get("torch"), sys.modules.get("lightning.fabric.utilities.exceptions")
    return (torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)) or (fabric is not None and isinstance(e, fabric.MisconfigurationException))


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"Print the full traceback of any error (or set {DEBUG_ENV}=1).")) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"  # main() reads it when an error arrives; child processes inherit it


def main() -> None:
    """Entry point: a problem the user can fix becomes one ``error: ...`` line and exit 2; any
    other exception is a bug, reported as one ``internal error`` line and exit 1 so that it is
    never mistaken for a user mistake. ``--debug`` / ``DESERTSEG_DEBUG=1`` add the traceback."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if _debug():
            traceback.print_exc()
        if _expected(e):
            msg = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)) or type(e).__name__  # MemoryError has no message
            typer.echo(f"error: {msg}", err=True)
            sys.exit(2)
        typer.echo(f"internal error: {type(e).__name__}: {e}", err=True)
        hint = "please report it with the traceback above" if _debug() else f"run again with --debug (or {DEBUG_ENV}=1) to see the traceback, and please report it"
        typer.echo(f"This is a bug in desertseg, not a problem with your input; {hint}.", err=True)
        sys.exit(1)
