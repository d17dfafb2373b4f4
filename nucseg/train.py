"""`nucseg train`: staged schedules, run directories, checkpoints, resume (fold ensembles:
nucseg.fold_training).

A run directory holds config.yaml (the model Config), train.yaml (schedule and options),
checkpoints mask_rcnn_<name>_<epoch:04d>.h5 in Matterport's layout, losses.csv (one row per
step: the five losses, the L2 term and the total) and run.yaml (the run record). Epochs are
absolute over the whole schedule, as in Matterport, so a checkpoint's epoch says which stage
it belongs to and `resume` continues inside that stage with a fresh optimiser (Matterport
does not save optimiser state either).
"""
from __future__ import annotations

import csv
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nucseg.data.augment import AugmentOptions
from nucseg.data.folds import ORGAN_GROUPS, k_folds, organ_fold_name, organ_folds  # noqa: F401
from nucseg.data.loader import LoaderOptions
from nucseg.init_weights import HEAD_LAYERS, init_channel_scaling, init_weights  # noqa: F401

LOSS_COLUMNS = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
                "mrcnn_mask_loss", "l2_loss", "loss")
CHECKPOINT_RE = re.compile(r"mask_rcnn_(?P<name>.*)_(?P<epoch>\d{4})\.h5$")


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    layers: str          # preset (heads, 3+, 4+, 5+, all, preproc+heads) or a regex
    learning_rate: float
    epochs: int          # epochs in this stage
    optimizer: str       # "adam" or "sgd"


PAPER_EPOCHS = (5, 35, 5, 5)
MATTERPORT_EPOCHS = (20, 20, 20)


def paper_schedule(base_lr: float, epochs=PAPER_EPOCHS) -> list[Stage]:
    """Mask R-CNN+: Adam; lr x2 on PREPROC+conv1+heads, x1 all, x0.5 5+, x0.1 heads."""
    epochs = _epochs(epochs, 4, "paper")
    specs = [("1", "preproc+heads", 2.0), ("2", "all", 1.0), ("3", "5+", 0.5),
             ("4", "heads", 0.1)]
    return [Stage(name, layers, base_lr * f, e, "adam")
            for (name, layers, f), e in zip(specs, epochs)]


def matterport_schedule(base_lr: float, epochs=MATTERPORT_EPOCHS) -> list[Stage]:
    """MoNuSeg rank-6 method: SGD (momentum, global-norm clip 5), heads -> 4+ -> all / 10."""
    epochs = _epochs(epochs, 3, "matterport")
    return [Stage("1", "heads", base_lr, epochs[0], "sgd"),
            Stage("2", "4+", base_lr, epochs[1], "sgd"),
            Stage("3", "all", base_lr / 10, epochs[2], "sgd")]


def _epochs(epochs, n, schedule):
    epochs = [int(e) for e in epochs]
    if len(epochs) != n or min(epochs) < 0:
        raise ValueError(f"the {schedule} schedule needs {n} non-negative epoch counts, got "
                         f"{epochs}")
    return epochs


def build_schedule(schedule: str, base_lr: float, epochs=None, layers: str | None = None,
                   optimizer: str | None = None) -> list[Stage]:
    """The stages of a named schedule; `layers`/`optimizer` override every stage's choice."""
    if schedule == "paper":
        stages = paper_schedule(base_lr, epochs or PAPER_EPOCHS)
    elif schedule == "matterport":
        stages = matterport_schedule(base_lr, epochs or MATTERPORT_EPOCHS)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'paper' or 'matterport'")
    if layers:
        stages = [replace(s, layers=layers) for s in stages]
    if optimizer:
        stages = [replace(s, optimizer=optimizer) for s in stages]
    return stages


def stage_bounds(stages: list[Stage]) -> list[tuple[int, int]]:
    """Absolute (first epoch, end epoch) of each stage."""
    bounds, start = [], 0
    for s in stages:
        bounds.append((start, start + s.epochs))
        start += s.epochs
    return bounds


