"""Training the multi-task U-Net on tiles and instance label maps; resumable per epoch.

Targets are made once per tile from its whole label map (nucseg.multitask.targets) and travel
with the image through the augmentation of `nucseg train` (nucseg.data.augment: random crop,
flips, rotation, brightness/contrast, blur; targets as mask channels, moved with nearest-
neighbour interpolation, untouched by the photometric steps). Pixels that came from padding or
rotated-in corners are left out of the loss. An epoch is one pass over the tiles in a seeded
random order, `crops_per_tile` crops each; the same seed, data and machine give the same
weights, and a run stopped after epoch k and resumed gives the same weights as one run.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nucseg.io import (InputError, atomic_path, read_epoch_log, read_image_and_labels,
                       write_csv_rows)
from nucseg.multitask.files import (RunConfig, WEIGHTS_NAME, load_weights_into, read_config,
                                    save_weights, write_config)
from nucseg.multitask.network import TASKS, LossWeights, NetworkConfig
from nucseg.multitask.targets import TargetOptions, make_targets

LOG_NAME = "training_log.csv"
STATE_NAME = "checkpoints/state.npz"
LOG_FIELDS = ["epoch", "learning_rate", "loss", *TASKS, "seconds"]


@dataclass
class TrainOptions:
    epochs: int = 50
    batch_size: int = 2
    crop_size: int = 256
    crops_per_tile: int = 1
    lr: float = 1e-4                  # Adam, as the DSB2018 solution
    lr_drop_every: int = 0            # divide by 10 every N epochs (0: constant)
    loss: LossWeights = field(default_factory=LossWeights)
    flips: bool = True
    rotate: bool = True
    brightness_contrast: bool = True
    blur: bool = False                # off by default, as in `nucseg train`
    init_backbone: str | None = None
    checkpoint_every: int = 10
    max_seconds: float | None = None
    seed: int = 0

    def validate(self):
        for name in ("epochs", "batch_size", "crops_per_tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.crop_size < 32 or self.crop_size % 32:
            raise ValueError(f"crop size must be a multiple of 32 (>= 32), got {self.crop_size}")
        if self.lr <= 0:
            raise ValueError("learning rate must be > 0")

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainOptions":
        data = dict(data)
        data["loss"] = LossWeights(**data.get("loss", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Tile:
    name: str
    stack: np.ndarray     # H x W x 6 uint8: R, G, B, foreground, boundary, interior (0/1)
    labels: np.ndarray


def load_tiles(pairs, targets: TargetOptions) -> list[Tile]:
    """Read (image, label map) pairs and make their targets; the first bad file stops."""
    tiles = []
    for image_path, label_path in pairs:
        rgb, labels = read_image_and_labels(image_path, label_path)
        tiles.append(Tile(Path(image_path).stem,
                          np.dstack([rgb, make_targets(labels, targets)]), labels))
    return tiles


def model_input(rgb: np.ndarray, mean_pixel) -> np.ndarray:
    """Matterport molding: float32 RGB minus MEAN_PIXEL."""
    return np.asarray(rgb, np.float32) - np.asarray(mean_pixel, np.float32)


def make_batch(tiles, items, opts: TrainOptions, mean_pixel):
    """(inputs, targets, valid mask) of augmented crops; items = (tile index, seed) pairs."""
    from nucseg.data.augment import AugmentOptions, augment

    aug = AugmentOptions(crop_size=opts.crop_size, flips=opts.flips, rotate=opts.rotate,
                         brightness_contrast=opts.brightness_contrast, blur=opts.blur)
    xs, ys, masks = [], [], []
    for index, seed in items:
        tile = tiles[index]
        stack, _, valid = augment(tile.stack, tile.labels, aug, seed, return_valid=True)
        x = model_input(stack[..., :3], mean_pixel)
        x[~valid] = 0.0
        xs.append(x)
        ys.append(stack[..., 3:].astype(np.float32))
        masks.append(valid[..., None].astype(np.float32))
    return np.stack(xs), np.stack(ys), np.stack(masks)


def _make_step(model, optimizer, weights: LossWeights):
    import tensorflow as tf

    from nucseg.multitask.network import logits_model, task_losses

    logits = logits_model(model)
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32),
            tf.TensorSpec((None, None, None, 3), tf.float32),
            tf.TensorSpec((None, None, None, 1), tf.float32)]

    @tf.function(input_signature=spec)
    def step(x, y, mask):
        with tf.GradientTape() as tape:
            total, parts = task_losses(y, logits(x, training=True), mask, weights)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total, tf.stack(parts)
    return step


def _save_state(run_dir: Path, optimizer, epochs_done: int):
    arrays = {f"v{i:04d}": v.numpy() for i, v in enumerate(optimizer.variables)}
    with atomic_path(run_dir / STATE_NAME) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, epochs_done=np.int64(epochs_done), **arrays)


def _load_state(run_dir: Path, optimizer) -> int:
    path = run_dir / STATE_NAME
    if not path.is_file():
        raise InputError(path, "missing: cannot resume without the training state")
    with np.load(path, allow_pickle=False) as data:
        keys = sorted(k for k in data.files if k.startswith("v"))
        shapes = [tuple(v.shape) for v in optimizer.variables]
        if [tuple(data[k].shape) for k in keys] != shapes:
            raise InputError(path, f"training state holds {len(keys)} arrays that do not fit "
                                   f"this network's optimiser ({len(shapes)} variables)")
        for key, var in zip(keys, optimizer.variables):
            var.assign(data[key])
        return int(data["epochs_done"])


def resolve_run(run_dir: Path, network: NetworkConfig, targets: TargetOptions,
                opts: TrainOptions, resume: bool) -> tuple[RunConfig, TrainOptions]:
    """The run to train: new, or the saved one on --resume (only the epoch count may grow)."""
    if resume:
        saved = read_config(run_dir)
        saved_opts = TrainOptions.from_dict(saved.training.get("options", {}))
        if opts.epochs is not None:          # None: keep the run's own epoch target
            saved_opts.epochs = opts.epochs
        saved_opts.max_seconds = opts.max_seconds
        done = int(saved.training.get("epochs_done", 0))
        if done >= saved_opts.epochs:
            raise ValueError(f"{run_dir}: the run has done {done} of {saved_opts.epochs} "
                             f"epoch(s); pass --epochs N with N > {done} to train on")
        return saved, saved_opts
    if (run_dir / "config.yaml").is_file():
        raise FileExistsError(f"{run_dir} already holds a multi-task U-Net run; pass --resume "
                              "to continue it or choose another directory")
    return RunConfig(network, targets), opts


def train_multitask(pairs, run_dir, network: NetworkConfig | None = None,
                    targets: TargetOptions | None = None, opts: TrainOptions | None = None,
                    resume: bool = False, progress: bool = True, log=None) -> dict:
    """Train (or resume) a multi-task U-Net into `run_dir`; returns a summary dict."""
    import keras
    from tqdm import tqdm

    from nucseg.multitask.network import build_network, load_backbone

    run_dir = Path(run_dir)
    opts = opts or TrainOptions()
    if not pairs:
        raise ValueError("no training pairs (image + label map with the same stem)")
    config, opts = resolve_run(run_dir, network or NetworkConfig(), targets or TargetOptions(),
                               opts, resume)
    opts.validate()
    tiles = load_tiles(pairs, config.targets)

    keras.utils.set_random_seed(opts.seed)
    model = build_network(config.network, seed=opts.seed)
    optimizer = keras.optimizers.Adam(learning_rate=opts.lr)
    optimizer.build(model.trainable_variables)
    start, init = 0, None
    if resume:
        load_weights_into(model, run_dir / WEIGHTS_NAME, config)
        start = _load_state(run_dir, optimizer)
    elif opts.init_backbone:
        init = load_backbone(model, opts.init_backbone, config.network)
        if log:
            log(f"encoder initialised from {opts.init_backbone}: {init['layers_loaded']} layers")
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = read_epoch_log(run_dir / LOG_NAME, start)
    config.training = {"options": opts.to_dict(), "images": [str(p) for p, _ in pairs],
                       "labels": [str(p) for _, p in pairs], "epochs_done": start,
                       **({"init_backbone": init} if init else
                          {k: v for k, v in config.training.items() if k == "init_backbone"})}
    write_config(run_dir, config)
    step = _make_step(model, optimizer, opts.loss)

    started, stopped_early, epoch = time.monotonic(), False, start
    for epoch in range(start, opts.epochs):
        epoch_start = time.monotonic()
        lr = opts.lr * (0.1 ** (epoch // opts.lr_drop_every) if opts.lr_drop_every else 1.0)
        optimizer.learning_rate.assign(lr)
        rng = np.random.default_rng([opts.seed, epoch])
        order = np.concatenate([rng.permutation(len(tiles)) for _ in range(opts.crops_per_tile)])
        seeds = rng.integers(0, 2 ** 31 - 1, len(order))
        batches = [list(zip(order[i:i + opts.batch_size], seeds[i:i + opts.batch_size]))
                   for i in range(0, len(order), opts.batch_size)]
        sums, count = np.zeros(4), 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch",
                   disable=not progress, file=sys.stderr, leave=False)
        for items in bar:
            x, y, mask = make_batch(tiles, items, opts, config.network.mean_pixel)
            total, parts = step(x, y, mask)
            values = np.concatenate([[float(total)], np.asarray(parts, np.float64)])
            sums, count = sums + values, count + 1
            bar.set_postfix(loss=f"{values[0]:.4f}")
            if opts.max_seconds is not None and time.monotonic() - started > opts.max_seconds:
                stopped_early = True
                break
        bar.close()
        if stopped_early:
            break
        means = sums / max(count, 1)
        rows.append({"epoch": epoch + 1, "learning_rate": lr, "loss": round(means[0], 6),
                     **{t: round(means[k + 1], 6) for k, t in enumerate(TASKS)},
                     "seconds": round(time.monotonic() - epoch_start, 2)})
        _finish_epoch(run_dir, model, optimizer, config, epoch + 1, opts)
        write_csv_rows(run_dir / LOG_NAME, rows, LOG_FIELDS)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {rows[-1]['loss']} (" + ", ".join(
                f"{t} {rows[-1][t]}" for t in TASKS) + ")", file=sys.stderr)
    else:
        epoch = opts.epochs
    if stopped_early:       # keep what was learnt; --resume repeats the interrupted epoch
        save_weights(model, run_dir / WEIGHTS_NAME)
        _save_state(run_dir, optimizer, epoch)
    return {"run_dir": str(run_dir), "epochs_done": epoch, "stopped_early": stopped_early,
            "seconds": round(time.monotonic() - started, 1), "log": rows,
            "config": config.to_dict()}


def _finish_epoch(run_dir: Path, model, optimizer, config: RunConfig, epochs_done: int,
                  opts: TrainOptions):
    """Weights, resume state, then the config that names the epoch as done."""
    save_weights(model, run_dir / WEIGHTS_NAME)
    if opts.checkpoint_every and epochs_done % opts.checkpoint_every == 0:
        save_weights(model, run_dir / "checkpoints" / f"epoch_{epochs_done:03d}.weights.h5")
    _save_state(run_dir, optimizer, epochs_done)
    config.training["epochs_done"] = epochs_done
    write_config(run_dir, config)
