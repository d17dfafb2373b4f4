"""Benchmark: per-instance distance map of a 1000x1000 MoNuSeg label map with ~700+ nuclei.

    python bench/distance.py [--repeats 9]
"""
import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nucseg.distance import label_distance_map  # noqa: E402

LABELS = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg2018" /
          "labels" / "TCGA-HE-7130-01Z-00-DX1.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    labels = np.asarray(Image.open(LABELS)).astype(np.int32)
    n = len(np.unique(labels)) - 1
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        label_distance_map(labels)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    label_distance_map(labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"labels {LABELS.name} {labels.shape}, {n} nuclei, best of {args.repeats}")
    print(f"label_distance_map: best {min(times) * 1e3:.1f} ms  median "
          f"{np.median(times) * 1e3:.1f} ms  peak memory {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
