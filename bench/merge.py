"""Benchmark: merging 20 members x 700 nuclei on a 1000x1000 image (target: vote < 0.5 s).

Synthetic members: 700 elliptic nuclei; each member sees a nucleus with probability 0.9, with its
centre and radii jittered, and adds 5 % false detections. Soft masks are logistic in the
distance to the ellipse border, as a mask head's sigmoid output looks.

    python bench/merge.py [--members 20] [--nuclei 700] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from nucseg.prediction.members import Member
from nucseg.prediction.merge import merge_mask_nms, merge_vote


def soft_ellipse(cy, cx, ry, rx, shape, margin=3):
    y1, x1 = max(int(cy - ry) - margin, 0), max(int(cx - rx) - margin, 0)
    y2, x2 = min(int(cy + ry) + margin + 1, shape[0]), min(int(cx + rx) + margin + 1, shape[1])
    yy, xx = np.mgrid[y1:y2, x1:x2]
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    mask = 1.0 / (1.0 + np.exp((r - 1.0) * min(ry, rx) * 1.5))
    return (y1, x1, y2, x2), mask.astype(np.float32)


def synthetic_members(n_members=20, n_nuclei=700, shape=(1000, 1000), seed=0):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_nuclei)))
    step = shape[0] / side
    cells = rng.permutation(side * side)[:n_nuclei]
    centres = np.stack([(cells // side + 0.5) * step, (cells % side + 0.5) * step], 1)
    centres += rng.uniform(-step / 6, step / 6, centres.shape)
    radii = rng.uniform(5, 12, (n_nuclei, 2))
    members = []
    for k in range(n_members):
        rois, masks, scores = [], [], []
        seen = rng.random(n_nuclei) < 0.9
        extra = rng.uniform(20, shape[0] - 20, (int(0.05 * n_nuclei), 2))
        objects = [(c + rng.normal(0, 1.0, 2), r * rng.uniform(0.9, 1.1, 2))
                   for c, r, s in zip(centres, radii, seen) if s]
        objects += [(c, rng.uniform(4, 8, 2)) for c in extra]
        for (cy, cx), (ry, rx) in objects:
            box, mask = soft_ellipse(cy, cx, ry, rx, shape)
            rois.append(box)
            masks.append(mask)
            scores.append(rng.uniform(0.7, 1.0))
        order = np.argsort(scores)[::-1]
        members.append(Member.from_detection(
            {"rois": np.array(rois)[order], "scores": np.array(scores)[order],
             "class_ids": np.ones(len(rois)), "masks": [masks[i] for i in order]},
            shape, model=f"m{k}"))
    return members


def timed(fn, members, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        merged = fn(members)
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    fn(members)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak, merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--nuclei", type=int, default=700)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    members = synthetic_members(args.members, args.nuclei)
    total = sum(len(m) for m in members)
    print(f"{args.members} members, {args.nuclei} nuclei, {total} detections in all, "
          f"1000x1000 px")
    for name, fn in [("vote (box IoU)", merge_vote),
                     ("vote (mask IoU)", lambda m: merge_vote(m, iou_type="mask")),
                     ("mask-nms", merge_mask_nms)]:
        seconds, peak, merged = timed(fn, members, args.repeat)
        print(f"{name:16s} {seconds:7.3f} s (best of {args.repeat})  peak "
              f"{peak / 2**20:6.1f} MiB  nuclei {len(merged)}  "
              f"mean agreement {merged.agreement.mean():.3f}")


if __name__ == "__main__":
    main()
