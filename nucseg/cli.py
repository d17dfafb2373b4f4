"""The `nucseg` command line: parse options, call library functions, report errors.

No logic lives here; each command is a thin function over a library call that the tests call
directly. Library errors (`nucseg.io.InputError`, `ValueError`) become one `error:` line and a
non-zero exit.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

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


# Commands are added below, one small function each (keep this file thin).
# --- commands ---

@main.command("score")
@click.option("--gt", "gt", required=True, type=click.Path(),
              help="Ground-truth label map, or a directory of them.")
@click.option("--pred", required=True, type=click.Path(),
              help="Predicted label map, or a directory; paired with --gt by file stem "
                   "(a trailing '_labels' is ignored, e.g. <stem>_labels.tif).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="json: per-image scores, means, groups; csv: per image.")
@click.option("--metadata", type=click.Path(dir_okay=False),
              help="CSV with columns id, organ (e.g. MoNuSeg's metadata.csv): adds per-organ "
                   "means and seen/unseen organ groups.")
@click.option("--seen-organs", multiple=True, metavar="ORGANS",
              help="Comma-separated organs seen in training (with --metadata); "
                   "default: breast,kidney,liver,prostate (the MoNuSeg training organs).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write here (plus <name>_record.yaml beside it) instead of stdout.")
@friendly_errors
def score(gt, pred, fmt, metadata, seen_organs, output):
    """Score predicted label maps against ground truth: AJI, AJI+, PQ, DQ, SQ, Dice, Dice2.

    Metrics follow the HoVer-Net reference definitions (see docs/scoring.md). Every file must
    find its partner; unreadable files are each reported on one line and nothing is written.

    \b
    Example:
      nucseg score --gt labels/ --pred predictions/ --format json -o scores.json
      nucseg score --gt labels/ --pred predictions/ --metadata metadata.csv \\
          --seen-organs breast,kidney,liver,prostate
    """
    from nucseg.io import atomic_path, make_record, write_record
    from nucseg.score_formats import render
    from nucseg.scoring import score_directories

    seen = [o.strip() for item in seen_organs for o in item.split(",") if o.strip()]
    if seen and not metadata:
        raise ValueError("--seen-organs needs --metadata (the organ of each image)")
    result, failures = score_directories(gt, pred, metadata, seen or None)
    if failures:
        for line in failures:
            click.echo(f"error: {line}", err=True)
        if len(failures) > 1:
            click.echo(f"{len(failures)} of {len(failures) + result['n_images']} image pairs "
                       "could not be scored; nothing written", err=True)
        sys.exit(1)
    text = render(result, fmt)
    if not output:
        click.echo(text, nl=False)
        return
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    out = Path(output)
    write_record(out.with_name(f"{out.stem}_record.yaml"), make_record(
        "score", [p for p in (gt, pred, metadata) if p],
        {"gt": gt, "pred": pred, "format": fmt, "metadata": metadata, "seen_organs": seen},
        output=output, n_images=result["n_images"], mean=result["mean"]))
    click.echo(f"scored {result['n_images']} image(s); wrote {output}", err=True)


@main.command("compare")
@click.argument("table_a", metavar="A", type=click.Path(dir_okay=False))
@click.argument("table_b", metavar="B", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write here (plus <name>_record.yaml beside it) instead of stdout.")
@friendly_errors
def compare(table_a, table_b, fmt, output):
    """Wilcoxon signed-rank test per metric between two per-image score tables.

    A and B are outputs of `nucseg score --format csv` (or json) on the same images; rows
    are paired by image. Reports the median of B - A and the two-sided p-value.

    \b
    Example:
      nucseg score --gt labels/ --pred maskrcnn/ --format csv -o a.csv
      nucseg score --gt labels/ --pred maskrcnn_plus/ --format csv -o b.csv
      nucseg compare a.csv b.csv
    """
    from nucseg.compare import compare_files, render_comparison
    from nucseg.io import atomic_path, make_record, write_record

    results = compare_files(table_a, table_b)
    text = render_comparison(results, fmt, str(table_a), str(table_b))
    if not output:
        click.echo(text, nl=False)
        return
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    out = Path(output)
    write_record(out.with_name(f"{out.stem}_record.yaml"), make_record(
        "compare", [table_a, table_b], {"format": fmt}, output=output, results=results))
    click.echo(f"wrote {output}", err=True)


@main.group("distance")
def distance():
    """Distance maps: from label maps (ground truth) or predicted by a U-Net."""


@main.group("import")
def import_group():
    """Convert public data sets' annotations into nucseg label maps."""


@main.command("hstain")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for <stem>_hstain.tif and hstain_record.yaml.")
@click.option("--stain-matrix", type=click.Path(dir_okay=False),
              help="3x3 text/CSV file: rows H, E, third stain; columns R, G, B optical density "
                   "(default: Ruifrok-Johnston H&E-DAB, as scikit-image).")
