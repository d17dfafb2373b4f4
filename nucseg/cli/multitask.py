"""`nucseg multitask targets|train|predict`: the MoNuSeg rank-6 multi-task U-Net."""
from __future__ import annotations

from pathlib import Path

import click

from nucseg.cli.common import (claims_outdir, finish_batch, friendly_errors, main,
                               require_inputs)
from nucseg.cli.slides import slide_options


@main.group("multitask")
def multitask():
    """Multi-task U-Net (foreground, adjacent boundary, interior) + watershed (MoNuSeg rank 6).

    \b
    nucseg multitask targets   label maps -> the three training targets, for a look
    nucseg multitask train     images + labels -> a run directory
    nucseg multitask predict   tiles -> probability maps, instances, a member for `merge`
    """


def _target_options(fn):
    fn = click.option("--interior-radius", type=click.FloatRange(0, 50), default=2.0,
                      show_default=True,
                      help="Erosion radius (px) of each nucleus for the interior target.")(fn)
    return click.option("--boundary-distance", type=click.FloatRange(0, 20, min_open=True),
                        default=2.0, show_default=True,
                        help="Nucleus pixels this close (px) to another nucleus are adjacent "
                             "boundary.")(fn)


@multitask.command("targets")
@click.argument("labels", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for <stem>_{foreground,boundary,interior}.png, <stem>_targets.png "
                   "and multitask_targets_record.yaml.")
@_target_options
@friendly_errors
@claims_outdir("outdir")
def targets(labels, outdir, boundary_distance, interior_radius):
    """Write the three training targets of instance label maps (0/255 PNGs) and a preview.

    The preview shows foreground grey, interior green and adjacent boundary red. A trailing
    "_labels" in the input stem is dropped from the output names.

    \b
    Example:
      nucseg multitask targets labels/ -o targets/
      nucseg multitask targets tile_labels.tif -o targets/ --interior-radius 3
    """
    from nucseg.io import (LABEL_EXTENSIONS, expand_inputs, label_stem, make_record, run_batch,
                           write_record)
    from nucseg.multitask.targets import TargetOptions, targets_file

    options = TargetOptions(boundary_distance, interior_radius)
    files = require_inputs(expand_inputs(labels, LABEL_EXTENSIONS, name=label_stem),
                           "label maps")
    written = []
    failures = run_batch(files, lambda f: written.extend(targets_file(f, outdir, options)),
                         desc="targets")
    write_record(Path(outdir) / "multitask_targets_record.yaml", make_record(
        "multitask targets", files, dict(options.to_dict(), outdir=outdir),
        outputs=[p.name for p in written], failures=failures))
    click.echo(f"wrote the targets of {len(files) - len(failures)} label map(s) to {outdir}")
    finish_batch(failures, len(files))


