"""Benchmark: does a model's float16 file find what its float32 checkpoint finds?

`nucseg models pack` stores Mask R-CNN weights as float16 (half the bytes) and they load as
float32. This script predicts the same tiles with both files at the same settings and
compares the nuclei: counts per tile, and how many boxes of the float32 run have a float16
box within 1 px on every side (nuclei paired by mask IoU > 0.5).

    python bench/float16_agreement.py --float32 runs/ship_r50 --float16 monuseg-r50 \\
        --images tiles/ --distance-dir dist/ --min-confidence 0.6 --mask-threshold 0.4 \\
        --out f16chk/

`--float32` is a run directory or .h5 with its config; `--float16` a shipped model's name or
a .h5 with its config. Both runs get exactly the same settings: the confidence and mask
thresholds are required, and `--distance-dir` (required for 5-channel models) replaces a
shipped model's own U-Net. Outputs already in `--out/f32` and `--out/f16` are reused. The mark
the shipped model is held to: counts within 1 %, boxes within 1 px.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def box_agreement(labels32, labels16, tolerance: int = 1) -> tuple[int, int, int]:
    """(float32 nuclei, float16 nuclei, float32 nuclei whose paired float16 box is within
    `tolerance` px on every side). Pairs: the float16 nucleus covering most of each float32
    one, when their IoU exceeds 0.5."""
    import numpy as np
    from skimage.measure import regionprops

    boxes16 = {r.label: np.array(r.bbox) for r in regionprops(labels16)}
    areas16 = {r.label: r.area for r in regionprops(labels16)}
    props32 = regionprops(labels32)
    close = 0
    for region in props32:
        under = labels16[tuple(region.coords.T)]
        under = under[under > 0]
        if not under.size:
            continue
        ids, counts = np.unique(under, return_counts=True)
        best, overlap = ids[counts.argmax()], counts.max()
        if overlap / (region.area + areas16[best] - overlap) <= 0.5:
            continue
        if np.abs(np.array(region.bbox) - boxes16[best]).max() <= tolerance:
            close += 1
    return len(props32), len(boxes16), close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", required=True)
    parser.add_argument("--float16", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--distance-dir", help="<stem>_dist.tif maps (5-channel models)")
    parser.add_argument("--min-confidence", type=float, required=True)
    parser.add_argument("--mask-threshold", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from nucseg.io import read_labels
    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.predict import PredictOptions, predict_from_paths

    out = Path(args.out)
    opts = PredictOptions(mask_threshold=args.mask_threshold, resume=True, progress=False)
    overrides = {"DETECTION_MIN_CONFIDENCE": args.min_confidence}
    sources = ChannelSources(distance_dir=Path(args.distance_dir) if args.distance_dir else None)
    for model, folder in ((args.float32, out / "f32"), (args.float16, out / "f16")):
        predict_from_paths([args.images], [model], None, folder, opts, sources, overrides,
                           log=lambda m: None)
    totals = [0, 0, 0]
    print(f"{'tile':28s} {'float32':>8s} {'float16':>8s} {'boxes within 1 px':>18s}")
    for path in sorted((out / "f32").glob("*_labels.tif")):
        other = out / "f16" / path.name
        n32, n16, close = box_agreement(read_labels(path), read_labels(other))
        totals = [t + v for t, v in zip(totals, (n32, n16, close))]
        print(f"{path.name[:-len('_labels.tif')]:28s} {n32:8d} {n16:8d} {close:10d} of {n32}")
    n32, n16, close = totals
    apart = abs(n16 - n32) / max(n32, 1)
    print(f"all: counts {n32} vs {n16} ({apart:.2%} apart: "
          f"{'within' if apart <= 0.01 else 'NOT within'} 1 %), {close} of {n32} boxes within "
          f"1 px ({close / max(n32, 1):.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
