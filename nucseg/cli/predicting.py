"""`nucseg predict` and `nucseg merge`."""
from __future__ import annotations

import click

from nucseg.cli.common import (claims_outdir, dask_option, finish_batch, friendly_errors,
                               main)
from nucseg.cli.slides import slide_options


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
                          "mask-nms 0.5; one member without TTA 0.5, as detection)."),
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
    from nucseg.prediction.predict import PredictOptions

    return PredictOptions(merge=merge_method, iou_threshold=iou_threshold, iou_type=iou_type,
                          min_members=min_members, mask_threshold=mask_threshold,
                          min_area=min_area, geojson=geojson, gzip=gzip_geojson, csv=write_csv,
                          overlay=overlay, **more)


@main.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--model", "models", multiple=True, type=click.Path(),
              help="A shipped model's name (`nucseg models list`; default: the default "
                   "shipped model, with its U-Net and tuned thresholds), a Matterport .h5 with "
                   "its config YAML beside it, or a run directory (newest checkpoint). Repeat "
                   "for an ensemble.")
@click.option("--ensemble", type=click.Path(file_okay=False),
              help="An organ-fold run directory: every fold sub-directory's model.")
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for the outputs and <stem>_record.yaml.")
@click.option("--tta", is_flag=True,
              help="Also run flipped and HSV-shifted views; each is a member.")
@_merge_options
@click.option("--distance-model", type=click.Path(file_okay=False),
              help="U-Net model directory predicting the distance channel (5-channel models).")
@click.option("--distance-dir", type=click.Path(file_okay=False),
              help="Read <stem>_dist.tif from here instead of predicting it.")
@click.option("--tile-size", type=click.IntRange(64), default=512, show_default=True,
              help="Images larger than this are cut into overlapping tiles.")
@click.option("--overlap", type=click.IntRange(0), default=128, show_default=True,
              help="Tile overlap (pixels).")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True,
              help="Tiles per model call (GPU memory permitting).")
@click.option("--precision", type=click.Choice(["float32", "mixed_bfloat16"]),
              default="float32", show_default=True,
              help="mixed_bfloat16: Mask R-CNN convolutions and dense layers in bfloat16 "
                   "(faster on recent GPUs and CPUs with AVX512_BF16/AMX; slower elsewhere).")
@click.option("--max-detections", type=click.IntRange(1),
              help="Override DETECTION_MAX_INSTANCES.")
@click.option("--rois", type=click.IntRange(1),
              help="Proposals kept per model call (POST_NMS_ROIS_INFERENCE; PRE_NMS_LIMIT "
                   "becomes 3x, at least 6000). For speed: --tile-size 1024 --rois 8000 "
                   "(docs/predict.md, \"Tile size\").")
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Override DETECTION_MIN_CONFIDENCE (a one-class model scores every "
                   "detection above 0.5, so lower values act as 0.5).")
@click.option("--keep-members", is_flag=True,
              help="Also write each member's raw detections as <stem>_memberNN.npz.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the HSV shift.")
@click.option("--resume", is_flag=True, help="Skip images whose outputs are complete.")
@slide_options
@dask_option
@friendly_errors
@claims_outdir("outdir")
def predict(images, models, ensemble, outdir, tta, distance_model, distance_dir, tile_size,
            overlap, batch_size, precision, max_detections, rois, min_confidence, keep_members,
            seed,
            resume, hstain_dir, slide_opts, dask, **merge_opts):
    """Detect nuclei with one model, an ensemble and/or TTA; merge the members; write files.

    Per image: <stem>_labels.tif, <stem>.geojson (QuPath), <stem>_nuclei.csv,
    optionally <stem>_overlay.png, and <stem>_record.yaml.

    Slides (.svs .ndpi .mrxs .scn .bif, pyramidal or large TIFFs) are read in tissue blocks at
    the model's pixel size: <stem>.geojson.gz, <stem>_nuclei.csv, a pyramidal
    <stem>_labels.tif, <stem>_thumbnail.png and the record, in level-0 pixels (docs/slides.md).

    Without -m or --ensemble the default shipped model runs, with its own U-Net for the
    distance channel and the thresholds chosen for it on training data (options typed here
    override them).

    \b
    Example:
      nucseg predict tiles/ -o pred/                      # the shipped model
      nucseg predict tiles/ -m runs/paper/ -o pred/
      nucseg predict tiles/ --ensemble runs/folds/ --tta --distance-model unet/ -o pred/
      nucseg predict big.tif -m model.h5 --keep-members --overlay -o pred/
      nucseg predict scan.svs -o pred/                     # a whole slide
      nucseg predict slides/ --dask local:4 -o pred/       # blocks on 4 worker processes
    """
    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.predict import predict_from_paths

    opts = _predict_options(tta=tta, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                            precision=precision, keep_members=keep_members, seed=seed,
                            resume=resume, **merge_opts)
    sources = ChannelSources(hstain_dir=hstain_dir, distance_dir=distance_dir)
    overrides = {"DETECTION_MAX_INSTANCES": max_detections,
                 "DETECTION_MIN_CONFIDENCE": min_confidence}
    if rois is not None:
        overrides.update(POST_NMS_ROIS_INFERENCE=rois, PRE_NMS_LIMIT=max(6000, 3 * rois))
    failures, total = predict_from_paths(images, models, ensemble, outdir, opts, sources,
                                         overrides, distance_model, log=click.echo,
                                         slide_opts=slide_opts, dask=dask)
    click.echo(f"predicted {total - len(failures)} of {total} image(s) into {outdir}")
    finish_batch(failures, total)


@main.command("merge")
@click.argument("members", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for the merged outputs and <stem>_record.yaml.")
@_merge_options
@click.option("--images", "image_dir", type=click.Path(file_okay=False),
              help="Where the input images are (default: the path stored in the members); "
                   "needed for the CSV's hematoxylin column and the overlay.")
@friendly_errors
@claims_outdir("outdir")
def merge(members, outdir, image_dir, hstain_dir, **merge_opts):
    """Merge saved members (predict --keep-members) into nuclei, per image.

    MEMBERS are .npz files or directories of them; files are grouped by their image. With the
    same options the result is identical to merging inside `nucseg predict`.

    \b
    Example:
      nucseg merge pred/*_member*.npz -o merged/ --merge mask-nms
    """
    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.merge_saved import merge_from_paths

    opts = _predict_options(**merge_opts)
    failures, total = merge_from_paths(members, outdir, opts, image_dir,
                                       ChannelSources(hstain_dir=hstain_dir))
    click.echo(f"merged {total - len(failures)} of {total} image(s) into {outdir}")
    finish_batch(failures, total)
