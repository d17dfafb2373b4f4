"""Benchmark: nucseg hematoxylin() vs scikit-image rgb2hed()[..., 0] on a 1000x1000 MoNuSeg tile.

Prints best and median wall time over interleaved runs, peak extra memory (tracemalloc: NumPy
reports its buffers) and the speed ratio, all measured in this run, plus the largest absolute
difference.

    python bench/hstain.py [--repeats 9]
"""
import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile
from skimage.color import rgb2hed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nucseg.stain import hematoxylin  # noqa: E402

TILE = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg2018" /
        "images" / "TCGA-B0-5698-01Z-00-DX1.tif")


def peak_memory(fn, image):
    tracemalloc.start()
    fn(image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def timed(fn, image):
    start = time.perf_counter()
    fn(image)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    image = tifffile.imread(TILE)
    candidates = {"nucseg hematoxylin": hematoxylin,
                  "skimage rgb2hed[...,0]": lambda im: rgb2hed(im)[..., 0]}
    times = {name: [] for name in candidates}
    for name, fn in candidates.items():
        fn(image)  # warm-up
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for name, fn in candidates.items():
            times[name].append(timed(fn, image))
    print(f"tile {TILE.name} {image.shape} {image.dtype}, {args.repeats} interleaved runs")
    for name, fn in candidates.items():
        print(f"{name:24s} best {min(times[name]) * 1e3:7.1f} ms  median "
              f"{np.median(times[name]) * 1e3:7.1f} ms  peak memory "
              f"{peak_memory(fn, image) / 2**20:6.1f} MiB")
    ours, ref = times["nucseg hematoxylin"], times["skimage rgb2hed[...,0]"]
    print(f"speed ratio (skimage / nucseg): {min(ref) / min(ours):.1f}x on best times, "
          f"{np.median(ref) / np.median(ours):.1f}x on medians")
    difference = np.abs(hematoxylin(image) - rgb2hed(image)[..., 0]).max()
    print(f"max |difference|: {difference:.2e}")

if __name__ == "__main__":
    main()
