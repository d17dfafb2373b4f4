"""The `nucseg` Click group and what every command shares: error reporting, batch endings."""
from __future__ import annotations

import functools
import sys

import click

from nucseg._version import __version__
from nucseg.io import InputError, os_error_line


def friendly_errors(fn):
    """Turn expected failures into one clear line and exit status 2 (no traceback); Ctrl-C,
    SIGTERM and an interrupt signal end with one line and status 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (InputError, ValueError, ArithmeticError) as exc:   # e.g. a loss that became NaN
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            click.echo(f"error: {os_error_line(exc)}", err=True)
            sys.exit(2)
        except MemoryError:
            click.echo("error: out of memory (an input or option asks for more memory than "
                       "this machine has)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def claims_outdir(name: str):
    """Decorator: the command's output directory (parameter `name`) is created, locked against
    a second nucseg process and cleared of temp files a killed run left (nucseg.outdir), for
    the whole command. Put it under @friendly_errors."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from nucseg.outdir import claim

            if not kwargs.get(name):
                return fn(*args, **kwargs)
            with claim(kwargs[name], log=lambda msg: click.echo(msg, err=True)):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


def plain_warnings() -> None:
    """Warnings as one `warning: <message>` line (no source line, no category)."""
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


def finish_batch(failures: list[str], total: int) -> None:
    """End a batch command: list what failed, exit 1 if anything did."""
    if failures:
        click.echo(f"{len(failures)} of {total} inputs failed:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="nucseg")
def main():
    """nucseg: nuclei instance segmentation in H&E histology (Mask R-CNN+).

    \b
    Pipeline (each step reads and writes files, so steps chain in shell scripts):
      nucseg hstain      RGB tiles -> hematoxylin maps
      nucseg distance    label maps -> distance maps, or a U-Net that predicts them
      nucseg train       staged Mask R-CNN+ training
      nucseg predict     detection with TTA and model ensembles, merged
      nucseg score       AJI, AJI+, PQ, DQ, SQ, Dice against ground truth
      nucseg models      the models shipped with nucseg (predict runs the default one)
    """
    plain_warnings()




def require_inputs(files, what: str):
    """The expanded input list, or a clear error when a directory held nothing usable."""
    if not files:
        raise ValueError(f"no {what} found in the given paths")
    return files


def dask_option(fn):
    """--dask local:N | tcp://HOST:PORT (nucseg.prediction.distributed)."""
    from nucseg.prediction.distributed import DASK_HELP

    return click.option("--dask", metavar="local:N|tcp://HOST:PORT", help=DASK_HELP)(fn)
