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

@main.command("train")
@click.option("-o", "--run-dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: config.yaml, train.yaml, checkpoints, losses.csv, run.yaml.")
@click.option("--images", type=click.Path(file_okay=False, exists=True),
              help="Directory of RGB training images.")
@click.option("--labels", type=click.Path(file_okay=False, exists=True),
              help="Directory of instance label maps, paired with the images by file stem.")
@click.option("--hstain", type=click.Path(file_okay=False, exists=True),
              help="Hematoxylin maps (default: computed from the RGB).")
@click.option("--distance", type=click.Path(file_okay=False, exists=True),
              help="Distance maps (default: computed from the ground-truth labels).")
@click.option("--classes", type=click.Path(dir_okay=False, exists=True),
              help="Class table CSV (image,label,class_id[,class_name]), e.g. from "
                   "`nucseg import pannuke`; sets NUM_CLASSES to 1 + classes.")
@click.option("--config", "config_spec", default="paper", show_default=True,
              metavar="PRESET|YAML", help="paper, ren, matterport or a config YAML.")
@click.option("--backbone", type=click.Choice(["resnet50", "resnet101"]))
@click.option("--name", help="Model NAME (names the checkpoints).")
@click.option("--schedule", type=click.Choice(["paper", "matterport"]), default="paper",
              show_default=True, help="paper: Adam, 4 stages; matterport: SGD heads/4+/all.")
@click.option("--stage", default="all", show_default=True, metavar="N|all",
              help="Run one stage of the schedule (1-4 paper, 1-3 matterport) or all.")
@click.option("--epochs", metavar="E1,E2,...",
              help="Epochs per stage (default paper 5,35,5,5; matterport 20,20,20).")
@click.option("--steps-per-epoch", type=click.IntRange(1), help="Default: STEPS_PER_EPOCH.")
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True),
              help="Base learning rate (default: LEARNING_RATE).")
