"""The StarDist side of bench/peer_stardist.py, run by it with the StarDist venv's python.

It reads one JSON job file (argv[1]) and writes only files: the model (StarDist's own
format), <tile>_labels.npy per predicted tile and result.json. It imports StarDist, csbdeep
and TensorFlow with tf-keras or Keras 3, so it never runs in nucseg's environment; see
docs/peer-stardist.md for the recipe.
"""
import json, os, random, sys, time
from pathlib import Path

job = json.loads(Path(sys.argv[1]).read_text())
import numpy as np
import tensorflow as tf
import csbdeep, stardist
from csbdeep.utils import normalize
from csbdeep.utils.tf import keras_import, IS_KERAS_3_PLUS
from stardist import calculate_extents, fill_label_holes
from stardist.models import Config2D, StarDist2D

keras = keras_import()
Callback = keras_import("callbacks", "Callback")
if IS_KERAS_3_PLUS:
    keras_version = "keras " + keras.__version__
else:
    import tf_keras
    keras_version = "tf-keras " + tf_keras.__version__

seed = job["seed"]
random.seed(seed)
np.random.seed(seed)
keras.utils.set_random_seed(seed)

AXIS_NORM = (0, 1) if job["norm"] == "channel" else (0, 1, 2)


def load(path):
    return np.load(path, allow_pickle=False)


def prepare(image):
    return normalize(image, 1, 99.8, axis=AXIS_NORM)


def dihedral(x, y):
    """One of the 8 flips / 90-degree rotations, the same for image and labels."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if np.random.rand() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    return x, y


def augment_notebook(x, y):
    x, y = dihedral(x, y)
    x = x * np.random.uniform(0.6, 2.0) + np.random.uniform(-0.2, 0.2)
    x = x + np.random.uniform(0.0, 0.02) * np.random.normal(0.0, 1.0, x.shape)
    return x, y


AUGMENTERS = {"notebook": augment_notebook, "fliprot": dihedral}


class Budget(Callback):
    """Stops training once the wall-clock budget is spent; prints progress."""

    def __init__(self, budget_s, every):
        super().__init__()
        self.budget_s, self.every = budget_s, every
        self.t0 = time.perf_counter()
        self.steps, self.epochs, self.history, self.stopped = 0, 0, [], False
        self.first_step_s, self.step_started = None, None
        self.console = sys.stdout

    def on_train_batch_begin(self, batch, logs=None):
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = time.perf_counter()
        if self.first_step_s is None:
            self.first_step_s = now - self.step_started
        if self.steps % self.every == 0:
            loss = float((logs or {}).get("loss", float("nan")))
            print(f"  step {self.steps}: loss {loss:.4f}, {now - self.t0:.0f} s elapsed",
                  file=self.console, flush=True)
        if now - self.t0 >= self.budget_s and not self.stopped:
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, "steps": self.steps, **logs})
        print(f"  epoch {epoch + 1} ({self.steps} steps, {time.perf_counter() - self.t0:.0f} s):"
              f" loss {logs.get('loss', float('nan')):.4f}, "
              f"val_loss {logs.get('val_loss', float('nan')):.4f}", file=self.console,
              flush=True)


out = Path(job["out"])
X = [prepare(load(p)) for p in job["train_images"]]
Y = [fill_label_holes(load(p)) for p in job["train_labels"]]
X_tune = [prepare(load(p)) for p in job["tune_images"]]
Y_tune = [fill_label_holes(load(p)) for p in job["tune_labels"]]

config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=3, use_gpu=False,
                  train_patch_size=(256, 256), train_tensorboard=False,
                  train_epochs=job["max_epochs"], train_steps_per_epoch=job["steps_per_epoch"])
model = StarDist2D(config, name="stardist_he", basedir=str(out / "model"))
median_size = [float(v) for v in calculate_extents(Y, np.median)]
fov = [float(v) for v in model._axes_tile_overlap("YX")]
print(f"StarDist {stardist.__version__}, csbdeep {csbdeep.__version__}, TensorFlow "
      f"{tf.__version__}, {keras_version}; median nucleus extent {median_size} px, network "
      f"field of view {fov} px", flush=True)

model.prepare_for_training()
budget = Budget(job["budget_s"], job["progress_every"])
model.callbacks.append(budget)
# StarDist trains with Keras's progress bar (verbose=1): send it to a file, keep our lines
console = sys.stdout
with open(out / "keras_progress.log", "w") as keras_log:
    sys.stdout = keras_log
    budget.console = console
    budget.t0 = time.perf_counter()
    try:
        model.train(X, Y, validation_data=(X_tune, Y_tune),
                    augmenter=AUGMENTERS[job["augment"]], seed=seed)
        # ends in StarDist's _training_finished, which loads weights_best.h5
    finally:
        sys.stdout = console
train_s = time.perf_counter() - budget.t0
val = np.array([np.nan if h.get("val_loss") is None else h["val_loss"]
                for h in budget.history], dtype=float)
best_epoch = int(np.nanargmin(val)) + 1 if np.isfinite(val).any() else None

t0 = time.perf_counter()
tune_error = None
try:
    thresholds = model.optimize_thresholds(X_tune, Y_tune)
except Exception as exc:  # e.g. a barely trained model; say so, keep StarDist's defaults
    tune_error = f"{type(exc).__name__}: {exc}"
    thresholds = {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}
    print(f"optimize_thresholds failed ({tune_error}); using {thresholds}", flush=True)
tune_s = time.perf_counter() - t0

# warm-up (graph tracing) on a tuning tile, untimed
model.predict_instances(X_tune[0], n_tiles=model._guess_n_tiles(X_tune[0]),
                        show_tile_progress=False)
pred_dir = out / "pred"
pred_dir.mkdir(parents=True, exist_ok=True)
tiles = []
for name, path in zip(job["test_names"], job["test_images"]):
    image = load(path)
    t = time.perf_counter()
    x = prepare(image)
    n_tiles = model._guess_n_tiles(x)
    labels, details = model.predict_instances(x, n_tiles=n_tiles, show_tile_progress=False)
    seconds = time.perf_counter() - t
    np.save(pred_dir / f"{name}_labels.npy", labels.astype(np.int32))
    tiles.append({"image": name, "seconds": seconds, "shape": list(image.shape[:2]),
                  "n_tiles": [int(v) for v in n_tiles], "n_pred": int(len(details["prob"]))})
    print(f"  {name}: {seconds:.1f} s, {len(details['prob'])} nuclei", flush=True)

result = {
    "versions": {"stardist": stardist.__version__, "csbdeep": csbdeep.__version__,
                 "tensorflow": tf.__version__, "keras": keras_version,
                 "numpy": np.__version__, "python": sys.version.split()[0]},
    "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
    "median_extent": median_size, "field_of_view": fov,
    "train_s": train_s, "steps": budget.steps, "epochs": budget.epochs,
    "stopped_by_budget": budget.stopped, "first_step_s": budget.first_step_s,
    "history": budget.history, "best_epoch": best_epoch,
    "thresholds": {k: float(v) for k, v in dict(thresholds).items()},
    "tune_s": tune_s, "tune_error": tune_error, "tiles": tiles,
}
tmp = out / "result.json.tmp"
tmp.write_text(json.dumps(result, indent=1))
tmp.replace(out / "result.json")
