"""Benchmark: train the paper's ResNet-50 Mask R-CNN+ from scratch on MoNuSeg (Kumar split).

Trains on the 16 training tiles of the Kumar split (metadata.csv split_hovernet_kumar ==
"train") with the paper config (5 channels, 256 crops, batch 1, Adam, all layers; no COCO
weights exist here, so every layer starts from its initialiser) for a wall-clock budget, then
predicts the 14 held-out tiles as `nucseg predict` does with one model (tiles of `--tile-size`,
default predict's; then the one-member merge) and scores them with nucseg.metrics.score_pair.
Prints steps/s, a loss-curve summary, step time by positive-ROI count, AJI and PQ, and then
ResNet-101 step times at 256 x 256 with the paper config (600 and 64 training ROIs), with the
fused Adam nucseg trains with, with Keras's Adam, and in mixed bfloat16 (`train --precision`).

The distance channel of the held-out tiles: the paper feeds U-Net estimates at test time.
`--test-distance gt` uses the ground-truth distance maps (an oracle: an upper bound, labelled
as such), `zeros` an all-zero channel (the paper's ablation), or pass a directory of maps
(e.g. `nucseg distance predict` output) with `--test-distance DIR`. `--train-distance DIR`
trains on such maps of the training tiles instead of ground-truth maps, so the model meets at
test time the kind of channel it learned from (the fair pipeline, docs/training.md).

    python bench/train_monuseg.py --budget-minutes 60
    python bench/train_monuseg.py --budget-minutes 8 --eval-tiles 14 --r101-steps 3
    python bench/train_monuseg.py --budget-minutes 90 --train-distance dist_train \
        --test-distance dist_test --min-scores 0.5,0.6,0.7

`--min-scores` scores each held-out tile at several detection thresholds from one detection
pass; the threshold reported as the result is chosen on the training tiles (`--tune-tiles`),
never on the held-out ones.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "monuseg2018"


def kumar_split():
    with open(DATA / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r["id"] for r in rows if r["split_hovernet_kumar"] == "train"]
    test = [r["id"] for r in rows if r["split_hovernet_kumar"] != "train"]
    return train, test


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_for_budget(config, dataset, budget_s, lr, seed, run_dir):
    import keras

    from nucseg.data.loader import LoaderOptions, TrainingLoader
    from nucseg.mrcnn.training import Trainer, build_training_model, make_optimizer, \
        set_trainable
    from nucseg.mrcnn.weights import save_weights

    keras.utils.set_random_seed(seed)
    model = build_training_model(config)
    set_trainable(model, "all")
    trainer = Trainer(model, config, make_optimizer("adam", lr, config))
    loader = TrainingLoader(dataset, config, options=LoaderOptions(seed=seed, workers=2))
    start = time.perf_counter()
    losses, step_times, epoch = [], [], 0
    first_step = None
    while True:
        for step, batch in loader.batches(epoch, config.STEPS_PER_EPOCH):
            t0 = time.perf_counter()
            values = trainer.step(batch)
            dt = time.perf_counter() - t0
            if first_step is None:
                first_step = dt        # includes tracing the graph
            else:
                step_times.append(dt)
            losses.append(values)
            if len(losses) % 10 == 0:
                print(f"  step {len(losses)}: loss {values['loss']:.3f} ({dt:.2f} s/step)",
                      flush=True)
            if time.perf_counter() - start > budget_s:
                break
        else:
            epoch += 1
            continue
        break
    wall = time.perf_counter() - start
    path = Path(run_dir) / f"mask_rcnn_{config.NAME}_{epoch + 1:04d}.h5"
    save_weights(model, path)
    return path, losses, step_times, first_step, wall


def summarize_losses(losses):
    names = ["loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
             "mrcnn_mask_loss"]
    k = max(1, min(20, len(losses) // 4))
    print(f"loss curve ({len(losses)} steps; mean of first / last {k} steps, min):")
    for name in names:
        series = np.array([step[name] for step in losses])
        print(f"  {name:17s} {series[:k].mean():8.3f} -> {series[-k:].mean():8.3f}   "
              f"min {series.min():.3f}")


def summarize_step_cost(losses, step_times):
    """Step time against the batch's positive ROIs (the mask head runs on those only)."""
    if len(step_times) < 8:
        return
    positives = np.array([step["positive_rois"] for step in losses[1:]])
    times = np.array(step_times)
    edges = np.quantile(positives, [0, 0.25, 0.5, 0.75, 1.0])
    print("step time by positive training ROIs (quartiles of the run):")
    bins = np.clip(np.searchsorted(edges, positives, side="right") - 1, 0, 3)
    for quartile, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        chosen = bins == quartile
        if not chosen.any():
            continue
        print(f"  {lo:5.0f}-{hi:5.0f} positives: median {np.median(times[chosen]):.2f} s "
              f"over {chosen.sum()} steps")
    first, last = positives[:20].mean(), positives[-20:].mean()
    print(f"  positives: mean of first / last 20 steps {first:.0f} -> {last:.0f}; "
          f"correlation with step time {np.corrcoef(positives, times)[0, 1]:.2f}")


