"""Files a pathologist opens: QuPath GeoJSON, a per-nucleus CSV table and an overlay PNG.

Coordinates are full-resolution image pixels, origin top-left, x to the right, y down. Polygon
vertices are the centres of a nucleus' boundary pixels, so pixel (row r, column c) is the point
(x = c + 0.5, y = r + 0.5) as in QuPath's continuous image frame; subtract 0.5 and round to get
pixel indices back.
"""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import cv2
import numpy as np

from nucseg.io import atomic_path

DEFAULT_CLASS = "Nucleus"
DEFAULT_COLOR = (0, 200, 0)
CSV_COLUMNS = ("id", "centroid_x", "centroid_y", "area", "perimeter", "eccentricity",
               "solidity", "mean_hematoxylin", "score", "agreement")


def label_rings(labels: np.ndarray, label: int, roi) -> list[list[list[float]]]:
    """Closed outer rings (x, y) of one label, one per connected part (holes are not kept)."""
    y1, x1, y2, x2 = (int(v) for v in roi)
    crop = np.pad(labels[y1:y2, x1:x2] == label, 1).astype(np.uint8)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        points = contour[:, 0, :].astype(np.float64) + (x1 - 1 + 0.5, y1 - 1 + 0.5)
        if len(points) < 3:                       # a line or a pixel: its pixel squares' box
            (lx, ly), (hx, hy) = points.min(0) - 0.5, points.max(0) + 0.5
            points = np.array([[lx, ly], [hx, ly], [hx, hy], [lx, hy]])
        ring = points.tolist()
        ring.append(ring[0])
        rings.append(ring)
    return rings


def _feature(label: int, rings, score: float, agreement: float, class_name: str,
             color) -> dict:
    if len(rings) == 1:
        geometry = {"type": "Polygon", "coordinates": [rings[0]]}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "name": f"nucleus {label}",
            "classification": {"name": class_name, "color": [int(c) for c in color]},
            "isLocked": False,
            "measurements": {"label": int(label), "score": round(float(score), 6),
                             "agreement": round(float(agreement), 6)},
        },
    }


def write_geojson(path, merged, class_name: str = DEFAULT_CLASS,
                  color=DEFAULT_COLOR) -> Path:
    """Write a QuPath-importable FeatureCollection, one feature at a time (streamed).

    A name ending in `.gz` is gzip-compressed. The file appears only when complete.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with atomic_path(path) as tmp:
        with opener(tmp, "wt", encoding="utf-8") as fh:
            fh.write('{"type": "FeatureCollection", "features": [')
            first = True
            for k, roi in enumerate(merged.rois, start=1):
                rings = label_rings(merged.labels, k, roi)
                if not rings:
                    continue
                fh.write("\n" if first else ",\n")
                json.dump(_feature(k, rings, merged.scores[k - 1], merged.agreement[k - 1],
                                   class_name, color), fh, separators=(",", ":"),
                          allow_nan=False)     # NaN is not JSON: fail rather than write it
                first = False
            fh.write("\n]}\n")
    return path


def read_geojson(path) -> dict:
    """Read back a (possibly gzipped) GeoJSON file written by `write_geojson`."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def nucleus_table(merged, hematoxylin: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-nucleus measurements (columns of CSV_COLUMNS), rows in label order."""
    from skimage.measure import regionprops_table

    labels = merged.labels.astype(np.int32, copy=False)
    properties = ["label", "centroid", "area", "perimeter", "eccentricity", "solidity"]
    if hematoxylin is not None:
        properties.append("intensity_mean")
    table = regionprops_table(labels, intensity_image=hematoxylin, properties=properties)
    ids = table["label"].astype(np.int64)
    n = len(ids)
    mean_h = table["intensity_mean"] if hematoxylin is not None else np.full(n, np.nan)
    return {
        "id": ids,
        "centroid_x": table["centroid-1"], "centroid_y": table["centroid-0"],
        "area": table["area"].astype(np.int64), "perimeter": table["perimeter"],
        "eccentricity": table["eccentricity"], "solidity": table["solidity"],
        "mean_hematoxylin": mean_h,
        "score": np.asarray(merged.scores)[ids - 1] if n else np.zeros(0),
        "agreement": np.asarray(merged.agreement)[ids - 1] if n else np.zeros(0),
    }


def write_nuclei_csv(path, merged, hematoxylin: np.ndarray | None = None) -> Path:
    """One row per nucleus: id, centroid (x, y pixels), area and perimeter (pixels),
    eccentricity, solidity, mean hematoxylin optical density, score, agreement."""
    table = nucleus_table(merged, hematoxylin)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for row in zip(*(table[c] for c in CSV_COLUMNS)):
                writer.writerow([_cell(v) for v in row])
    return Path(path)


def _cell(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "" if np.isnan(value) else f"{float(value):.6g}"


def overlay(rgb: np.ndarray, labels: np.ndarray, color=(255, 255, 0)) -> np.ndarray:
    """The image with every nucleus' outline (inner boundary pixels) painted in `color`."""
    from skimage.segmentation import find_boundaries

    out = np.array(rgb[..., :3], dtype=np.uint8, copy=True)
    out[find_boundaries(labels, mode="inner")] = color
    return out


def write_overlay(path, rgb: np.ndarray, labels: np.ndarray, color=(255, 255, 0)) -> Path:
    from nucseg.io import write_rgb

    return write_rgb(path, overlay(rgb, labels, color))