def _typed_options() -> dict:
    """{parameter name: its flag} for the options typed on the command line."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {p.name: p.opts[0] for p in ctx.command.params
            if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE}


def _task_weights(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected 3 comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise click.BadParameter(f"expected 3 weights (foreground, boundary, interior), got "
                                 f"{len(values)}")
    return values


@multitask.command("train")
@click.option("--images", type=click.Path(exists=True),
              help="Directory (or file) of RGB training tiles.")
@click.option("--labels", type=click.Path(exists=True),
              help="Instance label maps, paired with the tiles by stem (<stem>[_labels]).")
@click.option("-o", "--run-dir", required=True, type=click.Path(),
              help="Run directory: config.yaml, weights, checkpoints, log, record.")
@click.option("--backbone", type=click.Choice(["resnet101", "resnet50"]), default="resnet101",
              show_default=True, help="Encoder (the method: ResNet-101; ResNet-50 is faster).")
@click.option("--decoder-width", type=click.IntRange(1), default=16, show_default=True,
              help="Filters of the full-resolution decoder level (x2 per level, 16x at 1/16).")
@click.option("--train-bn/--frozen-bn", default=None,
              help="Train the encoder's batch norms, or freeze them as Matterport does with "
                   "small batches. [default: frozen with --init-backbone (pre-trained "
                   "statistics), trained without]")
@click.option("--init-backbone", type=click.Path(dir_okay=False),
              help="Matterport-layout Mask R-CNN HDF5 (COCO weights, a nucseg checkpoint) whose "
                   "ResNet initialises the encoder by layer name.")
@_target_options
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs in all  [default: 50; with --resume: the run's own]")
@click.option("--batch-size", type=click.IntRange(1), default=2, show_default=True)
@click.option("--crop-size", type=click.IntRange(32), default=256, show_default=True,
              help="Random crop side (multiple of 32).")
@click.option("--crops-per-tile", type=click.IntRange(1), default=1, show_default=True,
              help="Crops of every tile per epoch.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4,
              show_default=True, help="Adam learning rate.")
@click.option("--lr-drop-every", type=click.IntRange(0), default=0, show_default=True,
              help="Divide the learning rate by 10 every N epochs (0: never).")
@click.option("--bce-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of binary cross-entropy in each task's loss.")
@click.option("--dice-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of 1 - soft Dice in each task's loss.")
@click.option("--task-weights", default="1,1,1", show_default=True, callback=lambda c, p, v:
              _task_weights(v), help="Weights of the foreground, boundary, interior losses.")
@click.option("--no-flips", is_flag=True, help="No random flips.")
@click.option("--no-rotate", is_flag=True, help="No random rotations (up to 180 degrees).")
@click.option("--no-brightness", is_flag=True, help="No random brightness/contrast.")
@click.option("--blur", is_flag=True, help="Add Gaussian blur.")
@click.option("--checkpoint-every", type=click.IntRange(0), default=10, show_default=True,
              help="Keep checkpoints/epoch_NNN.weights.h5 every N epochs (0: none).")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True),
              help="Stop (saving the weights) after this much training time.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir after its last completed epoch (only "
                   "--epochs and --max-minutes may be given with it).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@friendly_errors
@claims_outdir("run_dir")
def train(images, labels, run_dir, backbone, decoder_width, train_bn, init_backbone,
          boundary_distance, interior_radius, epochs, batch_size, crop_size, crops_per_tile, lr,
          lr_drop_every, bce_weight, dice_weight, task_weights, no_flips, no_rotate,
          no_brightness, blur, checkpoint_every, max_minutes, seed, resume, no_progress):
    """Train the multi-task U-Net on tiles and their instance label maps.

    Loss per task: --bce-weight x BCE + --dice-weight x (1 - Dice), summed with
    --task-weights. Ctrl-C keeps the last completed epoch; --resume continues it.

    \b
    Example:
      nucseg multitask train --images tiles/ --labels labels/ -o runs/mt \\
          --init-backbone mask_rcnn_coco.h5
      nucseg multitask train --images tiles/ --labels labels/ -o runs/mt50 --backbone resnet50
      nucseg multitask train -o runs/mt --resume --epochs 80
    """
    from nucseg.io import make_record, write_record
    from nucseg.multitask.files import read_config
    from nucseg.multitask.network import LossWeights, NetworkConfig
    from nucseg.multitask.targets import TargetOptions
    from nucseg.multitask.train import TrainOptions, train_multitask
    from nucseg.unet.train import training_pairs

    if resume:
        extra = [flag for name, flag in _typed_options().items()
                 if name not in ("run_dir", "resume", "epochs", "max_minutes", "no_progress")]
        if extra:
            raise click.UsageError("--resume takes the data and settings from the run's "
                                   "config.yaml; only --epochs and --max-minutes can change. "
                                   "Remove: " + ", ".join(extra))
        saved = read_config(run_dir).training
        images, labels = saved.get("images", []), saved.get("labels", [])
        pairs = list(zip(images, labels))
    else:
        if not images or not labels:
            raise click.UsageError("--images and --labels are required (except with --resume)")
        pairs = training_pairs(images, labels)
    if epochs is None and not resume:
        epochs = TrainOptions.epochs             # the dataclass default; a resume keeps its own
    opts = TrainOptions(epochs=epochs, batch_size=batch_size, crop_size=crop_size,
                        crops_per_tile=crops_per_tile, lr=lr, lr_drop_every=lr_drop_every,
                        loss=LossWeights(bce_weight, dice_weight, task_weights),
                        flips=not no_flips, rotate=not no_rotate,
                        brightness_contrast=not no_brightness, blur=blur,
                        init_backbone=init_backbone, checkpoint_every=checkpoint_every,
                        max_seconds=max_minutes * 60 if max_minutes else None, seed=seed)
    if train_bn is None:
        train_bn = not init_backbone
    summary = train_multitask(pairs, run_dir, NetworkConfig(backbone, decoder_width, train_bn),
                              TargetOptions(boundary_distance, interior_radius), opts,
                              resume=resume, progress=not no_progress,
                              log=lambda msg: click.echo(msg, err=True))
    last = summary["log"][-1] if summary["log"] else {}
    write_record(Path(run_dir) / "multitask_train_record.yaml", make_record(
        "multitask train", [p for pair in pairs for p in pair],
        summary["config"]["training"]["options"] | {"resume": resume},
        network=summary["config"]["network"], targets=summary["config"]["targets"],
        epochs_done=summary["epochs_done"], stopped_early=summary["stopped_early"],
        seconds=summary["seconds"], last_epoch=last))
    note = " (stopped by --max-minutes)" if summary["stopped_early"] else ""
    click.echo(f"trained {summary['epochs_done']} epoch(s){note}; loss "
               f"{last.get('loss', 'n/a')}; run in {run_dir}")


@multitask.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--model", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A run directory of `nucseg multitask train`.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Another weights file of the run (e.g. checkpoints/epoch_040.weights.h5).")
@click.option("-o", "--outdir", required=True, type=click.Path(),
              help="Directory for the outputs and <stem>_record.yaml.")
@click.option("--foreground-threshold", type=click.FloatRange(0, 1, min_open=True,
                                                              max_open=True),
              help="Foreground probability cut (default: the run's watershed.yaml from "
                   "`nucseg multitask tune`, else 0.5).")
@click.option("--boundary-threshold", type=click.FloatRange(0, 1, min_open=True,
                                                            max_open=True),
              help="Boundary probability cut (ridges; default 0.5).")
@click.option("--interior-threshold", type=click.FloatRange(0, 1, min_open=True,
                                                            max_open=True),
              help="Interior probability cut (markers; default: the run's watershed.yaml, "
                   "else 0.5).")
@click.option("--min-marker-area", type=click.IntRange(1), default=2, show_default=True,
              help="Smaller marker parts are dropped as noise (px).")
@click.option("--min-area", type=click.IntRange(1), default=20, show_default=True,
              help="Remove nuclei smaller than this (px).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Drop nuclei whose mean foreground probability (their score) is lower; "
                   "e.g. to add only the U-Net's surer nuclei to a Mask R-CNN ensemble.")
@click.option("--tile-size", type=click.IntRange(32), default=1024, show_default=True,
              help="Larger images are predicted in tiles (multiple of 32).")
@click.option("--margin", type=click.IntRange(0), default=64, show_default=True,
              help="Context dropped on each inner tile side (multiple of 32).")
@click.option("--maps/--no-maps", default=True, show_default=True,
              help="Write <stem>_{foreground,boundary,interior}.tif (float32 probabilities).")
@click.option("--geojson/--no-geojson", default=True, show_default=True,
              help="Write <stem>.geojson (QuPath).")
@click.option("--csv/--no-csv", "write_csv", default=True, show_default=True,
              help="Write <stem>_nuclei.csv.")
@click.option("--keep-members", is_flag=True,
              help="Also write the nuclei as a member, <stem>_memberNN.npz, for `nucseg merge`.")
@click.option("--member-index", type=click.IntRange(0, 99), default=99, show_default=True,
              help="NN of the member file name; `nucseg predict` numbers its members from 00, "
                   "and `nucseg merge` refuses two files with one name.")
@click.option("--resume", is_flag=True, help="Skip images whose outputs are complete.")
@slide_options
@friendly_errors
@claims_outdir("outdir")
def predict(images, run_dir, weights, outdir, foreground_threshold, boundary_threshold,
            interior_threshold, min_marker_area, min_area, min_confidence, tile_size, margin,
            maps, geojson, write_csv, keep_members, member_index, resume, slide_opts):
    """Probability maps and nuclei (watershed) of RGB tiles with a trained multi-task U-Net.

    Per image: <stem>_labels.tif, <stem>.geojson, <stem>_nuclei.csv, the three probability
    maps, with --keep-members <stem>_memberNN.npz, and <stem>_record.yaml. `nucseg score`
    reads the label maps; `nucseg merge --merge mask-nms` combines the member with Mask R-CNN
    members (use --min-members 1 to keep the nuclei only the U-Net found).

    Slides (.svs .ndpi .mrxs .scn .bif, pyramidal or large TIFFs) are read in tissue blocks
    at the model's pixel size, as `nucseg predict` reads them: <stem>.geojson.gz,
    <stem>_nuclei.csv, a pyramidal <stem>_labels.tif, <stem>_thumbnail.png and the record
    (no probability maps or member at slide size; docs/slides.md).

    \b
    Example:
      nucseg multitask predict tiles/ -m runs/mt -o mt_pred/ --keep-members
      nucseg merge mrcnn_pred/*_member*.npz mt_pred/*_member*.npz -o merged/ \\
          --merge mask-nms --min-members 1
      nucseg multitask predict scan.svs -m runs/mt -o mt_slides/    # a whole slide
    """
    from nucseg.io import IMAGE_EXTENSIONS, InputError, expand_inputs, run_batch
    from nucseg.multitask.files import load_run
    from nucseg.multitask.predict import (PredictSettings, is_complete, predict_image,
                                          predict_slide, slide_options_for)
    from nucseg.multitask.tune import watershed_options
    from nucseg.prediction.slides import SLIDE_EXTENSIONS, is_slide, slide_done
    from nucseg.unet.predict import check_tiling

    check_tiling(tile_size, margin)
    watershed = watershed_options(run_dir, {
        "t_foreground": foreground_threshold, "t_boundary": boundary_threshold,
        "t_interior": interior_threshold, "min_marker_area": min_marker_area,
        "min_area": min_area})
    settings = PredictSettings(watershed, tile_size, margin, maps, keep_members, member_index,
                               geojson, write_csv, min_confidence)
    files = require_inputs(expand_inputs(images, IMAGE_EXTENSIONS + SLIDE_EXTENSIONS), "images")
    slides = {f for f in files if is_slide(f)}
    resampling = slide_opts.pixel_size() is not None
    slide_settings = slide_options_for(settings, resume)

    def done(f) -> bool:
        return resume and (slide_done(outdir, f, slide_settings) if f in slides
                           else is_complete(outdir, f.stem, settings))

    def predict_one(f):
        if f in slides:
            return predict_slide(f, loaded, outdir, settings, slide_opts, resume)
        if resampling:
            raise InputError(f, "--mpp / --magnification apply to slides here; tiles are "
                                "read at their own pixel size (`nucseg predict -m RUN` "
                                "resamples tiles)")
        return predict_image(f, loaded, outdir, settings)

    todo = [f for f in files if not done(f)]
    if len(todo) < len(files):
        click.echo(f"resume: {len(files) - len(todo)} of {len(files)} image(s) already done")
    failures = []
    if todo:
        loaded = load_run(run_dir, weights)
        failures = run_batch(todo, predict_one, desc="multitask predict")
    click.echo(f"predicted {len(todo) - len(failures)} of {len(todo)} image(s) into {outdir}")
    finish_batch(failures, len(files))


@multitask.command("tune")
@click.option("-m", "--model", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A run directory of `nucseg multitask train`.")
@click.option("--images", required=True, type=click.Path(exists=True),
              help="Labelled training tiles (never the tiles you report figures on).")
@click.option("--labels", required=True, type=click.Path(exists=True),
              help="Their instance label maps (same stems, or <stem>_labels).")
@click.option("--values", default="0.3,0.4,0.5,0.6,0.7", show_default=True,
              help="Candidate foreground and interior thresholds (every pair is tried).")
@click.option("--tile-size", type=click.IntRange(32), default=1024, show_default=True)
@click.option("--margin", type=click.IntRange(0), default=64, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@friendly_errors
def tune(run_dir, images, labels, values, tile_size, margin, no_progress):
    """Choose the watershed thresholds on labelled tiles; write <run>/watershed.yaml.

    Every (foreground, interior) pair of --values is scored by mean AJI; the best pair
    becomes the run's default for `nucseg multitask predict` and `nucseg predict -m RUN`
    (a typed threshold still wins).

    \b
    Example:
      nucseg multitask tune -m runs/mt --images train/images --labels train/labels
    """
    from nucseg.multitask.files import load_run
    from nucseg.multitask.tune import WATERSHED_FILE, tune_run
    from nucseg.unet.predict import check_tiling
    from nucseg.unet.train import training_pairs

    check_tiling(tile_size, margin)
    try:
        grid = [float(v) for v in values.split(",")]
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {values!r}", param_hint="--values")
    if not grid or not all(0 < v < 1 for v in grid):
        raise click.BadParameter("thresholds must be in (0, 1)", param_hint="--values")
    pairs = training_pairs(images, labels)
    result = tune_run(load_run(run_dir), pairs, grid, tile_size, margin,
                      progress=not no_progress)
    click.echo(f"chose foreground {result['t_foreground']:g}, interior "
               f"{result['t_interior']:g} (mean AJI {result['mean_aji']:.3f} over "
               f"{len(result['tiles'])} tile(s)); wrote {Path(run_dir) / WATERSHED_FILE}")
