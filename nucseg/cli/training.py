"""`nucseg train`, `nucseg model summary`, `nucseg weights inspect`: the model commands."""
from __future__ import annotations

import sys

import click

from nucseg.cli.common import claims_outdir, dask_option, friendly_errors, main


@main.command("train")
@click.option("-o", "--run-dir", required=True, type=click.Path(),
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
@click.option("--backbone", type=click.Choice(["resnet50", "resnet101"]),
              help="Override the config's BACKBONE (paper: resnet50).")
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
@click.option("--init", default="none", show_default=True, metavar="PATH|NAME|none|last",
              help="Starting weights: a Matterport .h5 or run directory (heads excluded when "
                   "the class count differs), a shipped model's name (fine-tune it on your own "
                   "data), none, or last (= --resume).")
@click.option("--exclude", multiple=True, metavar="LAYER", help="Layers not to load from --init.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir after its newest "
              "checkpoint, inside its stage. With --epochs/--stage it continues on that longer "
              "schedule; other options come from the run's train.yaml.")
@click.option("--folds", metavar="organ|K", help="Train one model per fold into sub-directories.")
@click.option("--metadata", type=click.Path(dir_okay=False, exists=True),
              help="CSV with columns id, organ (for --folds organ).")
@click.option("--fill-holes", is_flag=True, help="Fill holes in instance masks.")
@click.option("--split-components", is_flag=True,
              help="Give each connected component of an instance its own id.")
@click.option("--normalize", is_flag=True,
              help="Per-image zero-mean unit-variance instead of MEAN_PIXEL subtraction.")
@click.option("--inputs", type=click.Choice(["rgb", "rgb+distance", "rgb+h", "rgb+distance+h"]),
              help="Input channels (the paper's Figure 5 ablation); default: the config's "
                   "(paper: rgb+distance+h).")
@click.option("--channel-scaling", type=click.Choice(["per_image", "fixed"]),
              help="How the distance and hematoxylin maps become 0-255 channels: per_image "
                   "(the paper: each map's maximum -> 255) or fixed (18 px and OD 0.30 -> 255, "
                   "recorded in config.yaml; the same nucleus gets the same input in any tile "
                   "or slide block). Default: per_image, or the shipped --init model's.")
@click.option("--crop-size", type=click.IntRange(64), help="Random crop side (default: "
                                                            "IMAGE_MIN_DIM, 256 paper).")
@click.option("--no-flips", is_flag=True, help="No random flips.")
@click.option("--no-rotate", is_flag=True, help="No random rotations (up to 180 degrees).")
@click.option("--no-brightness", is_flag=True,
              help="No random brightness/contrast (RGB only).")
@click.option("--blur", is_flag=True, help="Add Gaussian blur (RGB only).")
@click.option("--stain-augment", is_flag=True,
              help="H&E stain augmentation (albumentations HEStain, random reference stains, "
                   "p 0.5) for other labs' colours; the hematoxylin channel is recomputed "
                   "from the augmented RGB.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=1, show_default=True,
              help="Save every N epochs (and at every stage end).")
@click.option("--precision", type=click.Choice(["float32", "mixed_bfloat16"]),
              default="float32", show_default=True,
              help="mixed_bfloat16: convolutions and dense layers in bfloat16 (weights, box "
                   "logic and losses stay float32); faster on CPUs with AVX512_BF16/AMX and on "
                   "recent GPUs, not the papers' setting.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Threads preparing batches.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only).")
@dask_option
@friendly_errors
@claims_outdir("run_dir")
def train(run_dir, images, labels, hstain, distance, classes, config_spec, backbone, name,
          schedule, stage, epochs, steps_per_epoch, learning_rate, layers, optimizer, init,
          exclude, resume, folds, metadata, fill_holes, split_components, normalize,
          inputs, channel_scaling, crop_size, no_flips, no_rotate, no_brightness, blur,
          stain_augment, checkpoint_every, precision, workers, seed, no_progress, dask):
    """Train Mask R-CNN+ with the paper's staged schedule (or Matterport's).

    Ctrl-C leaves the last complete checkpoint; --resume continues from it.

    \b
    Example:
      nucseg train --images data/images --labels data/labels -o runs/paper
      nucseg train --images data/images --labels data/labels -o runs/ens \\
          --folds organ --metadata data/metadata.csv
      nucseg train -o runs/paper --resume
      nucseg train --images data/images --labels data/labels -o runs/ens \\
          --folds 5 --dask local:5                  # the 5 fold models at once
      nucseg train -o runs/paper --resume --stage all --epochs 5,60,5,5   # train longer
      nucseg train --images my/images --labels my/labels -o runs/mine \\
          --init monuseg-r50 --distance my_dist/      # fine-tune the shipped model
      nucseg train --images data/images --labels data/labels -o runs/bf16 \\
          --precision mixed_bfloat16                         # faster convolutions
    """
    from nucseg.train import TrainOptions, parse_epochs, train_command

    augment = {"flips": not no_flips, "rotate": not no_rotate,
               "brightness_contrast": not no_brightness, "blur": blur, "stain": stain_augment}
    if crop_size:
        augment["crop_size"] = crop_size
    options = TrainOptions(schedule=schedule, stage=stage, epochs=parse_epochs(epochs),
                           steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                           layers=layers, optimizer=optimizer, init=init, exclude=list(exclude),
                           checkpoint_every=checkpoint_every, precision=precision,
                           progress=not no_progress,
                           augment=augment, loader={"normalize": normalize, "workers": workers})
    extend = None
    if resume:
        typed = _typed_options()
        ignored = [flag for name, flag in typed.items()
                   if name not in ("run_dir", "resume", "no_progress", "stage", "epochs",
                                   "dask")]
        if ignored:
            raise click.UsageError(
                "--resume takes the data and options from the run's train.yaml; only --stage "
                "and --epochs can change. Remove: " + ", ".join(ignored))
        extend = {"stage": stage if "stage" in typed else None,
                  "epochs": options.epochs if "epochs" in typed else None}
    def run(work=None):
        return train_command(run_dir, images, labels, hstain, distance, classes, config_spec,
                             backbone, name, folds, metadata, resume, seed, options,
                             {"fill_holes": fill_holes, "split_components": split_components,
                              "channel_scaling": channel_scaling, "inputs": inputs},
                             log=lambda msg: click.echo(msg, err=True), extend=extend,
                             dask=work)

    try:
        if dask is None:
            results = run()
        else:
            from nucseg.prediction.distributed import DaskWork, dask_client

            with dask_client(dask) as client:
                results = run(DaskWork(client))
    except KeyboardInterrupt:
        click.echo("interrupted: the last complete checkpoint is kept; continue with --resume",
                   err=True)
        sys.exit(130)
    for r in results:
        click.echo(f"{r['run_dir']}: epoch {r['epoch']}, checkpoint {r['checkpoint']}")


def _typed_options() -> dict:
    """{parameter name: its flag} for the options the user typed (not click defaults)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {param.name: param.opts[0] for param in ctx.command.params
            if ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE}


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
    from nucseg.mrcnn.model import format_summary  # loads TF
    from nucseg.mrcnn.model import model_summary as summarize

    summary = summarize(config)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))




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
    from nucseg.mrcnn.weights_inspect import (
        config_weight_shapes,
        format_inspection,
        inspect_weights,
    )

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
