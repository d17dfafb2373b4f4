"""Benchmark: nucseg hematoxylin() vs scikit-image rgb2hed()[..., 0] on a 1000x1000 MoNuSeg tile.

Prints best-of-N wall time, peak extra memory (tracemalloc: NumPy reports its buffers) and the
speed ratio, all measured in this run, plus the largest absolute difference.

    python bench/hstain.py [--repeats 5]
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


def measure(fn, image, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(image)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn(image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return min(times), float(np.median(times)), peak, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    image = tifffile.imread(TILE)
    print(f"tile {TILE.name} {image.shape} {image.dtype}, best of {args.repeats}")
    ours = measure(hematoxylin, image, args.repeats)
    ref = measure(lambda im: rgb2hed(im)[..., 0], image, args.repeats)
    for name, (best, median, peak, _) in (("nucseg hematoxylin", ours),
                                          ("skimage rgb2hed[...,0]", ref)):
        print(f"{name:24s} best {best * 1e3:7.1f} ms  median {median * 1e3:7.1f} ms  "
              f"peak memory {peak / 2**20:6.1f} MiB")
    print(f"speed ratio (skimage / nucseg): {ref[0] / ours[0]:.1f}x on best times, "
          f"{ref[1] / ours[1]:.1f}x on medians")
    print(f"max |difference|: {np.abs(ours[3] - ref[3]).max():.2e}")


if __name__ == "__main__":
    main()