def selected_stages(stages: list[Stage], which: str) -> list[int]:
    """Indices of the stages to run for `--stage N|all`."""
    if which == "all":
        return list(range(len(stages)))
    names = [s.name for s in stages]
    if str(which) not in names:
        raise ValueError(f"--stage must be one of {', '.join(names)} or all, got {which!r}")
    return [names.index(str(which))]


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def checkpoint_path(run_dir, name: str, epoch: int) -> Path:
    return Path(run_dir) / f"mask_rcnn_{name.lower()}_{epoch:04d}.h5"


def latest_checkpoint(run_dir) -> tuple[Path, int] | None:
    """Newest (highest-epoch) checkpoint of a run directory, or None."""
    found = []
    for p in Path(run_dir).glob("mask_rcnn_*_*.h5"):
        m = CHECKPOINT_RE.search(p.name)
        if m:
            found.append((int(m.group("epoch")), p))
    if not found:
        return None
    epoch, path = max(found)
    return path, epoch


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    schedule: str = "paper"
    stage: str = "all"
    epochs: list | None = None
    steps_per_epoch: int | None = None          # default config.STEPS_PER_EPOCH
    learning_rate: float | None = None          # default config.LEARNING_RATE
    layers: str | None = None                   # override every stage's layer selection
    optimizer: str | None = None                # override every stage's optimiser
    init: str = "none"                          # none | last | PATH
    exclude: list = field(default_factory=list)
    checkpoint_every: int = 1
    precision: str = "float32"                  # or mixed_bfloat16 (graph_layer.PRECISIONS)
    progress: bool = True
    augment: dict = field(default_factory=dict)
    loader: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _write_yaml(path, data):
    import yaml

    from nucseg.io import _plain, atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(_plain(data), sort_keys=False), encoding="utf-8")


def _read_yaml(path) -> dict:
    """A run directory's own YAML mapping (train.yaml, the fold plan)."""
    from nucseg.io import read_yaml_mapping

    return read_yaml_mapping(path, "run file")


def _saved_settings(path, make, data):
    """`make(**data)` for settings a run saved; a damaged file is one InputError naming it."""
    from nucseg.io import InputError

    try:
        return make(**data)
    except (TypeError, AttributeError, KeyError) as exc:
        raise InputError(path, f"damaged run file: unusable settings ({exc})") from None


