"""The ``sdgen`` command line: flags -> a GenerationRequest -> the library -> paths on stdout.

Pictures' paths go to stdout, one per line in image order, so scripts can consume them; logs and
the progress bar go to stderr. A user mistake exits with status 2 and one line on stderr.
Each command lives in its own module; they all register on the one ``cli`` group.
"""

from __future__ import annotations

import logging
import sys

import click

from sdgen.cli import generate, rank, serve, sweep
from sdgen.cli.common import USAGE_ERROR, cli
from sdgen.errors import SdgenError

__all__ = ["cli", "main"]
_COMMANDS = (generate, rank, serve, sweep)  # imported for their registrations on ``cli``


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns user mistakes into one line and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="sdgen: %(message)s", stream=sys.stderr)
    try:
        cli.main(args=argv, prog_name="sdgen", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as err:  # bad flag, missing argument, unparsable number
        click.echo(f"sdgen: error: {err.format_message()}", err=True)
        return USAGE_ERROR
    except SdgenError as err:
        click.echo(f"sdgen: error: {err}", err=True)
        return USAGE_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("sdgen: interrupted", err=True)
        return 130
    except OSError as err:  # an output folder that cannot be made or written, a full disk...
        where = f": {err.filename}" if err.filename else ""
        click.echo(f"sdgen: error: {err.strerror or err}{where}", err=True)
        return 1
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        click.echo("sdgen: error: out of memory: try a smaller size or fewer pictures", err=True)
        return 1
    return 0


def _out_of_memory(err: Exception) -> bool:
    """Python's MemoryError, torch's CUDA out-of-memory error, or its CPU allocator's "can't
    allocate memory"."""
    import torch

    return isinstance(err, MemoryError | torch.OutOfMemoryError) or (
        "can't allocate memory" in str(err)
    )
