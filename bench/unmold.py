"""Unmolding speed: detections -> boxes, soft masks and label map on a 1000 x 1000 tile.

Prints the median of 5 runs per detection count, plus skimage's per-nucleus resize for comparison
(what Matterport does) on the same masks. Usage: python bench/unmold.py
"""
import statistics
import time

import numpy as np
from skimage.transform import resize

from nucseg.mrcnn.molding import unmold_detections


def synthetic(n, rng):
    centres = rng.uniform(0.05, 0.95, (n, 2))
    half = rng.uniform(4, 20, (n, 1)) / 1023
    detections = np.zeros((n, 6), np.float32)
    detections[:, :2] = centres - half
    detections[:, 2:4] = centres + half
    detections[:, 4] = 1
    detections[:, 5] = np.sort(rng.uniform(0.5, 1, n))[::-1]
    return detections, rng.uniform(0, 1, (n, 28, 28, 2)).astype(np.float32)


def main():
    rng = np.random.default_rng(0)
    for n in (100, 700, 2000):
        detections, masks = synthetic(n, rng)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = unmold_detections(detections, masks, (1000, 1000, 3), (1024, 1024, 3),
                                       (12, 12, 1012, 1012))
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for (y1, x1, y2, x2), m in zip(result["rois"], masks[:, :, :, 1]):
            resize(m, (y2 - y1, x2 - x1), order=1, mode="constant", anti_aliasing=False)
        skimage_time = time.perf_counter() - start
        print(f"{n:5d} detections: unmold {statistics.median(times) * 1000:7.1f} ms (median of 5)"
              f"; skimage resizes alone {skimage_time * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
