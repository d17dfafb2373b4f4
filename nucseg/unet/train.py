"""Training the distance U-Net: masked MSE, Adam with a step schedule, resumable per epoch.

Each sample is a whole tile (or a random crop of `crop_size`, for quick runs on a CPU), padded
at the bottom/right by reflection to a multiple of 32 common to its batch. The loss is the MSE
over the ORIGINAL pixels only: a 0/1 mask zeroes the padding, which is the same as cropping the
output back before the loss. Learning rate: `lr` divided by 10 every `lr_drop_every` epochs.

Model directory after (or during) training:
  unet.json, unet.weights.h5     the model (updated after every epoch)
  training_log.csv               epoch, learning_rate, train_mse, val_mse, seconds
  checkpoints/state.npz          optimiser moments and dropout RNG states for --resume
  checkpoints/epoch_NNN.weights.h5  every `checkpoint_every` epochs (0: none kept)
  train_record.yaml              the run record
With the same seed, data and hardware, a run gives the same weights, and a run stopped after
epoch k and resumed gives the same weights as one run straight through.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.io import InputError, read_epoch_log, read_image_and_labels, write_csv_rows
from nucseg.unet.files import (CHANNEL_SETS, UNetConfig, read_config, save_weights,
                               write_config)
from nucseg.unet.predict import model_input, pad_to, padded_size, predict_array

LOG_NAME = "training_log.csv"
STATE_NAME = "checkpoints/state.npz"
LOG_FIELDS = ["epoch", "learning_rate", "train_mse", "val_mse", "seconds"]


@dataclass
class TrainOptions:
    epochs: int = 80
    batch_size: int = 2
    width: int | None = None          # None: 32 for a new model, the saved width on resume
    hematoxylin: bool | None = None   # add the H channel (None: no / as saved)
    lr: float = 1e-3
    lr_drop_every: int = 25
    seed: int = 0
    crop_size: int | None = None      # None: whole tiles (the paper); else random crops
    augment: bool = False             # random flips and 90-degree rotations
    checkpoint_every: int = 10
    max_seconds: float | None = None  # stop (after saving) once this much time has passed
    extra: dict = field(default_factory=dict)

    def validate(self):
        for name in ("epochs", "batch_size", "lr_drop_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0:
            raise ValueError("learning rate must be > 0")
        if self.crop_size is not None and self.crop_size < 32:
            raise ValueError("crop size must be >= 32 px")


@dataclass
class Sample:
    name: str
    x: np.ndarray  # HxWxC normalised input
    y: np.ndarray  # HxW distance target


def load_samples(pairs, channels) -> list[Sample]:
    """Read (image, labels) pairs into network inputs and distance targets; fail on bad input."""
    from nucseg.distance import label_distance_map

    samples = []
    for image_path, label_path in pairs:
        rgb, labels = read_image_and_labels(image_path, label_path)
        samples.append(Sample(Path(image_path).stem, model_input(rgb, channels),
                              label_distance_map(labels)))
    return samples


def _crop_and_augment(sample: Sample, opts: TrainOptions, rng) -> tuple[np.ndarray, np.ndarray]:
    x, y = sample.x, sample.y
    if opts.crop_size is not None:
        ch, cw = min(opts.crop_size, x.shape[0]), min(opts.crop_size, x.shape[1])
        r0 = int(rng.integers(0, x.shape[0] - ch + 1))
        c0 = int(rng.integers(0, x.shape[1] - cw + 1))
        x, y = x[r0:r0 + ch, c0:c0 + cw], y[r0:r0 + ch, c0:c0 + cw]
    if opts.augment:
        k = int(rng.integers(0, 4))
        x, y = np.rot90(x, k), np.rot90(y, k)
        if rng.integers(0, 2):
            x, y = x[:, ::-1], y[:, ::-1]
    return x, y


def make_batch(items) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad (x, y) pairs to one multiple-of-32 size: inputs by reflection, targets with a mask."""
    height = padded_size(max(x.shape[0] for x, _ in items))
    width = padded_size(max(x.shape[1] for x, _ in items))
    xs, ys, masks = [], [], []
    for x, y in items:
        xs.append(pad_to(x, height, width, "reflect"))
        ys.append(pad_to(y, height, width, "constant"))
        masks.append(pad_to(np.ones(y.shape, np.float32), height, width, "constant"))
    return (np.stack(xs), np.stack(ys)[..., None].astype(np.float32),
            np.stack(masks)[..., None])