@click.option("--layers", metavar="PRESET|REGEX",
              help="Train these layers in every stage: heads, 3+, 4+, 5+, all, or a regex.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), help="Override the schedule's.")
@click.option("--init", default="none", show_default=True, metavar="PATH|none|last",
              help="Starting weights: a Matterport .h5 (heads excluded when the class count "
                   "differs), none, or last (= --resume).")
@click.option("--exclude", multiple=True, metavar="LAYER", help="Layers not to load from --init.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir after its newest "
                                               "checkpoint, inside its stage.")
@click.option("--folds", metavar="organ|K", help="Train one model per fold into sub-directories.")
@click.option("--metadata", type=click.Path(dir_okay=False, exists=True),
              help="CSV with columns id, organ (for --folds organ).")
@click.option("--fill-holes", is_flag=True, help="Fill holes in instance masks.")
@click.option("--split-components", is_flag=True,
              help="Give each connected component of an instance its own id.")
@click.option("--normalize", is_flag=True,
              help="Per-image zero-mean unit-variance instead of MEAN_PIXEL subtraction.")
@click.option("--crop-size", type=click.IntRange(64), help="Random crop side (default: "
                                                            "IMAGE_MIN_DIM, 256 paper).")
@click.option("--no-flips", is_flag=True)
@click.option("--no-rotate", is_flag=True)
@click.option("--no-brightness", is_flag=True)
@click.option("--blur", is_flag=True, help="Add Gaussian blur (RGB only).")
@click.option("--checkpoint-every", type=click.IntRange(1), default=1, show_default=True,
              help="Save every N epochs (and at every stage end).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True)
@friendly_errors
def train(run_dir, images, labels, hstain, distance, classes, config_spec, backbone, name,
          schedule, stage, epochs, steps_per_epoch, learning_rate, layers, optimizer, init,
          exclude, resume, folds, metadata, fill_holes, split_components, normalize, crop_size,
          no_flips, no_rotate, no_brightness, blur, checkpoint_every, workers, seed,
          no_progress):
    """Train Mask R-CNN+ with the paper's staged schedule (or Matterport's).

    Ctrl-C leaves the last complete checkpoint; --resume continues from it.

    \b
    Example:
      nucseg train --images data/images --labels data/labels -o runs/paper
      nucseg train --images data/images --labels data/labels -o runs/ens \\
          --folds organ --metadata data/metadata.csv
      nucseg train -o runs/paper --resume
    """
    from nucseg.train import TrainOptions, parse_epochs, train_command

    augment = {"flips": not no_flips, "rotate": not no_rotate,
               "brightness_contrast": not no_brightness, "blur": blur}
    if crop_size:
        augment["crop_size"] = crop_size
    options = TrainOptions(schedule=schedule, stage=stage, epochs=parse_epochs(epochs),
                           steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                           layers=layers, optimizer=optimizer, init=init, exclude=list(exclude),
                           checkpoint_every=checkpoint_every, progress=not no_progress,
                           augment=augment, loader={"normalize": normalize, "workers": workers})
    try:
        results = train_command(run_dir, images, labels, hstain, distance, classes, config_spec,
                                backbone, name, folds, metadata, resume, seed, options,
                                {"fill_holes": fill_holes, "split_components": split_components},
                                log=lambda msg: click.echo(msg, err=True))
    except KeyboardInterrupt:
        click.echo("interrupted: the last complete checkpoint is kept; continue with --resume",
                   err=True)
        sys.exit(130)
    for r in results:
        click.echo(f"{r['run_dir']}: epoch {r['epoch']}, checkpoint {r['checkpoint']}")


@main.group("model")
def model_group():
    """The Mask R-CNN(+) model: structure and parameter counts."""


@model_group.command("summary")
@click.option("--config", "config_spec", metavar="PRESET|YAML", default="matterport",
              show_default=True, help="A preset (matterport, paper, ren) or a config YAML.")
@click.option("--backbone", type=click.Choice(["resnet50", "resnet101"]),
              help="Override BACKBONE.")
@click.option("--classes", type=click.IntRange(1), help="Override NUM_CLASSES (incl. background).")
@click.option("--channels", type=click.IntRange(1),
              help="Override IMAGE_CHANNEL_COUNT (not 3 adds the PREPROC layer).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@friendly_errors
def model_summary(config_spec, backbone, classes, channels, as_json):
    """Parameter counts (total, trainable) and the weighted layers of a model.

    Builds the inference graph (a few seconds, no image is processed). Layer and weight names
    are Matterport's, in the order of a Matterport weight file.

    \b
    Example:
      nucseg model summary --config paper --backbone resnet101
      nucseg model summary --classes 81 --json
    """
    import json

    from nucseg.mrcnn.config import load_config

    overrides = {key: value for key, value in (("BACKBONE", backbone), ("NUM_CLASSES", classes))
                 if value is not None}
    config = load_config(config_spec, **overrides)
    if channels:  # only shapes matter for a summary: cut or zero-pad the means
        means = list(config.MEAN_PIXEL[:channels]) + [0.0] * (channels - config.MEAN_PIXEL.size)
        config = config.copy(IMAGE_CHANNEL_COUNT=channels, MEAN_PIXEL=means)
    from nucseg.mrcnn.model import format_summary, model_summary as summarize  # loads TF

    summary = summarize(config)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))


def _merge_options(fn):
    """Options shared by `predict` and `merge` (how members become nuclei, what is written)."""
    options = [
        click.option("--merge", "merge_method", type=click.Choice(["vote", "mask-nms"]),
                     default="vote", show_default=True,
                     help="vote: average voting (Mask R-CNN+); mask-nms: MoNuSeg rank-6 merge."),
        click.option("--iou-threshold", type=click.FloatRange(0, 1, max_open=True),
                     help="Grouping overlap (default: vote 0.7 box IoU, mask-nms 0.5 mask IoU)."),
        click.option("--iou-type", type=click.Choice(["box", "mask"]), default="box",
                     show_default=True, help="Overlap used to group detections (vote)."),
        click.option("--min-members", type=click.IntRange(1),
                     help="Members that must see a nucleus (default: a majority)."),
        click.option("--mask-threshold", type=click.FloatRange(0, 1, max_open=True),
                     help="Threshold of the averaged soft mask (default: vote 0.7, "
                          "mask-nms 0.5)."),
        click.option("--min-area", type=click.IntRange(0), default=50, show_default=True,
                     help="Remove nuclei smaller than this (pixels)."),
        click.option("--geojson/--no-geojson", default=True, show_default=True,
                     help="Write <stem>.geojson (QuPath)."),
        click.option("--gzip", "gzip_geojson", is_flag=True, help="Write <stem>.geojson.gz."),
        click.option("--csv/--no-csv", "write_csv", default=True, show_default=True,
                     help="Write <stem>_nuclei.csv."),
        click.option("--overlay", is_flag=True, help="Write <stem>_overlay.png."),
        click.option("--hstain-dir", type=click.Path(file_okay=False),
                     help="Read <stem>_hstain.tif from here instead of computing it."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _predict_options(merge_method, iou_threshold, iou_type, min_members, mask_threshold,
                     min_area, geojson, gzip_geojson, write_csv, overlay, **more):
    from nucseg.predict import PredictOptions

    return PredictOptions(merge=merge_method, iou_threshold=iou_threshold, iou_type=iou_type,
                          min_members=min_members, mask_threshold=mask_threshold,
                          min_area=min_area, geojson=geojson, gzip=gzip_geojson, csv=write_csv,
                          overlay=overlay, **more)


@main.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--model", "models", multiple=True, type=click.Path(),
              help="A Matterport .h5 with its config YAML beside it, or a run directory "
                   "(newest checkpoint). Repeat for an ensemble.")
@click.option("--ensemble", type=click.Path(file_okay=False),
              help="An organ-fold run directory: every fold sub-directory's model.")
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for the outputs and <stem>_record.yaml.")
@click.option("--tta", is_flag=True,
              help="Also run flipped and HSV-shifted views; each is a member.")
@_merge_options
@click.option("--distance-model", type=click.Path(file_okay=False),
              help="U-Net model directory predicting the distance channel (5-channel models).")
@click.option("--distance-dir", type=click.Path(file_okay=False),
              help="Read <stem>_dist.tif from here instead of predicting it.")
@click.option("--tile-size", type=click.IntRange(64), default=1024, show_default=True,
              help="Images larger than this are cut into overlapping tiles.")
@click.option("--overlap", type=click.IntRange(0), default=128, show_default=True,
              help="Tile overlap (pixels).")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True,
              help="Tiles per model call (GPU memory permitting).")
@click.option("--max-detections", type=click.IntRange(1),
              help="Override DETECTION_MAX_INSTANCES.")
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Override DETECTION_MIN_CONFIDENCE.")
@click.option("--keep-members", is_flag=True,
              help="Also write each member's raw detections as <stem>_memberNN.npz.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the HSV shift.")
@click.option("--resume", is_flag=True, help="Skip images whose outputs are complete.")
@friendly_errors
def predict(images, models, ensemble, outdir, tta, distance_model, distance_dir, tile_size,
            overlap, batch_size, max_detections, min_confidence, keep_members, seed, resume,
            hstain_dir, **merge_opts):
    """Detect nuclei with one model, an ensemble and/or TTA; merge the members; write files.

    Per image: <stem>_labels.tif, <stem>.geojson (QuPath), <stem>_nuclei.csv,
    optionally <stem>_overlay.png, and <stem>_record.yaml.

    \b
    Example:
      nucseg predict tiles/ -m runs/paper/ -o pred/
      nucseg predict tiles/ --ensemble runs/folds/ --tta --distance-model unet/ -o pred/
      nucseg predict big.tif -m model.h5 --keep-members --overlay -o pred/
    """
    from nucseg.channels import ChannelSources
    from nucseg.predict import predict_from_paths

    opts = _predict_options(tta=tta, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                            keep_members=keep_members, seed=seed, resume=resume, **merge_opts)
    sources = ChannelSources(hstain_dir=hstain_dir, distance_dir=distance_dir)
    overrides = {"DETECTION_MAX_INSTANCES": max_detections,
                 "DETECTION_MIN_CONFIDENCE": min_confidence}
    failures, total = predict_from_paths(images, models, ensemble, outdir, opts, sources,
                                         overrides, distance_model, log=click.echo)
    click.echo(f"predicted {total - len(failures)} of {total} image(s) into {outdir}")
    finish_batch(failures, total)


@main.command("merge")
@click.argument("members", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for the merged outputs and <stem>_record.yaml.")
@_merge_options
@click.option("--images", "image_dir", type=click.Path(file_okay=False),
              help="Where the input images are (default: the path stored in the members); "
                   "needed for the CSV's hematoxylin column and the overlay.")
@friendly_errors
def merge(members, outdir, image_dir, hstain_dir, **merge_opts):
    """Merge saved members (predict --keep-members) into nuclei, per image.

    MEMBERS are .npz files or directories of them; files are grouped by their image. With the
    same options the result is identical to merging inside `nucseg predict`.

    \b
    Example:
      nucseg merge pred/*_member*.npz -o merged/ --merge mask-nms
    """
    from nucseg.channels import ChannelSources
    from nucseg.predict import merge_from_paths

    opts = _predict_options(**merge_opts)
    failures, total = merge_from_paths(members, outdir, opts, image_dir,
                                       ChannelSources(hstain_dir=hstain_dir))
    click.echo(f"merged {total - len(failures)} of {total} image(s) into {outdir}")
    finish_batch(failures, total)


@main.group("weights")
def weights_group():
    """Matterport / Keras 2 HDF5 weight files (mask_rcnn_coco.h5 and nucseg's own)."""


@weights_group.command("inspect")
@click.argument("weight_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--config", "config_spec", metavar="PRESET|YAML",
              help="Compare with the model of this config (matterport, paper, ren or a YAML).")
@click.option("--backbone", type=click.Choice(["resnet50", "resnet101"]),
              help="Override the config's BACKBONE (implies a model to compare with).")
@click.option("--classes", type=click.IntRange(2), help="Override NUM_CLASSES (incl. background).")
@click.option("--channels", type=click.IntRange(1), help="Override IMAGE_CHANNEL_COUNT.")
@click.option("--exclude", multiple=True, metavar="LAYER",
              help="Layer not to load (repeatable, or comma-separated).")
@click.option("--exclude-heads", is_flag=True,
              help="Exclude the class-dependent heads (Matterport's COCO recipe).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@friendly_errors
def weights_inspect(weight_file, config_spec, backbone, classes, channels, exclude,
                    exclude_heads, as_json):
    """List a weight file's layers and shapes; with a model, what loading it would do.

    With --config (or any of --backbone/--classes/--channels, which start from the matterport
    preset) each layer is marked load, excluded, mismatch or unused, and the model's layers
    that the file lacks are marked missing (they keep their initialisation). Nothing is
    loaded and no image is processed.

    \b
    Example:
      nucseg weights inspect mask_rcnn_coco.h5
      nucseg weights inspect mask_rcnn_coco.h5 --config paper --exclude-heads
      nucseg weights inspect fold1.h5 --config ren --classes 2 --json
    """
    import json

    from nucseg.mrcnn.weights import COCO_EXCLUDE
    from nucseg.mrcnn.weights_inspect import (config_weight_shapes, format_inspection,
                                              inspect_weights)

    names = [n.strip() for item in exclude for n in item.split(",") if n.strip()]
    names += list(COCO_EXCLUDE) if exclude_heads else []
    overrides = {key: value for key, value in (("BACKBONE", backbone), ("NUM_CLASSES", classes))
                 if value is not None}
    model_shapes = None
    if config_spec or overrides or channels:
        from nucseg.mrcnn.config import load_config

        config = load_config(config_spec or "matterport", **overrides)
        if channels:  # only shapes matter here: pad or cut the means to the channel count
            means = list(config.MEAN_PIXEL[:channels]) + [0.0] * (channels - config.MEAN_PIXEL.size)
            config = config.copy(IMAGE_CHANNEL_COUNT=channels, MEAN_PIXEL=means)
        model_shapes = config_weight_shapes(config)
    elif names:
        raise click.UsageError("--exclude needs a model to compare with (--config, "
                               "--backbone, --classes or --channels)")
    result = inspect_weights(weight_file, model_shapes, exclude=names)
    click.echo(json.dumps(result, indent=1) if as_json else format_inspection(result))


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


@import_group.command("pannuke")
@click.argument("fold_dir", type=click.Path(file_okay=False, exists=True))
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Output: images/, labels/, classes.csv, metadata.csv, a record.")
@click.option("--no-progress", is_flag=True)
@friendly_errors
def import_pannuke_cmd(fold_dir, outdir, no_progress):
    """PanNuke fold (images.npy, masks.npy, types.npy) -> images, label maps, class table.

    Train the joint detection + classification model (NUM_CLASSES 1 + 5) with --classes.

    \b
    Example:
      nucseg import pannuke "Fold 1" -o pannuke1/
      nucseg train --images pannuke1/images --labels pannuke1/labels \\
          --classes pannuke1/classes.csv -o runs/pannuke
    """
    from nucseg.data.pannuke import find_fold_files, import_pannuke
    from nucseg.io import make_record, write_record

    result = import_pannuke(fold_dir, outdir, progress=not no_progress)
    write_record(Path(outdir) / "import_pannuke_record.yaml", make_record(
        "import pannuke", inputs=list(find_fold_files(fold_dir).values()),
        images=result.images, instances=result.instances, per_class=result.per_class))
    click.echo(f"wrote {result.images} images with {result.instances} nuclei to {outdir}")


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


@distance.command("train")
@click.option("--images", required=True, type=click.Path(exists=True),
              help="Directory (or file) of RGB training tiles.")
@click.option("--labels", required=True, type=click.Path(exists=True),
              help="Directory of instance label maps, paired by stem (<stem>[_labels].tif/png).")
@click.option("-o", "--model-dir", required=True, type=click.Path(file_okay=False),
              help="Output model directory (unet.json, unet.weights.h5, log, checkpoints).")
@click.option("--epochs", default=80, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(1))
@click.option("--width", type=click.IntRange(1),
              help="Filters of the first level (doubling per level). [default: 32, or the "
                   "saved width with --resume]")
@click.option("--hematoxylin/--rgb-only", default=None,
              help="Add hematoxylin optical density as a 4th input channel. [default: RGB only]")
@click.option("--lr", default=1e-3, show_default=True, type=float,
              help="Adam learning rate, divided by 10 every --lr-drop-every epochs.")
@click.option("--lr-drop-every", default=25, show_default=True, type=click.IntRange(1))
@click.option("--crop-size", type=click.IntRange(32),
              help="Train on random crops of this size instead of whole tiles (faster on CPU).")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random flips and 90-degree rotations.")
@click.option("--val-images", type=click.Path(exists=True),
              help="Held-out tiles: their MSE goes into the log each epoch (with --val-labels).")
@click.option("--val-labels", type=click.Path(exists=True))
@click.option("--checkpoint-every", default=10, show_default=True, type=click.IntRange(0),
              help="Keep checkpoints/epoch_NNN.weights.h5 every N epochs (0: none).")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop (saving the model) after this much training time.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True,
              help="Continue the training saved in --model-dir after its last completed epoch.")
@friendly_errors
def distance_train(images, labels, model_dir, epochs, batch_size, width, hematoxylin, lr,
                   lr_drop_every, crop_size, augment, val_images, val_labels, checkpoint_every,
                   max_minutes, seed, resume):
    """Train the distance-map U-Net on tiles and their instance label maps.

    Targets are the per-nucleus distance maps of `nucseg distance labels`; loss MSE; Adam;
    whole tiles padded to a multiple of 32 (padding excluded from the loss). See docs/unet.md.

    \b
    Example:
      nucseg distance train --images tiles/ --labels labels/ -o unet_model/
      nucseg distance train --images tiles/ --labels labels/ -o unet_model/ --resume
    """
    from nucseg.io import make_record, write_record
    from nucseg.unet.train import TrainOptions, train_unet, training_pairs

    if bool(val_images) != bool(val_labels):
        raise ValueError("--val-images and --val-labels go together")
    pairs = training_pairs(images, labels)
    val_pairs = training_pairs(val_images, val_labels) if val_images else []
    opts = TrainOptions(epochs=epochs, batch_size=batch_size, width=width,
                        hematoxylin=hematoxylin, lr=lr, lr_drop_every=lr_drop_every, seed=seed,
                        crop_size=crop_size, augment=augment, checkpoint_every=checkpoint_every,
                        max_seconds=max_minutes * 60 if max_minutes else None)
    summary = train_unet(pairs, model_dir, opts, resume=resume, val_pairs=val_pairs)
    last = summary["log"][-1] if summary["log"] else {}
    write_record(Path(model_dir) / "distance_train_record.yaml", make_record(
        "distance train", [p for pair in pairs for p in pair],
        {k: v for k, v in vars(opts).items() if k != "extra"} | {"resume": resume},
        epochs_done=summary["epochs_done"], stopped_early=summary["stopped_early"],
        seconds=summary["seconds"], last_epoch=last))
    note = " (stopped by --max-minutes)" if summary["stopped_early"] else ""
    click.echo(f"trained {summary['epochs_done']} epoch(s){note}; "
               f"train_mse {last.get('train_mse', 'n/a')}; model in {model_dir}")


@distance.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--model-dir", required=True, type=click.Path(file_okay=False),
              help="A model directory written by `nucseg distance train`.")
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for <stem>_dist.tif and distance_predict_record.yaml.")
@click.option("--tile-size", default=1024, show_default=True, type=click.IntRange(64),
              help="Images larger than this (px, multiple of 32) are predicted in tiles.")
@click.option("--margin", default=64, show_default=True, type=click.IntRange(0),
              help="Overlap kept as context on each tile side and dropped (multiple of 32).")
@friendly_errors
def distance_predict(images, model_dir, outdir, tile_size, margin):
    """Predict per-nucleus distance maps (float32 TIFF, pixels) with a trained U-Net.

    IMAGES are RGB tiles or directories of them; a bad image is reported and the rest go on.

    \b
    Example:
      nucseg distance predict tiles/ -m unet_model/ -o dist/
      nucseg distance predict big_region.tif -m unet_model/ -o dist/ --tile-size 512
    """
    from nucseg.io import expand_inputs, make_record, run_batch, write_record
    from nucseg.unet import load_unet
    from nucseg.unet.predict import check_tiling, predict_file

    check_tiling(tile_size, margin)
    files = _require_inputs(expand_inputs(images), "images")
    model = load_unet(model_dir)
    written = []
    failures = run_batch(files, lambda f: written.append(
        predict_file(f, model, outdir, tile_size, margin)), desc="distance predict")
    write_record(Path(outdir) / "distance_predict_record.yaml", make_record(
        "distance predict", files, {"model_dir": model_dir, "outdir": outdir,
                                    "tile_size": tile_size, "margin": margin},
        model=model.config.to_dict(), outputs=written, failures=failures))
    click.echo(f"wrote {len(written)} distance map(s) to {outdir}")
    finish_batch(failures, len(files))


@import_group.command("monuseg")
@click.argument("xml_files", metavar="XML...", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for <stem>_labels.tif and import_monuseg_record.yaml.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, exists=True),
              help="Directory of the tiles: each label map takes the size of the tile with the "
                   "XML file's stem.")