def tile_input(name, distance):
    """The 5-channel input of one tile with the chosen distance channel, and its GT labels."""
    from nucseg.data.dataset import compose_channels
    from nucseg.io import read_float_map, read_labels, read_rgb

    rgb = read_rgb(DATA / "images" / f"{name}.tif")
    gt = read_labels(DATA / "labels" / f"{name}.png")
    if distance == "gt":
        return compose_channels(rgb, gt, 5), rgb, gt
    if distance == "zeros":
        return compose_channels(rgb, np.zeros_like(gt), 5), rgb, gt
    dist = read_float_map(next(Path(distance).glob(f"{name}*")))
    return compose_channels(rgb, None, 5, distance=dist), rgb, gt


def detect_labels(model, image, tile_size):
    """One model, no TTA, as `nucseg predict` runs it: tiled, then merged into a label map.
    Returns the label map and {label: score}."""
    from nucseg.prediction.members import Member
    from nucseg.prediction.merge import merge_members
    from nucseg.prediction.predict import PredictOptions
    from nucseg.prediction.tiling import detect_tiled

    opts = PredictOptions(tile_size=tile_size)
    found, _ = detect_tiled(model, image, opts.tile_size, opts.overlap,
                            int(model.config.DETECTION_MAX_INSTANCES))
    merged = merge_members([Member.from_detection(found, image.shape[:2])], opts.merge,
                           **opts.merge_kwargs(1))
    return merged.labels, {i + 1: float(s) for i, s in enumerate(merged.scores)}


def confident_labels(labels, scores, min_score):
    """The label map without the nuclei scoring below `min_score`, i.e. what detecting with
    DETECTION_MIN_CONFIDENCE = min_score gives."""
    from nucseg.scoring import drop_weak

    return drop_weak(labels, scores, min_score)


def evaluate(weights, names, distance, thresholds, with_baseline, tile_size):
    """Detect each tile once at the lowest threshold; score it at every threshold.

    Returns one dict per tile: {threshold: score_pair(...)}, plus "baseline" (the classical
    pipeline's scores) when asked, and "seconds" (detection time)."""
    from nucseg.baseline import baseline_labels
    from nucseg.metrics import score_pair
    from nucseg.mrcnn import Config, MaskRCNN

    config = Config.preset("paper", inference=True,
                           DETECTION_MIN_CONFIDENCE=min(thresholds))
    model = MaskRCNN(config)
    model.load_weights(weights)
    rows = []
    for name in names:
        image, rgb, gt = tile_input(name, distance)
        t0 = time.perf_counter()
        labels, scores = detect_labels(model, image, tile_size)
        row = {"seconds": time.perf_counter() - t0}
        for t in thresholds:
            row[t] = score_pair(gt, confident_labels(labels, scores, t))
        if with_baseline:
            row["baseline"] = score_pair(gt, baseline_labels(rgb))
        rows.append(row)
        print(f"  {name}: {row['seconds']:.1f} s; AJI by min score "
              + ", ".join(f"{t:g}: {row[t]['aji']:.3f}" for t in thresholds)
              + (f"; baseline {row['baseline']['aji']:.3f}" if with_baseline else ""),
              flush=True)
    return rows


def mean_of(rows, key, metric):
    return float(np.mean([row[key][metric] for row in rows]))


