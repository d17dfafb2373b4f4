"""Recreate the MoNuSeg 2018 crops in this folder from ../shared (run from the repository root).

    python3 tests/data/monuseg2018/make_crops.py [../shared]

Each crop is a plain slice of a published 1000x1000 tile or label map: pixels and instance ids
are unchanged. Images keep the published format (RGB uint8 TIFF, LZW with horizontal
predictor); label maps are 16-bit PNGs like the published ones. ATTRIBUTION.md lists every file
with its region.
"""
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent

# (tile id, first row, first column, size): 0-based, rows/columns first..first+size-1
IMAGES = [("TCGA-B0-5698-01Z-00-DX1", 244, 244, 512),    # tests/test_stain.py
          ("TCGA-18-5592-01Z-00-DX1", 620, 248, 256)]    # tests/test_train.py
LABELS = [("TCGA-B0-5698-01Z-00-DX1", 244, 244, 512),    # tests/test_import_monuseg.py
          ("TCGA-B0-5710-01Z-00-DX1", 244, 244, 512),
          ("TCGA-CH-5767-01Z-00-DX1", 244, 244, 512),
          ("TCGA-HE-7130-01Z-00-DX1", 300, 300, 512),    # tests/test_distance.py
          ("TCGA-18-5592-01Z-00-DX1", 620, 248, 256)]    # tests/test_train.py
# a ground-truth / prediction pair of ../shared/fixtures/metrics/pairs.npz (tests/test_metrics.py)
PAIRS = [("monuseg_TCGA-G9-6336", "TCGA-G9-6336-01Z-00-DX1", 244, 244, 512)]


def crop_name(stem, row, col, size):
    return f"{stem}_r{row}-{row + size - 1}_c{col}-{col + size - 1}"


def main(shared: Path):
    data = shared / "data" / "monuseg2018"
    for stem, row, col, size in IMAGES:
        with Image.open(data / "images" / f"{stem}.tif") as im:   # Pillow reads LZW as is
            tile = np.asarray(im.convert("RGB"))
        tifffile.imwrite(HERE / "images" / f"{crop_name(stem, row, col, size)}.tif",
                         tile[row:row + size, col:col + size], photometric="rgb",
                         compression="lzw", predictor=True)
    for stem, row, col, size in LABELS:
        labels = np.asarray(Image.open(data / "labels" / f"{stem}.png"))
        assert labels.dtype == np.uint16, labels.dtype
        Image.fromarray(np.ascontiguousarray(labels[row:row + size, col:col + size])).save(
            HERE / "labels" / f"{crop_name(stem, row, col, size)}.png")
    with np.load(shared / "fixtures" / "metrics" / "pairs.npz", allow_pickle=False) as pairs:
        for case, stem, row, col, size in PAIRS:
            np.savez_compressed(
                HERE / "pairs" / f"{crop_name(stem, row, col, size)}.npz",
                **{part: pairs[f"{case}_{part}"][row:row + size, col:col + size]
                   for part in ("gt", "pred")})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3].parent
         / "shared")