@click.option("--size", default="1000x1000", show_default=True, metavar="HxW",
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


@main.command("baseline")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for <stem>_labels.tif and baseline_record.yaml.")
@click.option("--sigma", type=float, default=1.0, show_default=True,
              help="Gaussian smoothing of the hematoxylin map (px; 0 = none).")
@click.option("--min-size", type=int, default=30, show_default=True,
              help="Smallest nucleus kept (px).")
@click.option("--min-distance", type=int, default=5, show_default=True,
              help="Smallest distance between two nucleus centres (px).")
@click.option("--stain-matrix", type=click.Path(dir_okay=False),
              help="3x3 stain vectors, as for `nucseg hstain`.")
@friendly_errors
def baseline(images, outdir, sigma, min_size, min_distance, stain_matrix):
    """Classical segmentation without training: hematoxylin + Otsu + distance watershed.

    A reference floor for learned models and a prediction for the demo; deterministic.

    \b
    Example:
      nucseg baseline examples/monuseg_crop.png -o out/
      nucseg score --gt examples/monuseg_crop_labels.png --pred out/monuseg_crop_labels.tif
    """
    from nucseg.baseline import baseline_file
    from nucseg.io import expand_inputs, make_record, run_batch, write_record
    from nucseg.stain import read_stain_matrix

    stains = read_stain_matrix(stain_matrix) if stain_matrix else None
    options = {"sigma": sigma, "min_size": min_size, "min_distance": min_distance}
    files = _require_inputs(expand_inputs(images), "images")
    if min_distance < 1 or min_size < 0 or sigma < 0:
        raise ValueError("--min-distance must be >= 1, --min-size and --sigma >= 0")
    written = []
    failures = run_batch(
        files, lambda f: written.append(baseline_file(f, outdir, stain_matrix=stains, **options)),
        desc="baseline")
    write_record(Path(outdir) / "baseline_record.yaml", make_record(
        "baseline", files, dict(options, outdir=outdir, stain_matrix=stain_matrix),
        outputs=written, failures=failures))
    click.echo(f"wrote {len(written)} label map(s) to {outdir}")
    finish_batch(failures, len(files))


def _require_inputs(files, what: str):
    """The expanded input list, or a clear error when a directory held nothing usable."""
    if not files:
        raise ValueError(f"no {what} found in the given paths")
    return files