def r101_step_time(steps, rois):
    """Step times of ResNet-101 at 256 x 256 with the fused Adam nucseg trains with, with
    Keras's Adam, and with the fused Adam in mixed bfloat16, alternating on the same batches
    (ratios hold on a noisy machine)."""
    import keras

    from nucseg.data.dataset import Dataset
    from nucseg.data.loader import LoaderOptions, TrainingLoader
    from nucseg.mrcnn import Config
    from nucseg.mrcnn.training import Trainer, build_training_model, make_optimizer, \
        set_trainable

    train, _ = kumar_split()
    config = Config.preset("paper", BACKBONE="resnet101", TRAIN_ROIS_PER_IMAGE=rois)
    dataset = Dataset(DATA / "images", DATA / "labels", names=train[:1])
    keras.utils.set_random_seed(0)
    model = build_training_model(config)
    set_trainable(model, "all")
    mixed = build_training_model(config, "mixed_bfloat16")
    mixed.set_weights(model.get_weights())
    set_trainable(mixed, "all")
    trainers = {"fused Adam": Trainer(model, config, make_optimizer("adam", 1e-4, config)),
                "Keras Adam": Trainer(model, config, keras.optimizers.Adam(1e-4)),
                "fused Adam, --precision mixed_bfloat16":
                    Trainer(mixed, config, make_optimizer("adam", 1e-4, config))}
    loader = TrainingLoader(dataset, config, options=LoaderOptions(seed=0))
    batches = [loader.batch(0, i) for i in range(steps + 1)]
    trace, times = {}, {name: [] for name in trainers}
    for name, trainer in trainers.items():
        t0 = time.perf_counter()
        trainer.step(batches[0])
        trace[name] = time.perf_counter() - t0
    for b in batches[1:]:
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.step(b)
            times[name].append(time.perf_counter() - t0)
    return trace, times


def train_and_report(config, dataset, args, run_dir):
    print(f"training ResNet-50 paper config from scratch for {args.budget_minutes:g} min "
          f"(Adam lr {args.learning_rate:g}, all layers, 256 crops, "
          f"{config.TRAIN_ROIS_PER_IMAGE} ROIs)")
    weights, losses, step_times, first, wall = train_for_budget(
        config, dataset, args.budget_minutes * 60, args.learning_rate, args.seed, run_dir)
    n = len(losses)
    print(f"steps: {n} in {wall:.0f} s -> {n / wall:.3f} steps/s overall; first step "
          f"(incl. graph tracing) {first:.1f} s; later steps median "
          f"{np.median(step_times) if step_times else float('nan'):.2f} s "
          f"({1 / np.median(step_times) if step_times else float('nan'):.3f} steps/s)")
    summarize_losses(losses)
    summarize_step_cost(losses, step_times)
    print(f"checkpoint: {weights}")
    print(f"peak RSS so far: {peak_rss_mb():.0f} MB")

    return weights


