"""The per-image stages: `hstain`, `distance`, `import`, `baseline`."""
from __future__ import annotations

from pathlib import Path

import click

from nucseg.cli.common import (claims_outdir, finish_batch, friendly_errors, main,
                               require_inputs)


@main.group("distance")
def distance():
    """Distance maps: from label maps (ground truth) or predicted by a U-Net."""


@main.group("import")
def import_group():
    """Convert public data sets' annotations into nucseg label maps."""


@import_group.command("pannuke")
@click.argument("fold_dir", type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Output: images/, labels/, classes.csv, metadata.csv, a record.")
@click.option("--no-progress", is_flag=True)
@friendly_errors
@claims_outdir("outdir")
def import_pannuke_cmd(fold_dir, outdir, no_progress):
    """PanNuke fold (images.npy, masks.npy, types.npy) -> images, label maps, class table.

    Train the joint detection + classification model (NUM_CLASSES 1 + 5) with --classes.
    The three arrays are checked first (shapes, counts, dtypes; pixels finite and 0..255,
    instance ids whole and >= 0; never unpickled): a bad fold stops with one line and
    writes nothing.

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
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for <stem>_hstain.tif and hstain_record.yaml.")
@click.option("--stain-matrix", type=click.Path(dir_okay=False),
              help="3x3 text/CSV file: rows H, E, third stain; columns R, G, B optical density "
                   "(default: Ruifrok-Johnston H&E-DAB, as scikit-image).")
@friendly_errors
@claims_outdir("outdir")
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
    files = require_inputs(expand_inputs(images), "images")
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
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for <stem>_dist.tif and distance_labels_record.yaml.")
@friendly_errors
@claims_outdir("outdir")
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
    from nucseg.io import (LABEL_EXTENSIONS, expand_inputs, label_stem, make_record, run_batch,
                           write_record)

    files = require_inputs(expand_inputs(labels, LABEL_EXTENSIONS, name=label_stem),
                           "label maps")
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
@click.option("-o", "--model-dir", required=True, type=click.Path(),
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
@claims_outdir("model_dir")
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
              help="A model directory written by `nucseg distance train`, or a shipped "
                   "model's name (its U-Net; `nucseg models list`).")
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for <stem>_dist.tif and distance_predict_record.yaml.")
@click.option("--tile-size", default=1024, show_default=True, type=click.IntRange(64),
              help="Images larger than this (px, multiple of 32) are predicted in tiles.")
@click.option("--margin", default=64, show_default=True, type=click.IntRange(0),
              help="Overlap kept as context on each tile side and dropped (multiple of 32).")
@friendly_errors
@claims_outdir("outdir")
def distance_predict(images, model_dir, outdir, tile_size, margin):
    """Predict per-nucleus distance maps (float32 TIFF, pixels) with a trained U-Net.

    IMAGES are RGB tiles or directories of them; a bad image is reported and the rest go on.

    \b
    Example:
      nucseg distance predict tiles/ -m unet_model/ -o dist/
      nucseg distance predict big_region.tif -m unet_model/ -o dist/ --tile-size 512
      nucseg distance predict tiles/ -m monuseg-r50 -o dist/      # a shipped model's U-Net
    """
    from nucseg.io import InputError, expand_inputs, make_record, run_batch, write_record
    from nucseg.unet import load_unet
    from nucseg.unet.predict import check_tiling, predict_file

    from nucseg.models import named

    check_tiling(tile_size, margin)
    files = require_inputs(expand_inputs(images), "images")
    shipped = named(model_dir)
    if shipped is not None:
        if shipped.unet_dir is None:
            raise InputError(model_dir, "this shipped model has no distance U-Net")
        model_dir = str(shipped.unet_dir)
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
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for <stem>_labels.tif and import_monuseg_record.yaml.")
@click.option("--images", "images_dir", type=click.Path(),
              help="Directory of the tiles: each label map takes the size of the tile with the "
                   "XML file's stem.")
@click.option("--size", default="1000x1000", show_default=True, metavar="HxW",
              help="HEIGHTxWIDTH of the label maps when --images is not given; at most 100 "
                   "megapixels (e.g. 10000x10000), as the map is built in memory (4 bytes/px).")
@friendly_errors
@claims_outdir("outdir")
def import_monuseg(xml_files, outdir, images_dir, size):
    """MoNuSeg / Aperio XML polygon annotations -> instance label maps (uint16 TIFF).

    Vertices are 1-based (shifted by -1 px before filling); ids 1..N follow the file order;
    where polygons overlap the first region keeps the pixel; regions with fewer than 3
    vertices are skipped and counted. A file is refused (and the batch goes on) if it is not
    Aperio XML, has a DOCTYPE, a vertex that is not a finite number, or a vertex more than
    8 px outside the label map.

    \b
    Example:
      nucseg import monuseg annotations/*.xml --images images/ -o labels/
    """
    from nucseg.data.monuseg import (
        BORDER_TOLERANCE_PX,
        check_images_dir,
        import_monuseg_file,
        parse_size,
    )
    from nucseg.io import expand_inputs, make_record, run_batch, write_record

    shape = parse_size(size)
    if images_dir is not None:
        check_images_dir(images_dir)
    files = require_inputs(expand_inputs(xml_files, (".xml",)), "XML files")
    summary = []

    def work(xml_path):
        out, result = import_monuseg_file(xml_path, outdir, images_dir, shape)
        summary.append({"input": xml_path, "output": out, "regions": result.n_regions,
                        "nuclei": result.n_nuclei,
                        "skipped_fewer_than_3_vertices": result.skipped_few_vertices,
                        "hidden_by_earlier_regions": len(result.hidden_regions),
                        "outside_image": len(result.outside_regions),
                        "covering_no_pixel": len(result.no_pixel_regions)})

    failures = run_batch(files, work, desc="import")
    write_record(Path(outdir) / "import_monuseg_record.yaml", make_record(
        "import monuseg", files, {"outdir": outdir, "images": images_dir, "size": size},
        files=summary, failures=failures))
    for item in summary:
        counts = [(item["skipped_fewer_than_3_vertices"], "with < 3 vertices skipped"),
                  (item["hidden_by_earlier_regions"], "hidden by earlier regions"),
                  (item["outside_image"],
                   f"outside the image (within the {BORDER_TOLERANCE_PX:g} px tolerance)"),
                  (item["covering_no_pixel"], "covering no pixel centre")]
        notes = ", ".join(f"{n} {what}" for n, what in counts if n)
        notes = f" (region(s): {notes})" if notes else ""
        click.echo(f"{Path(item['output']).name}: {item['nuclei']} nuclei{notes}")
    skipped = sum(item["skipped_fewer_than_3_vertices"] for item in summary)
    click.echo(f"wrote {len(summary)} label map(s) to {outdir}; "
               f"{skipped} region(s) with < 3 vertices skipped")
    finish_batch(failures, len(files))


@main.command("baseline")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(),
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
@claims_outdir("outdir")
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
    files = require_inputs(expand_inputs(images), "images")
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
