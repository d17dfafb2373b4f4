"""A slide's files, written block by block so memory stays bounded.

`<stem>.geojson.gz` (QuPath detections; the feature layout of nucseg.prediction.export) and
`<stem>_nuclei.csv` are streamed block by block; `<stem>_thumbnail.png` (the overview with
the nuclei drawn on it) is painted along the way and saved at the end, and so is the pyramidal
label image `<stem>_labels.tif` (labels.py), from masks kept on disk meanwhile. Every file is written
under a temporary name and renamed only when the whole slide succeeded, so a failure leaves no
partial file under a final name. All coordinates are level-0 pixels: the continuous frame of
nucseg.prediction.export (pixel (r, c) is the square [c, c + 1) x [r, r + 1), its centre (c + 0.5,
r + 0.5)); centroids in the CSV are pixel indices (centre - 0.5), as in the tile CSV.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from nucseg.prediction.export import DEFAULT_CLASS, DEFAULT_COLOR, _feature
from nucseg.io import atomic_path

CSV_COLUMNS = ("id", "centroid_x", "centroid_y", "centroid_x_um", "centroid_y_um", "area",
               "area_um2", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "score", "agreement")
THUMBNAIL_COLOR = (255, 255, 0)


def _number(value: float) -> str:
    """Up to 3 decimals, no trailing zeros (level-0 coordinates reach 6 digits)."""
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


class SlideOutputs:
    """Context manager: open the streamed files, `add` nuclei per block, `finish` at the end."""

    def __init__(self, files: dict, mpp: tuple, overview: np.ndarray, overview_ds: float,
                 frame=None, slide_size: tuple | None = None):
        self.files = files
        self.frame, self.slide_size = frame, slide_size      # for the label image
        self.mpp = (float(mpp[0]), float(mpp[1]))
        self.thumbnail = np.array(overview, np.uint8, copy=True)
        self.overview_ds = float(overview_ds)
        self.count = 0
        self._stack = contextlib.ExitStack()
        self._geojson = self._csv = None

    def __enter__(self) -> "SlideOutputs":
        stack = self._stack.__enter__()
        try:
            if "geojson" in self.files:
                # no file name or time in the gzip header: one slide gives one file's bytes
                tmp = stack.enter_context(atomic_path(self.files["geojson"]))
                raw = stack.enter_context(open(tmp, "wb"))
                packed = stack.enter_context(gzip.GzipFile("", "wb", fileobj=raw, mtime=0))
                self._geojson = stack.enter_context(io.TextIOWrapper(packed, "utf-8"))
                self._geojson.write('{"type": "FeatureCollection", "features": [')
            if "csv" in self.files:
                tmp = stack.enter_context(atomic_path(self.files["csv"]))
                handle = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
                self._csv = csv.writer(handle)
                self._csv.writerow(CSV_COLUMNS)
            self._thumb_tmp = stack.enter_context(atomic_path(self.files["thumbnail"]))
            self._labels = None
            if "labels" in self.files:
                from nucseg.prediction.slides.labels import LabelStore

                self._labels_tmp = stack.enter_context(atomic_path(self.files["labels"]))
                fd, masks = tempfile.mkstemp(prefix=f".{self._labels_tmp.name}.",
                                             suffix=".part.bin", dir=self._labels_tmp.parent)
                os.close(fd)                  # a name outdir.claim clears if we are killed
                stack.callback(Path(masks).unlink, missing_ok=True)
                self._labels = LabelStore(Path(masks))
                stack.callback(self._labels.close)
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)

    def add(self, rings: list, score: float, agreement: float, centroid: tuple, area: float,
            bbox: tuple, frame_box=None, mask=None) -> int:
        """One nucleus: `rings` closed (x, y) rings, `centroid` (x, y) pixel indices, `area`
        in pixels, `bbox` (x1, y1, x2, y2), all level-0; its boolean `mask` over `frame_box`
        (y1, x1, y2, x2 frame px) for the label image. Returns its id (1, 2, ... in writing
        order)."""
        self.count += 1
        label = self.count
        if self._labels is not None:
            self._labels.add(frame_box, mask)
        if self._geojson is not None:
            self._geojson.write("\n" if label == 1 else ",\n")
            json.dump(_feature(label, rings, score, agreement, DEFAULT_CLASS, DEFAULT_COLOR),
                      self._geojson, separators=(",", ":"), allow_nan=False)
        if self._csv is not None:
            mx, my = self.mpp
            self._csv.writerow([label, _number(centroid[0]), _number(centroid[1]),
                                _number((centroid[0] + 0.5) * mx),
                                _number((centroid[1] + 0.5) * my), _number(area),
                                _number(area * mx * my), *map(_number, bbox),
                                f"{float(score):.6g}", f"{float(agreement):.6g}"])
        self._draw(rings)
        return label

    def _draw(self, rings: list) -> None:
        import cv2

        points = [np.round(np.asarray(r) / self.overview_ds * 4).astype(np.int32)
                  for r in rings]
        if self.overview_ds > 3:          # a nucleus is a few thumbnail pixels: fill it
            cv2.fillPoly(self.thumbnail, points, THUMBNAIL_COLOR, cv2.LINE_8, 2)
        else:
            cv2.polylines(self.thumbnail, points, True, THUMBNAIL_COLOR, 1, cv2.LINE_8, 2)

    def finish(self) -> list[str]:
        """Close the streamed files and save the thumbnail (renamed when the context exits);
        returns the output file names."""
        from PIL import Image

        if self._geojson is not None:
            self._geojson.write("\n]}\n")
        Image.fromarray(self.thumbnail).save(self._thumb_tmp, format="PNG")
        if self._labels is not None:
            self._labels.write_tiff(self._labels_tmp, *self.slide_size,
                                    self.frame.level0_per_px, self.mpp)
        return [Path(p).name for key, p in self.files.items() if key != "record"]
