"""A classical nuclei segmentation without training: hematoxylin, Otsu, distance watershed.

It gives the demo and new users a prediction to score and a floor any learned model must beat:
  1. hematoxylin optical density (nucseg.stain), lightly smoothed;
  2. Otsu threshold -> nuclear foreground; holes filled, specks removed;
  3. Euclidean distance transform of the foreground; its local maxima (at least
     `min_distance` px apart) seed a watershed on the inverted distance, which splits
     touching nuclei along the necks between them;
  4. segments smaller than `min_size` px are dropped; ids renumbered 1..N.
Deterministic: no random state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage


def baseline_labels(rgb: np.ndarray, *, sigma: float = 1.0, min_size: int = 30,
                    min_distance: int = 5, stain_matrix: np.ndarray | None = None
                    ) -> np.ndarray:
    """Instance label map (int32 HxW, 0 = background) of an HxWx3 uint8 H&E image."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import relabel_sequential, watershed

    from nucseg.stain import hematoxylin

    if sigma < 0 or min_size < 0 or min_distance < 1:
        raise ValueError("sigma and min_size must be >= 0 and min_distance >= 1")
    h = hematoxylin(rgb, stain_matrix)
    if sigma > 0:
        h = ndimage.gaussian_filter(h, sigma)
    if not np.ptp(h) > 0:
        return np.zeros(h.shape, np.int32)
    foreground = ndimage.binary_fill_holes(h > threshold_otsu(h))
    components, _ = ndimage.label(foreground)
    components[np.bincount(components.ravel())[components] < min_size] = 0
    foreground = components > 0
    if not foreground.any():
        return np.zeros(h.shape, np.int32)
    smooth = ndimage.gaussian_filter(ndimage.distance_transform_edt(foreground), 1.0)
    peaks = peak_local_max(smooth, min_distance=min_distance, labels=components,
                           exclude_border=False)
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-smooth, markers, mask=foreground)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_size] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def baseline_file(image_path, outdir, **options) -> Path:
    """Segment one RGB tile; writes `<outdir>/<stem>_labels.tif` (uint16/uint32)."""
    from nucseg.io import output_path, read_rgb, write_labels

    labels = baseline_labels(read_rgb(image_path), **options)
    return write_labels(output_path(outdir, image_path, "_labels.tif"), labels)
