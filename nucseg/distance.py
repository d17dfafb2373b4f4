"""Per-instance distance maps from label maps: the ground-truth distance channel of Mask R-CNN+.

Each nucleus pixel holds its Euclidean distance (in pixels) to the nearest pixel that is not part
of the same nucleus, so touching nuclei get separate peaks; background is 0. The image border is
not treated as an edge: a nucleus cut by the border keeps growing towards it, exactly as a
Euclidean distance transform of that nucleus alone on the whole image would give.

Computed object by object on each bounding box plus a 1-px margin (scipy.ndimage.find_objects):
the margin ring holds no pixel of the object, and the nearest non-object pixel of any pixel in
the box always lies within box + margin, so the crop gives the whole-image answer exactly.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_distance_map(labels: np.ndarray) -> np.ndarray:
    """float32 HxW: distance of each labelled pixel to the nearest pixel outside its nucleus."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map must hold integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label map has negative ids")
    out = np.zeros(labels.shape, dtype=np.float32)
    if not labels.size or labels.max() == 0:
        return out
    if labels.max() > labels.size:
        # find_objects allocates one slot per id up to the maximum: compact sparse ids first
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(out.shape)
    height, width = labels.shape
    for label_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ys, xs = box
        y0, y1 = max(ys.start - 1, 0), min(ys.stop + 1, height)
        x0, x1 = max(xs.start - 1, 0), min(xs.stop + 1, width)
        inside = labels[y0:y1, x0:x1] == label_id
        dist = ndimage.distance_transform_edt(inside)
        region = out[y0:y1, x0:x1]
        region[inside] = dist[inside]
    return out


def scale_to_uint8_range(data: np.ndarray) -> np.ndarray:
    """Per-image max -> 255, cast to uint8 (truncating): how Mask R-CNN+ fed its extra channels.

    The original code did `(d / d.max() * 255).astype(np.uint8)` in float64; this does the same.
    A map whose maximum is 0 (no nuclei) gives zeros instead of a division by zero.
    """
    data = np.asarray(data, dtype=np.float64)
    peak = float(data.max()) if data.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.clip(data / peak * 255.0, 0, 255).astype(np.uint8)


def distance_model_channel(dist: np.ndarray) -> np.ndarray:
    """The uint8 distance channel of the 5-channel Mask R-CNN+ input (see scale_to_uint8_range)."""
    return scale_to_uint8_range(dist)


def distance_output_name(labels_path) -> str:
    """`<stem>_dist.tif`, with a trailing `_labels` dropped so the name pairs with the image."""
    from nucseg.io import label_stem

    return f"{label_stem(labels_path)}_dist.tif"


def distance_file(labels_path, outdir):
    """Read one label map, write its distance map into `outdir`; returns the output path."""
    from pathlib import Path

    from nucseg.io import read_labels, write_float_map

    dist = label_distance_map(read_labels(labels_path))
    return write_float_map(Path(outdir) / distance_output_name(labels_path), dist)