def main():
    from nucseg.prediction.predict import PredictOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=60.0,
                        help="wall-clock training budget (excludes evaluation)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tiles", type=int, default=14, help="held-out tiles to score")
    parser.add_argument("--test-distance", default="gt", help="gt | zeros | DIR")
    parser.add_argument("--train-distance", default="gt",
                        help="gt (maps from the labels, as the paper trained) | DIR of maps")
    parser.add_argument("--min-scores", default="0.7",
                        help="detection thresholds to score, e.g. 0.5,0.6,0.7 (the model "
                             "detects once at the lowest; with 2 classes every score exceeds "
                             "0.5, so lower values add nothing)")
    parser.add_argument("--tile-size", type=int, default=PredictOptions.tile_size,
                        help="detect in tiles of this size, as `nucseg predict --tile-size`")
    parser.add_argument("--tune-tiles", type=int, default=16,
                        help="training tiles on which to choose among --min-scores (0: use "
                             "the highest)")
    parser.add_argument("--r101-steps", type=int, default=3, help="0 skips the R-101 timing")
    parser.add_argument("--r101-rois", default="600,64",
                        help="TRAIN_ROIS_PER_IMAGE values for the R-101 timing (paper: 600; "
                             "64 is what the issue's 2 s/step reference port used)")
    parser.add_argument("--run-dir", help="keep the checkpoint here (default: a temp dir)")
    parser.add_argument("--weights", help="skip training: evaluate this checkpoint")
    args = parser.parse_args()

    import tensorflow as tf

    from nucseg.data.dataset import Dataset
    from nucseg.mrcnn import Config

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}")
    train, test = kumar_split()
    print(f"Kumar split: {len(train)} training tiles, {len(test)} held-out tiles")
    config = Config.preset("paper", NAME="bench")
    train_distance = None if args.train_distance == "gt" else args.train_distance
    dataset = Dataset(DATA / "images", DATA / "labels", distance_dir=train_distance,
                      names=train)
    print(f"training distance channel: "
          f"{'ground truth from the labels' if train_distance is None else train_distance}")
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="nucseg_bench_"))
    run_dir.mkdir(parents=True, exist_ok=True)

    if args.weights:
        weights = Path(args.weights)
        print(f"evaluating {weights} (no training)")
    else:
        weights = train_and_report(config, dataset, args, run_dir)

    thresholds = sorted(float(v) for v in args.min_scores.split(","))
    chosen_on_training = args.tune_tiles > 0 and len(thresholds) > 1
    if chosen_on_training:
        print(f"choosing the detection threshold on {min(args.tune_tiles, len(train))} "
              f"TRAINING tiles (distance: {args.train_distance})")
        tuned = evaluate(weights, train[:args.tune_tiles], args.train_distance, thresholds,
                         with_baseline=False, tile_size=args.tile_size)
        # ties (e.g. every threshold <= 0.5 with two classes) go to the highest threshold
        chosen = max(thresholds, key=lambda t: (round(mean_of(tuned, t, "aji"), 9), t))
        print("  training-tile AJI by threshold: " + ", ".join(
            f"{t:g}: {mean_of(tuned, t, 'aji'):.4f}" for t in thresholds)
              + f" -> chosen {chosen:g}")
    else:
        chosen = thresholds[-1] if len(thresholds) > 1 else thresholds[0]
        print(f"threshold not tuned: reporting {chosen:g}")

    if args.eval_tiles > 0:
        label = {"gt": "ORACLE ground-truth distance channel (upper bound)",
                 "zeros": "all-zero distance channel"}.get(args.test_distance,
                                                           f"distance maps from {args.test_distance}")
        print(f"predicting {min(args.eval_tiles, len(test))} held-out tiles ({label})")
        rows = evaluate(weights, test[:args.eval_tiles], args.test_distance, thresholds,
                        with_baseline=True, tile_size=args.tile_size)
        for t in thresholds:
            note = (" <- chosen on training tiles" if chosen_on_training else " <- reported") \
                if t == chosen else \
                " (not chosen; picking by these rows would peek at the test tiles)"
            print(f"  min score {t:g}: AJI {mean_of(rows, t, 'aji'):.4f}, "
                  f"PQ {mean_of(rows, t, 'pq'):.4f}, "
                  f"{np.mean([r[t]['n_pred'] for r in rows]):.0f} detections / "
                  f"{np.mean([r[t]['n_true'] for r in rows]):.0f} nuclei per tile{note}")
        print(f"held-out mean AJI {mean_of(rows, chosen, 'aji'):.4f}, mean PQ "
              f"{mean_of(rows, chosen, 'pq'):.4f} over {len(rows)} tiles (min score "
              f"{chosen:g}; detect median {np.median([r['seconds'] for r in rows]):.1f} s/tile) "
              f"with the {label}; the classical H+Otsu+watershed baseline (nucseg baseline) "
              f"on the same tiles: AJI {mean_of(rows, 'baseline', 'aji'):.4f}, "
              f"PQ {mean_of(rows, 'baseline', 'pq'):.4f}")
        if args.test_distance == "gt":
            print("  (oracle: the model saw ground-truth distance maps, which no real test "
                  "has; pass --test-distance DIR with U-Net maps for the fair figure)")

    for rois in [int(v) for v in str(args.r101_rois).split(",") if v] if args.r101_steps else []:
        trace, times = r101_step_time(args.r101_steps, rois)
        for name in times:
            print(f"ResNet-101 paper config, 256x256, {rois} training ROIs, {name}: first step "
                  f"{trace[name]:.1f} s (tracing), then "
                  f"{', '.join(f'{t:.2f}' for t in times[name])} s/step "
                  f"(median {np.median(times[name]):.2f} s)", flush=True)
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