@friendly_errors
def hstain(images, outdir, stain_matrix):
    """Hematoxylin optical density of RGB tiles (Ruifrok-Johnston colour deconvolution).

    IMAGES are files or directories of RGB TIFF/PNG/JPEG tiles. Writes float32 TIFFs equal to
    scikit-image's rgb2hed(image)[..., 0].

    \b
    Example:
      nucseg hstain examples/monuseg_crop.png -o out/
      nucseg hstain tiles/ -o out/ --stain-matrix my_stains.csv
    """
    from nucseg.io import expand_inputs, make_record, run_batch, write_record
    from nucseg.stain import hstain_file, read_stain_matrix

    stains = read_stain_matrix(stain_matrix) if stain_matrix else None
    files = _require_inputs(expand_inputs(images), "images")
    written = []
    failures = run_batch(files, lambda f: written.append(hstain_file(f, outdir, stains)),
                         desc="hstain")
    write_record(Path(outdir) / "hstain_record.yaml", make_record(
        "hstain", files, {"outdir": outdir, "stain_matrix": stain_matrix},
        stain_vectors=stains if stains is not None else "ruifrok-johnston (skimage rgb2hed)",
        outputs=written, failures=failures))
    click.echo(f"wrote {len(written)} hematoxylin map(s) to {outdir}")
    finish_batch(failures, len(files))


@distance.command("labels")
@click.argument("labels", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for <stem>_dist.tif and distance_labels_record.yaml.")
@friendly_errors
def distance_labels(labels, outdir):
    """Per-nucleus Euclidean distance maps from instance label maps (the training channel).

    Each nucleus pixel gets its distance to the nearest pixel outside that nucleus, so touching
    nuclei stay apart. A trailing "_labels" in the input stem is dropped from the output name.

    \b
    Example:
      nucseg distance labels examples/monuseg_crop_labels.png -o out/
      nucseg distance labels labels_dir/ -o dist_dir/
    """
    from nucseg.distance import distance_file
    from nucseg.io import LABEL_EXTENSIONS, expand_inputs, make_record, run_batch, write_record

    files = _require_inputs(expand_inputs(labels, LABEL_EXTENSIONS), "label maps")
    written = []
    failures = run_batch(files, lambda f: written.append(distance_file(f, outdir)),
                         desc="distance")
    write_record(Path(outdir) / "distance_labels_record.yaml", make_record(
        "distance labels", files, {"outdir": outdir}, outputs=written, failures=failures))
    click.echo(f"wrote {len(written)} distance map(s) to {outdir}")
    finish_batch(failures, len(files))


@import_group.command("monuseg")
@click.argument("xml_files", metavar="XML...", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for <stem>_labels.tif and import_monuseg_record.yaml.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, exists=True),
              help="Directory of the tiles: each label map takes the size of the tile with the "
                   "XML file's stem.")
@click.option("--size", default="1000x1000", show_default=True,
              help="HEIGHTxWIDTH of the label maps when --images is not given.")
@friendly_errors
def import_monuseg(xml_files, outdir, images_dir, size):
    """MoNuSeg / Aperio XML polygon annotations -> instance label maps (uint16 TIFF).

    Vertices are 1-based (shifted by -1 px before filling); ids 1..N follow the file order;
    where polygons overlap the first region keeps the pixel; regions with fewer than 3
    vertices are skipped and counted.

    \b
    Example:
      nucseg import monuseg annotations/*.xml --images images/ -o labels/
    """
    from nucseg.data.monuseg import import_monuseg_file, parse_size
    from nucseg.io import expand_inputs, make_record, run_batch, write_record

    shape = parse_size(size)
    files = _require_inputs(expand_inputs(xml_files, (".xml",)), "XML files")
    summary = []

    def work(xml_path):
        out, result = import_monuseg_file(xml_path, outdir, images_dir, shape)
        summary.append({"input": xml_path, "output": out, "regions": result.n_regions,
                        "nuclei": result.n_nuclei,
                        "skipped_fewer_than_3_vertices": result.skipped_few_vertices,
                        "hidden_by_earlier_regions": len(result.empty_regions)})

    failures = run_batch(files, work, desc="import")
    write_record(Path(outdir) / "import_monuseg_record.yaml", make_record(
        "import monuseg", files, {"outdir": outdir, "images": images_dir, "size": size},
        files=summary, failures=failures))
    for item in summary:
        notes = ""
        if item["skipped_fewer_than_3_vertices"] or item["hidden_by_earlier_regions"]:
            notes = (f" ({item['skipped_fewer_than_3_vertices']} region(s) with < 3 vertices "
                     f"skipped, {item['hidden_by_earlier_regions']} hidden by earlier regions)")
        click.echo(f"{Path(item['output']).name}: {item['nuclei']} nuclei{notes}")
    skipped = sum(item["skipped_fewer_than_3_vertices"] for item in summary)
    click.echo(f"wrote {len(summary)} label map(s) to {outdir}; "
               f"{skipped} region(s) with < 3 vertices skipped")
    finish_batch(failures, len(files))


def _require_inputs(files, what: str):
    """The expanded input list, or a clear error when a directory held nothing usable."""
    if not files:
        raise ValueError(f"no {what} found in the given paths")
    return files

