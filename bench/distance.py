"""Benchmark: per-instance distance maps of 1000x1000 MoNuSeg label maps.

MoNuSeg has no tile with ~700 nuclei: the bench times the nearest below (557 nuclei) and the
densest tile (1862 nuclei).

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

LABEL_DIR = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg2018" /
             "labels")
STEMS = ("TCGA-49-4488-01Z-00-DX1", "TCGA-HE-7130-01Z-00-DX1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    for stem in STEMS:
        labels = np.asarray(Image.open(LABEL_DIR / f"{stem}.png")).astype(np.int32)
        n = len(np.unique(labels)) - 1
        label_distance_map(labels)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            label_distance_map(labels)
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        label_distance_map(labels)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{stem} {labels.shape}, {n:4d} nuclei: best {min(times) * 1e3:6.1f} ms  "
              f"median {np.median(times) * 1e3:6.1f} ms  peak memory {peak / 2**20:.1f} MiB "
              f"({args.repeats} runs)")

if __name__ == "__main__":
    main()
