"""`nucseg score` and `nucseg compare`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from nucseg.cli.common import friendly_errors, main


def _emit_text(text: str, output) -> Path | None:
    """Print `text` to stdout, or write it atomically to `output` and return the path its
    run record goes to (<name>_record.yaml beside it)."""
    if not output:
        click.echo(text, nl=False)
        return None
    from nucseg.io import atomic_path

    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    out = Path(output)
    return out.with_name(f"{out.stem}_record.yaml")


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
              help="Comma-separated organs seen in training (with --metadata). Default: "
                   "the organs of the images the model trained on, read from the prediction "
                   "records (run directory or shipped model); without either, no seen/unseen "
                   "groups are reported.")
@click.option("--min-score", type=click.FloatRange(0, 1), metavar="T",
              help="Count only predicted nuclei with score >= T (the `score` column of the "
                   "<stem>_nuclei.csv beside each map), to choose --min-confidence on "
                   "validation tiles from one low-threshold prediction.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write here (plus <name>_record.yaml beside it) instead of stdout.")
@friendly_errors
def score(gt, pred, fmt, metadata, seen_organs, min_score, output):
    """Score predicted label maps against ground truth: AJI, AJI+, PQ, DQ, SQ, Dice, Dice2.

    Metrics follow the HoVer-Net reference definitions (see docs/scoring.md). Every file must
    find its partner; unreadable files are each reported on one line and nothing is written.

    \b
    Example:
      nucseg score --gt labels/ --pred predictions/ --format json -o scores.json
      nucseg score --gt labels/ --pred predictions/ --metadata metadata.csv \\
          --seen-organs breast,kidney,liver,prostate
      # choose a confidence threshold on validation tiles predicted with a low one
      nucseg predict val/images -m runs/paper --min-confidence 0.3 -o val_pred/
      for t in 0.4 0.5 0.6 0.7 0.8; do
        nucseg score --gt val/labels --pred val_pred --min-score $t | tail -1; done
    """
    from nucseg.io import make_record, write_record
    from nucseg.score_formats import render
    from nucseg.scoring import score_directories

    seen = [o.strip() for item in seen_organs for o in item.split(",") if o.strip()]
    if seen and not metadata:
        raise ValueError("--seen-organs needs --metadata (the organ of each image)")
    result, failures = score_directories(gt, pred, metadata, seen or None,
                                         min_score=min_score)
    if metadata and result.get("seen_organs_from") is None:
        click.echo("note: no seen/unseen groups: the predictions do not say what the model "
                   "trained on; give --seen-organs", err=True)
    elif metadata and not seen:
        click.echo(f"seen organs from {result['seen_organs_from']}: "
                   + ", ".join(result["groups"]["seen"]["organs"]), err=True)
    if failures:
        for line in failures:
            click.echo(f"error: {line}", err=True)
        if len(failures) > 1:
            click.echo(f"{len(failures)} of {len(failures) + result['n_images']} image pairs "
                       "could not be scored; nothing written", err=True)
        sys.exit(1)
    record_path = _emit_text(render(result, fmt), output)
    if record_path is None:
        return
    write_record(record_path, make_record(
        "score", [p for p in (gt, pred, metadata) if p],
        {"gt": gt, "pred": pred, "format": fmt, "metadata": metadata, "seen_organs": seen,
         "min_score": min_score},
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
    from nucseg.io import make_record, write_record

    results = compare_files(table_a, table_b)
    record_path = _emit_text(render_comparison(results, fmt, str(table_a), str(table_b)), output)
    if record_path is None:
        return
    write_record(record_path, make_record(
        "compare", [table_a, table_b], {"format": fmt}, output=output, results=results))
    click.echo(f"wrote {output}", err=True)
