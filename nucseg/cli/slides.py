"""`nucseg slide info`, and the slide options `nucseg predict` takes (`slide_options`)."""
from __future__ import annotations

import functools
import sys

import click

from nucseg.cli.common import friendly_errors, main


def slide_options(fn):
    """Add --mpp, --tissue-mask and --block-size to a command; they reach it as one
    `slide_opts` (nucseg.prediction.slides.SlideOptions) keyword."""
    @functools.wraps(fn)
    def wrapper(*args, mpp=None, magnification=None, tissue_mask=None, block_size=None,
                **kwargs):
        from nucseg.prediction.slides import SlideOptions

        if mpp and magnification:
            raise click.UsageError("give --mpp or --magnification, not both")
        kwargs["slide_opts"] = SlideOptions(mpp=mpp, magnification=magnification,
                                            tissue_mask=tissue_mask, block_size=block_size)
        return fn(*args, **kwargs)

    options = [
        click.option("--mpp", type=click.FloatRange(0, min_open=True),
                     help="Pixel size in um/px of the inputs (slides: level 0), overriding "
                          "their own (required for a slide without one; 0.25 = 40x, 0.5 = "
                          "20x). Tiles at another pixel size than the model's are resampled "
                          "to it and their nuclei mapped back."),
        click.option("--magnification", type=click.FloatRange(0, min_open=True),
                     help="The same as --mpp 10/MAG (40 -> 0.25 um/px, 20 -> 0.5)."),
        click.option("--tissue-mask", type=click.Path(exists=True),
                     help="Slides: a tissue mask image (nonzero = tissue, the slide's aspect "
                          "ratio, any resolution) or a directory of <stem>_tissue.png; "
                          "default: detected (Otsu on saturation)."),
        click.option("--block-size", type=click.IntRange(256), default=2048,
                     show_default=True,
                     help="Slides: block core size in pixels at the model's resolution."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@main.group("slide")
def slide():
    """Whole-slide images (OpenSlide formats, pyramidal and large TIFFs)."""


@slide.command("info")
@click.argument("file", type=click.Path())
@click.option("--mpp", type=click.FloatRange(0, min_open=True),
              help="Level-0 pixel size in um/px, overriding the slide's own.")
@friendly_errors
def info(file, mpp):
    """Print a slide's reader, vendor, size, levels, pixel size and magnification.

    A slide without a pixel size is printed and then reported as an error (status 2)
    unless --mpp gives one: `nucseg predict` needs it to match the model's resolution.

    \b
    Example:
      nucseg slide info scan.svs
      nucseg slide info export.tif --mpp 0.5
    """
    from nucseg.io import InputError
    from nucseg.prediction.slides import is_slide, open_slide

    reader = open_slide(file, mpp, require_mpp=False)
    try:
        meta = reader.info
        click.echo(f"file: {file}")
        click.echo(f"reader: {meta.reader}")
        click.echo(f"vendor: {meta.vendor}")
        click.echo(f"size: {meta.width} x {meta.height} px (level 0, width x height)")
        click.echo(f"levels: {len(meta.dimensions)}")
        for k, ((w, h), d) in enumerate(zip(meta.dimensions, meta.downsamples)):
            at = f", {meta.mpp[0] * d:.4g} um/px" if meta.mpp else ""
            click.echo(f"  level {k}: {w} x {h} px, downsample {d:.4g}{at}")
        if meta.mpp:
            click.echo(f"pixel size: {meta.mpp[0]:.4g} x {meta.mpp[1]:.4g} um/px "
                       f"({meta.mpp_source})")
        else:
            click.echo("pixel size: unknown")
        magnification = f"{meta.magnification:g}x" if meta.magnification else "unknown"
        click.echo(f"magnification: {magnification}")
        click.echo(f"predicted as: {'slide (in blocks)' if is_slide(file) else 'tile (whole)'}")
    finally:
        reader.close()
    if not meta.mpp:
        problem = InputError(file, "the slide has no pixel size (um/px): give it with --mpp")
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