def train_run(config, dataset, run_dir, options: TrainOptions, resume: bool = False,
              log=print, extend: dict | None = None) -> dict:
    """Train one model into run_dir; returns a summary (epochs done, last checkpoint, losses).

    With resume (or init 'last') the saved config/options are used and training continues
    after the newest checkpoint, inside its stage. `extend` ({"epochs": [...], "stage": ...})
    replaces the saved schedule lengths on a resume, so a finished run can be trained longer.
    """
    from nucseg.io import make_record, write_record
    from nucseg.mrcnn.config import Config

    run_dir = Path(run_dir)
    resume = resume or options.init == "last"
    changes = {}
    last = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ValueError(f"{run_dir}: nothing to resume (no config.yaml)")
        config = Config.from_yaml(run_dir / "config.yaml")
        saved = _read_yaml(run_dir / "train.yaml")
        saved_data = saved.pop("dataset", None)
        changes = _schedule_changes(saved, extend)
        options = _saved_settings(run_dir / "train.yaml", TrainOptions,
                                  {**saved, **changes, "progress": options.progress})
        if changes:
            log("schedule changed on resume: " + ", ".join(
                f"{key} {saved.get(key)} -> {value}" for key, value in changes.items()))
        if dataset is None:
            if not saved_data:
                raise ValueError(f"{run_dir}/train.yaml does not say which data it trained on")
            from nucseg.data.dataset import Dataset

            dataset = _saved_settings(run_dir / "train.yaml", Dataset, saved_data)
    elif last is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints ({last[0].name}); use "
                              "--resume to continue it or choose a new run directory")
    if dataset is None:
        raise ValueError("no training data given")
    from nucseg.mrcnn.graph_layer import check_precision

    check_precision(options.precision)          # before anything is written
    if dataset.num_classes > config.NUM_CLASSES:
        raise ValueError(f"the data set has {dataset.num_classes - 1} classes but the config "
                         f"NUM_CLASSES is {config.NUM_CLASSES} (background included)")
    dataset.check(progress=options.progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = (config.NAME or "nucseg").lower()
    steps = int(options.steps_per_epoch or config.STEPS_PER_EPOCH)
    base_lr = float(options.learning_rate or config.LEARNING_RATE)
    stages = build_schedule(options.schedule, base_lr, options.epochs, options.layers,
                            options.optimizer)
    bounds = stage_bounds(stages)
    todo = selected_stages(stages, options.stage)
    if not resume:
        config.to_yaml(run_dir / "config.yaml")
    if not resume or changes:   # a later --resume follows the extended schedule
        _write_yaml(run_dir / "train.yaml", {**options.to_dict(), "dataset": dataset.describe()})

    import keras

    from nucseg.data.loader import TrainingLoader
    from nucseg.mrcnn.training import Trainer, build_training_model, make_optimizer, \
        set_trainable
    from nucseg.mrcnn.graph_layer import bfloat16_slow_here
    from nucseg.mrcnn.weights import load_weights, save_weights

    if options.precision == "mixed_bfloat16" and bfloat16_slow_here():
        log("warning: this CPU has no bfloat16 instructions (AVX512_BF16/AMX) and no GPU is "
            "visible: mixed_bfloat16 is emulated and runs slower than float32 here")
    seed = int(options.loader.get("seed", 0))
    keras.utils.set_random_seed(seed)
    model = build_training_model(config, options.precision)
    start_epoch = bounds[todo[0]][0]
    init_info = None
    if resume and last is not None:
        load_weights(model, last[0], by_name=True)
        start_epoch = max(start_epoch, last[1])
        init_info = {"path": str(last[0]), "resumed_at_epoch": last[1]}
    elif options.init not in ("none", "last", "", None):   # (again on a resume without a
        # checkpoint: the run crashed in its first epoch)
        init_info = init_weights(model, config, options.init, options.exclude)
    loader = TrainingLoader(dataset, config, AugmentOptions(**options.augment),
                            LoaderOptions(**options.loader))
    csv_path = run_dir / "losses.csv"
    _trim_csv(csv_path, start_epoch)

    record = make_record("train", inputs=[p for pair in dataset.pairs for p in pair],
                         options=options.to_dict(), run_dir=str(run_dir), images=dataset.names,
                         stages=[asdict(s) for s in stages], init=init_info, status="running")
    write_record(run_dir / "run.yaml", record)
    summary = {"run_dir": str(run_dir), "checkpoint": str(last[0]) if last else None,
               "epoch": start_epoch, "steps": 0, "first_losses": None, "last_losses": None}
    try:
        for index in todo:
            stage, (first, end) = stages[index], bounds[index]
            if end <= start_epoch or stage.epochs == 0:
                continue
            chosen = set_trainable(model, stage.layers)
            trainer = Trainer(model, config, make_optimizer(stage.optimizer,
                                                            stage.learning_rate, config))
            log(f"stage {stage.name}: layers {stage.layers} ({len(chosen)} layers), "
                f"{stage.optimizer} lr {stage.learning_rate:g}, epochs {max(first, start_epoch)}"
                f" -> {end}")
            for epoch in range(max(first, start_epoch), end):
                losses = _run_epoch(trainer, loader, epoch, steps, stage, csv_path, options,
                                    summary)
                summary["epoch"] = epoch + 1
                if (epoch + 1) % max(1, options.checkpoint_every) == 0 or epoch + 1 == end:
                    path = checkpoint_path(run_dir, name, epoch + 1)
                    save_weights(model, path)
                    summary["checkpoint"] = str(path)
                    _write_yaml(run_dir / "state.yaml", {"stage": stage.name, "epoch": epoch + 1,
                                                        "checkpoint": path.name})
                log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
            start_epoch = end
        record["status"] = "finished"
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        raise
    except Exception as exc:
        record["status"] = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        record.update(epoch=summary["epoch"], checkpoint=summary["checkpoint"],
                      steps_run=summary["steps"])
        write_record(run_dir / "run.yaml", record)
    return summary


def _run_epoch(trainer, loader, epoch, steps, stage, csv_path, options, summary) -> dict:
    from tqdm import tqdm

    new_file = not csv_path.exists()
    means = {k: 0.0 for k in LOSS_COLUMNS}
    with open(csv_path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(("epoch", "step", "stage", "learning_rate") + LOSS_COLUMNS
                            + ("seconds", "positive_rois"))
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", unit="step", file=sys.stderr,
                   disable=not options.progress, leave=False)
        for step, batch in loader.batches(epoch, steps):
            start = time.perf_counter()
            losses = trainer.step(batch)
            seconds = time.perf_counter() - start
            writer.writerow([epoch + 1, epoch * steps + step + 1, stage.name,
                             f"{stage.learning_rate:g}"]
                            + [f"{losses[k]:.6g}" for k in LOSS_COLUMNS]
                            + [f"{seconds:.3f}", int(losses["positive_rois"])])
            fh.flush()
            for k in LOSS_COLUMNS:
                means[k] += losses[k] / steps
            if summary["first_losses"] is None:
                summary["first_losses"] = dict(losses)
            summary["last_losses"] = dict(losses)
            summary["steps"] += 1
            if not np.isfinite(losses["loss"]):
                raise FloatingPointError(f"{csv_path.parent}: loss became {losses['loss']} at "
                                         f"epoch {epoch + 1}, "
                                         f"step {step + 1}; lower the learning rate")
            bar.set_postfix({k.replace("_loss", ""): f"{losses[k]:.3f}" for k in LOSS_COLUMNS
                             if k != "l2_loss"})
            bar.update(1)
        bar.close()
    return means


def _schedule_changes(saved: dict, extend: dict | None) -> dict:
    """The entries of `extend` (epochs, stage) that differ from the saved schedule."""
    allowed = {"epochs", "stage"}
    unknown = set(extend or {}) - allowed
    if unknown:
        raise ValueError(f"on --resume only {sorted(allowed)} can change, not {sorted(unknown)}")
    return {k: v for k, v in (extend or {}).items() if v is not None and saved.get(k) != v}


def _trim_csv(csv_path: Path, epoch: int) -> None:
    """Drop rows after `epoch` (steps a resumed run will redo)."""
    if not csv_path.exists():
        return
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= epoch]
    from nucseg.io import atomic_path

    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(kept)