def masked_mse(y_true, y_pred, mask):
    import tensorflow as tf

    return tf.reduce_sum(mask * tf.square(y_pred - y_true)) / tf.maximum(tf.reduce_sum(mask),
                                                                         1.0)


def _make_train_step(model, optimizer):
    import tensorflow as tf

    channels = model.input_shape[-1]
    spec = [tf.TensorSpec((None, None, None, channels), tf.float32),
            tf.TensorSpec((None, None, None, 1), tf.float32),
            tf.TensorSpec((None, None, None, 1), tf.float32)]

    @tf.function(input_signature=spec)  # one trace for every batch and tile size
    def step(x, y, mask):
        with tf.GradientTape() as tape:
            loss = masked_mse(y, model(x, training=True), mask)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return step


def evaluate(keras_model, samples: list[Sample]) -> float:
    """Pixel-weighted MSE of untiled inference (dropout off) over whole samples."""
    total, count = 0.0, 0
    for s in samples:
        pred = predict_array(keras_model, s.x, tile_size=padded_size(max(s.x.shape[:2])),
                             margin=0)
        total += float(np.sum((pred.astype(np.float64) - s.y) ** 2))
        count += s.y.size
    return total / max(count, 1)


def _state_variables(model, optimizer):
    """Everything besides the weights that a bit-exact resume needs, in a fixed order."""
    return list(optimizer.variables) + list(model.non_trainable_variables)


def _save_state(model_dir: Path, model, optimizer, epochs_done: int):
    from nucseg.io import atomic_path

    arrays = {f"v{i:04d}": np.asarray(v) for i, v in
              enumerate(_state_variables(model, optimizer))}
    path = model_dir / STATE_NAME
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, epochs_done=np.int64(epochs_done), **arrays)


def _load_state(model_dir: Path, model, optimizer) -> int:
    path = model_dir / STATE_NAME
    if not path.is_file():
        raise InputError(path, "missing: cannot resume without the training state")
    variables = _state_variables(model, optimizer)
    with np.load(path, allow_pickle=False) as data:
        keys = sorted(k for k in data.files if k.startswith("v"))
        if len(keys) != len(variables):
            raise InputError(path, f"training state holds {len(keys)} arrays, this model and "
                                   f"optimiser need {len(variables)}")
        for key, var in zip(keys, variables):
            if tuple(data[key].shape) != tuple(var.shape):
                raise InputError(path, f"training state array {key} has shape "
                                       f"{data[key].shape}, expected {tuple(var.shape)}")
        for key, var in zip(keys, variables):
            var.assign(data[key])
        return int(data["epochs_done"])


def _resolve_config(model_dir: Path, opts: TrainOptions, resume: bool) -> UNetConfig:
    """The network to train: new from options, or the saved one (options must agree)."""
    has_model = (model_dir / "unet.json").is_file()
    if resume:
        saved = read_config(model_dir)
        wanted = UNetConfig(width=opts.width or saved.width,
                            channels=CHANNEL_SETS[4 if (saved.uses_hematoxylin
                                                        if opts.hematoxylin is None
                                                        else opts.hematoxylin) else 3])
        diffs = saved.mismatches(wanted)
        if diffs:
            raise ValueError(f"{model_dir}: cannot resume, the saved model differs from the "
                             f"options: {', '.join(diffs)} (saved vs requested)")
        return saved
    if has_model:
        raise FileExistsError(f"{model_dir} already holds a U-Net; pass --resume to continue "
                              "it or choose another output directory")
    return UNetConfig(width=opts.width or 32,
                      channels=CHANNEL_SETS[4 if opts.hematoxylin else 3])


