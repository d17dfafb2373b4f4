"""Distance U-Net benchmark: predict cost on a 1000x1000 tile, and a short training run.

1. Predict: wall time and peak resident memory of `predict_distance` on one 1000x1000
   MoNuSeg tile (single pass, padded to 1024x1024) at --width (default 32: the width used for
   the paper's U-Net could not be confirmed, see docs/unet.md). Weights are random; cost does
   not depend on them.
2. Train: `train_unet` on the Kumar-split training tiles (metadata.csv split_hovernet_kumar ==
   "train", 16 tiles) for --budget-minutes, then MSE and Pearson correlation of the predicted
   against the ground-truth distance maps of the held-out tiles (the 14 others), pooled over
   pixels, next to the MSE of the best constant (the held-out variance) for scale.

Example (about 7 minutes on 2 shared CPU cores):
  python bench/distance_unet.py --budget-minutes 4 --crop-size 256 --eval-tiles 6
Score a model trained with the CLI instead (no predict timing, no training):
  python bench/distance_unet.py --skip-predict --model-dir unet_model/
"""
from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "monuseg2018"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def read_split():
    with open(DATA / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [(DATA / r["image"], DATA / r["label"]) for r in rows
             if r["split_hovernet_kumar"] == "train"]
    held_out = [(DATA / r["image"], DATA / r["label"]) for r in rows
                if r["split_hovernet_kumar"] != "train"]
    return train, held_out


def bench_predict(width: int, repeats: int):
    from nucseg.io import read_rgb
    from nucseg.unet.files import LoadedUNet, UNetConfig
    from nucseg.unet.model import build_unet
    from nucseg.unet.predict import predict_distance

    rgb = read_rgb(read_split()[1][0][0])
    config = UNetConfig(width=width)
    model = LoadedUNet(build_unet(width, 3, seed=0), config, Path("."))
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    predict_distance(model, rgb)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_distance(model, rgb)
        times.append(time.perf_counter() - start)
    print(f"predict {rgb.shape[0]}x{rgb.shape[1]} tile, width {width} "
          f"({model.keras_model.count_params():,} parameters), CPU:")
    print(f"  first call {first:.2f} s; next {repeats}: median {np.median(times):.2f} s "
          f"(min {min(times):.2f} s)")
    print(f"  peak RSS {peak_rss_mib():.0f} MiB (process peak before predicting "
          f"{rss_before:.0f} MiB: TensorFlow + model)")


def bench_training(width: int, budget_minutes: float, crop_size: int | None, eval_tiles: int,
                   batch_size: int, seed: int, lr_drop_every: int):
    from nucseg.unet import load_unet
    from nucseg.unet.train import TrainOptions, train_unet

    train, held_out = read_split()[0], held_out_tiles(eval_tiles)
    opts = TrainOptions(epochs=10_000, batch_size=batch_size, width=width, seed=seed,
                        crop_size=crop_size, augment=crop_size is not None,
                        lr_drop_every=lr_drop_every, checkpoint_every=0,
                        max_seconds=budget_minutes * 60)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = train_unet(train, Path(tmp) / "model", opts, progress=False)
        train_seconds = time.perf_counter() - start
        log = summary["log"]
        steps_per_epoch = -(-len(train) // batch_size)
        print(f"training: {len(train)} Kumar-train tiles, width {width}, batch {batch_size}, "
              f"{'crops ' + str(crop_size) if crop_size else 'whole tiles'}, "
              f"budget {budget_minutes} min")
        print(f"  {len(log)} complete epoch(s) ({len(log) * steps_per_epoch} steps) in "
              f"{train_seconds:.0f} s incl. data loading; peak RSS {peak_rss_mib():.0f} MiB")
        if log:
            print(f"  train MSE: epoch 1 {log[0]['train_mse']}, last {log[-1]['train_mse']}")
        evaluate_held_out(load_unet(Path(tmp) / "model"), held_out)


def evaluate_held_out(model, held_out):
    """MSE and Pearson r of predicted against ground-truth distance maps, pooled over pixels."""
    from nucseg.distance import label_distance_map
    from nucseg.io import read_labels, read_rgb
    from nucseg.unet import predict_distance

    preds, truths = [], []
    start = time.perf_counter()
    for image_path, label_path in held_out:
        preds.append(predict_distance(model, read_rgb(image_path)).ravel())
        truths.append(label_distance_map(read_labels(label_path)).ravel())
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    mse = float(np.mean((pred.astype(np.float64) - truth) ** 2))
    pearson = float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 else float("nan")
    per_image = [float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 else float("nan")
                 for p, t in zip(preds, truths)]
    print(f"held-out: {len(held_out)} tiles (Kumar test splits: "
          f"{', '.join(Path(i).stem[5:12] for i, _ in held_out)}), predicted in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"  MSE {mse:.3f} px^2 (best constant: {truth.var():.3f}; all zeros: "
          f"{np.mean(truth.astype(np.float64) ** 2):.3f})")
    print(f"  Pearson r {pearson:.3f} pooled; per tile median {np.nanmedian(per_image):.3f}"
          f" (min {np.nanmin(per_image):.3f}, max {np.nanmax(per_image):.3f})")


def held_out_tiles(eval_tiles: int):
    """The Kumar test tiles, or `eval_tiles` of them evenly spaced (several organs)."""
    held_out = read_split()[1]
    if eval_tiles and eval_tiles < len(held_out):
        held_out = [held_out[int(i)] for i in
                    np.linspace(0, len(held_out) - 1, eval_tiles).round()]
    return held_out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed predict calls")
    parser.add_argument("--budget-minutes", type=float, default=4.0)
    parser.add_argument("--train-width", type=int, default=None,
                        help="width for the training run (default: --width)")
    parser.add_argument("--crop-size", type=int, default=256,
                        help="random training crops (0: whole tiles as in the paper)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--eval-tiles", type=int, default=0, help="0: all 14 held-out tiles")
    parser.add_argument("--lr-drop-every", type=int, default=25, help="epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--model-dir", help="score this trained model (`nucseg distance train` "
                                            "output) on the held-out tiles instead of training")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: the benchmark needs ../shared beside the repository")
    if not args.skip_predict:
        bench_predict(args.width, args.repeats)
    if args.model_dir:
        from nucseg.unet import load_unet
        evaluate_held_out(load_unet(args.model_dir), held_out_tiles(args.eval_tiles))
    elif not args.skip_training:
        bench_training(args.train_width or args.width, args.budget_minutes,
                       args.crop_size or None, args.eval_tiles, args.batch_size, args.seed,
                       args.lr_drop_every)


if __name__ == "__main__":
    main()
