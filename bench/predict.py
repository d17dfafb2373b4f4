"""Benchmark: prediction time per 1000x1000 MoNuSeg tile for 1 model, TTA (4 members) and
TTA x 5 models (20 members), with peak memory; real Mask R-CNN+ graphs with random weights.

Each case runs in its own process so its peak resident memory is its own. The whole pipeline
is timed (channels, every member's detection, merge, writing the outputs) by
nucseg.prediction.predict.predict_image; the distance channel is read from a file made from the tile's
ground truth. Random weights make the detector return as many detections as it may, so the
mask head and unmolding work at their maximum (DETECTION_MAX_INSTANCES).

    python bench/predict.py [--config paper] [--backbone resnet50] [--cases 1,4,20]
                            [--max-detections N]

Timings on a shared CPU machine are noisy; compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TILE = "TCGA-18-5592-01Z-00-DX1"
CASES = {1: (1, False), 4: (1, True), 20: (5, True)}     # members -> (models, tta)


def run_case(n_members: int, args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from nucseg.prediction.channels import ChannelSources
    from nucseg.distance import label_distance_map
    from nucseg.io import read_labels, write_float_map
    from nucseg.model_files import inference_config
    from nucseg.mrcnn import Config, MaskRCNN
    from nucseg.prediction.predict import PredictOptions, predict_image

    n_models, tta = CASES[n_members]
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    image = SHARED / "data" / "monuseg2018" / "images" / f"{TILE}.tif"
    labels = read_labels(SHARED / "data" / "monuseg2018" / "labels" / f"{TILE}.png")
    write_float_map(work / f"{TILE}_dist.tif", label_distance_map(labels))
    overrides = {"BACKBONE": args.backbone}
    config = inference_config(Config.preset(args.config, **overrides),
                              DETECTION_MAX_INSTANCES=args.max_detections)
    t0 = time.perf_counter()
    detectors = []
    import keras

    for k in range(n_models):
        keras.utils.set_random_seed(1000 + k)       # the same random models in every run
        model = MaskRCNN(config)
        model.name = f"random{k}"
        detectors.append(model)
    build = time.perf_counter() - t0
    opts = PredictOptions(tta=tta, progress=False,
                          tile_size=args.tile_size or PredictOptions.tile_size)
    sources = ChannelSources(distance_dir=work)
    # warm-up: the first call traces the graph (once per model and input shape)
    t0 = time.perf_counter()
    side = min(1000, opts.tile_size)
    for d in detectors:
        d.detect([np.zeros((side, side, config.IMAGE_CHANNEL_COUNT), np.uint8)])
    warm = time.perf_counter() - t0
    record = predict_image(image, detectors, work / "out", opts, sources)
    timings = record["timings_seconds"]
    return {"members": n_members, "models": n_models, "tta": tta, "build_s": round(build, 1),
            "warmup_s": round(warm, 1), "total_s": timings["total"],
            "detect_s": timings["detect"], "merge_s": timings["merge"],
            "write_s": timings["write"], "channels_s": timings.get("channels", 0.0),
            "detections": sum(m["detections"] for m in record["members"]),
            "nuclei": record["nuclei"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "max_detections": config.DETECTION_MAX_INSTANCES,
            "backbone": config.BACKBONE}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper")
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--cases", default="1,4,20", help="member counts to run (1, 4, 20)")
    parser.add_argument("--max-detections", type=int, default=None,
                        help="override DETECTION_MAX_INSTANCES (paper inference: 2000)")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="as `nucseg predict --tile-size` (default: predict's)")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    print(f"1000x1000 tile {TILE}, config {args.config} ({args.backbone}), random weights, "
          f"{os.cpu_count()} CPU cores")
    rows = []
    for case in (int(c) for c in args.cases.split(",")):
        cmd = [sys.executable, __file__, "--case", str(case), "--config", args.config,
               "--backbone", args.backbone]
        if args.max_detections:
            cmd += ["--max-detections", str(args.max_detections)]
        if args.tile_size:
            cmd += ["--tile-size", str(args.tile_size)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"case {case} failed:\n{out.stderr[-2000:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['members']:2d} members ({row['models']} model(s), TTA {row['tta']}): "
              f"{row['total_s']:7.1f} s per tile ({row['detect_s']:.1f} s detect, "
              f"{row['total_s'] / row['members']:.1f} s per member, merge "
              f"{row['merge_s']:.2f} s, write {row['write_s']:.2f} s), "
              f"{row['detections']} detections -> {row['nuclei']} nuclei, peak RSS "
              f"{row['peak_rss_mib']:.0f} MiB (build {row['build_s']} s, first-call trace "
              f"{row['warmup_s']} s)")
    if len(rows) > 1:
        base = rows[0]["total_s"]
        print("time ratios to the first case: " + ", ".join(
            f"{r['members']} members x{r['total_s'] / base:.1f}" for r in rows))


if __name__ == "__main__":
    main()
