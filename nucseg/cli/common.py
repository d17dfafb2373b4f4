"""The `nucseg` Click group and what every command shares: error reporting, batch endings."""
from __future__ import annotations

import functools
import sys

import click

from nucseg._version import __version__


def friendly_errors(fn):
    """Turn expected failures into one clear line and exit status 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from nucseg.io import InputError

        try:
            return fn(*args, **kwargs)
        except (InputError, ValueError, FileNotFoundError, FileExistsError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    return wrapper


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
    """




def require_inputs(files, what: str):
    """The expanded input list, or a clear error when a directory held nothing usable."""
    if not files:
        raise ValueError(f"no {what} found in the given paths")
    return files