def parse_epochs(text: str | None) -> list[int] | None:
    """'5,35,5,5' -> [5, 35, 5, 5]."""
    if not text:
        return None
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"--epochs takes comma-separated integers, got {text!r}") from None


def with_inputs(config, inputs: str | None):
    """`--inputs rgb|rgb+distance|rgb+h|rgb+distance+h`: the paper's input ablation. The
    channel means are the base config's for the channels kept (it must have all five)."""
    if not inputs:
        return config
    from nucseg.prediction.channels import EXTRA_NAMES, INPUT_SETS

    if inputs not in INPUT_SETS:
        raise ValueError(f"--inputs must be one of {', '.join(INPUT_SETS)}, got {inputs!r}")
    means = list(np.asarray(config.MEAN_PIXEL).tolist())
    if len(means) != 5:
        raise ValueError(f"--inputs needs a 5-channel base config (R, G, B, distance, H means);"
                         f" this one has {len(means)} channels")
    extras = INPUT_SETS[inputs]
    keep = [0, 1, 2] + [3 + EXTRA_NAMES.index(name) for name in extras]
    return config.copy(IMAGE_CHANNEL_COUNT=len(keep), EXTRA_CHANNELS=list(extras),
                       MEAN_PIXEL=[means[i] for i in keep])