def train_unet(pairs, model_dir, opts: TrainOptions | None = None, resume: bool = False,
               val_pairs=(), progress: bool = True) -> dict:
    """Train (or resume) a distance U-Net on (image, labels) pairs; returns a summary dict."""
    import keras
    from tqdm import tqdm

    from nucseg.unet.model import build_unet

    opts = opts or TrainOptions()
    opts.validate()
    model_dir = Path(model_dir)
    if not pairs:
        raise ValueError("no training pairs (image + label map with the same stem)")
    config = _resolve_config(model_dir, opts, resume)
    samples = load_samples(pairs, config.channels)
    val_samples = load_samples(val_pairs, config.channels) if val_pairs else []

    keras.utils.set_random_seed(opts.seed)
    model = build_unet(config.width, config.in_channels, config.dropout, seed=opts.seed)
    optimizer = keras.optimizers.Adam(learning_rate=opts.lr)
    optimizer.build(model.trainable_variables)
    start_epoch = 0
    if resume:
        model.load_weights(str(model_dir / "unet.weights.h5"))
        start_epoch = _load_state(model_dir, model, optimizer)
    model_dir.mkdir(parents=True, exist_ok=True)
    log_rows = read_epoch_log(model_dir / LOG_NAME, start_epoch)
    config.training = {**{k: v for k, v in vars(opts).items() if k != "extra"}, **opts.extra,
                       "width": config.width, "hematoxylin": config.uses_hematoxylin,
                       "images": [str(p) for p, _ in pairs], "epochs_done": start_epoch}
    write_config(model_dir, config)
    step = _make_train_step(model, optimizer)

    started = time.monotonic()
    stopped_early = False
    epoch = start_epoch
    for epoch in range(start_epoch, opts.epochs):
        epoch_start = time.monotonic()
        lr = opts.lr * 0.1 ** (epoch // opts.lr_drop_every)
        optimizer.learning_rate.assign(lr)
        rng = np.random.default_rng([opts.seed, epoch])
        order = rng.permutation(len(samples))
        batches = [order[i:i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
        loss_sum, pixel_sum = 0.0, 0.0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch",
                   disable=not progress, file=sys.stderr, leave=False)
        for idx in bar:
            x, y, mask = make_batch([_crop_and_augment(samples[i], opts, rng) for i in idx])
            loss = float(step(x, y, mask))
            loss_sum += loss * float(mask.sum())
            pixel_sum += float(mask.sum())
            bar.set_postfix(mse=f"{loss:.3f}")
            if opts.max_seconds is not None and time.monotonic() - started > opts.max_seconds:
                stopped_early = True
                break
        bar.close()
        if stopped_early:
            break
        row = {"epoch": epoch + 1, "learning_rate": lr,
               "train_mse": round(float(loss_sum / max(pixel_sum, 1)), 6),
               "val_mse": round(evaluate(model, val_samples), 6) if val_samples else "",
               "seconds": round(time.monotonic() - epoch_start, 2)}
        _finish_epoch(model_dir, model, optimizer, config, epoch + 1, opts)
        log_rows.append(row)
        write_csv_rows(model_dir / LOG_NAME, log_rows, LOG_FIELDS)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: train_mse {row['train_mse']}"
                       + (f", val_mse {row['val_mse']}" if val_samples else ""), file=sys.stderr)
    else:
        epoch = opts.epochs
    if stopped_early:
        # keep what was learnt; the state still says the last completed epoch, so --resume
        # repeats the interrupted epoch from these weights (not bit-identical to one run)
        save_weights(model, model_dir / "unet.weights.h5")
        _save_state(model_dir, model, optimizer, epoch)
    return {"model_dir": str(model_dir), "epochs_done": epoch,
            "stopped_early": stopped_early, "seconds": round(time.monotonic() - started, 1),
            "log": log_rows, "config": config.to_dict()}


def _finish_epoch(model_dir: Path, model, optimizer, config: UNetConfig, epochs_done: int,
                  opts: TrainOptions):
    """Save weights, resume state and config (in that order: the config names what is done)."""
    save_weights(model, model_dir / "unet.weights.h5")
    if opts.checkpoint_every and epochs_done % opts.checkpoint_every == 0:
        save_weights(model, model_dir / "checkpoints" / f"epoch_{epochs_done:03d}.weights.h5")
    _save_state(model_dir, model, optimizer, epochs_done)
    config.training["epochs_done"] = epochs_done
    write_config(model_dir, config)


def training_pairs(images, labels) -> list[tuple[Path, Path]]:
    """Pair tiles with label maps by stem ('<stem>_labels' also matches); every tile needs one."""
    from nucseg.io import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, expand_inputs, pair_by_stem

    image_files = expand_inputs([images], IMAGE_EXTENSIONS)
    label_files = expand_inputs([labels], LABEL_EXTENSIONS)
    if not image_files:
        raise ValueError(f"no images found in {images}")
    pairs, lonely_images, _ = pair_by_stem(image_files, label_files, ("_labels", "_label"))
    if lonely_images:
        names = ", ".join(p.name for p in lonely_images[:5])
        more = f" and {len(lonely_images) - 5} more" if len(lonely_images) > 5 else ""
        raise ValueError(f"{len(lonely_images)} image(s) have no label map in {labels}: "
                         f"{names}{more}")
    return pairs