def train_command(run_dir, images=None, labels=None, hstain=None, distance=None, classes=None,
                  config_spec="paper", backbone=None, name=None, folds=None, metadata=None,
                  resume=False, seed=0, options: TrainOptions | None = None,
                  dataset_options: dict | None = None, log=print, extend: dict | None = None,
                  dask=None):
    """What `nucseg train` does: build config and data set, then one run, folds, or a resume.

    `extend` applies only to a resume: new epochs per stage and/or stage (see train_run).
    `dask` (nucseg.prediction.distributed.DaskWork) trains fold models as parallel tasks.
    """
    from nucseg.data.dataset import Dataset
    from nucseg.mrcnn.config import load_config

    options = options or TrainOptions()
    run_dir = Path(run_dir)
    if resume or options.init == "last":
        if (run_dir / "config.yaml").is_file():
            return [train_run(None, None, run_dir, options, resume=True, log=log,
                              extend=extend)]
        from nucseg.fold_training import resume_folds

        return resume_folds(run_dir, options, log=log, extend=extend, dask=dask)
    if not images or not labels:
        raise ValueError("--images and --labels are required (except with --resume)")
    dataset_options = dict(dataset_options or {})
    inputs = dataset_options.pop("inputs", None)
    if dataset_options.get("channel_scaling") is None:      # as the starting model, if shipped
        dataset_options["channel_scaling"] = init_channel_scaling(options.init)
    dataset = Dataset(images, labels, hstain_dir=hstain, distance_dir=distance, classes=classes,
                      channels=5, **dataset_options)
    overrides = dict(dataset.scaling.config_overrides())
    if backbone:
        overrides["BACKBONE"] = backbone
    if name:
        overrides["NAME"] = name
    if classes:
        overrides["NUM_CLASSES"] = dataset.num_classes
    if (options.loader or {}).get("normalize"):
        from nucseg.mrcnn.config import Config

        if "IMAGE_NORMALIZATION" in Config.attribute_names():
            overrides["IMAGE_NORMALIZATION"] = "per_image"   # predict then does the same
    config = with_inputs(load_config(config_spec, **overrides), inputs)
    if config.IMAGE_CHANNEL_COUNT != 5 or inputs:
        from nucseg.prediction.channels import extra_channels

        dataset = Dataset(images, labels, hstain_dir=hstain, distance_dir=distance,
                          classes=classes, channels=config.IMAGE_CHANNEL_COUNT,
                          extras=extra_channels(config), **dataset_options)
    options.loader = {**options.loader, "seed": int(seed)}
    if folds is None:
        if dask is not None:
            log("note: --dask trains the models of --folds in parallel; one run trains here")
        return [train_run(config, dataset, run_dir, options, log=log)]
    if str(folds) == "organ":
        if metadata is None:
            raise ValueError("--folds organ needs --metadata CSV (columns id, organ)")
        fold_list = organ_folds(metadata, dataset.names)
        if len(fold_list) < len(ORGAN_GROUPS):
            trained = {name for name, _, _ in fold_list}
            absent = [g for g in ORGAN_GROUPS if organ_fold_name(g) not in trained]
            log(f"note: no training image of {', '.join(absent)}: {len(fold_list)} fold models "
                f"instead of {len(ORGAN_GROUPS)}")
    else:
        try:
            k = int(folds)
        except ValueError:
            raise ValueError(f"--folds takes 'organ' or a number k, got {folds!r}") from None
        fold_list = k_folds(dataset.names, k, seed=seed)
    from nucseg.fold_training import train_folds

    return train_folds(config, dataset, run_dir, options, fold_list, log=log, dask=dask)
