"""Training targets of the multi-task U-Net, made from an instance label map.

Three binary maps (docs/multitask-unet.md, "Targets"), after the DSB2018 solution the method
builds on (samuelschen/DSB2018: a 2-px contour, adjacent-only boundaries where the contour
bands of two nuclei meet, interiors shrunk by two erosions):

* foreground: every nucleus pixel (label > 0);
* adjacent boundary: the pixels of a nucleus within `boundary_distance` px (Euclidean, default
  2) of a pixel of ANOTHER nucleus; edges towards background are not boundaries, so the map
  says only where touching nuclei must be split;
* interior: each nucleus eroded by a disc of `interior_radius` px (default 2), i.e. the pixels
  whose distance to the nearest pixel outside their own nucleus exceeds the radius. A nucleus
  that would vanish (narrower than 2 * radius + 1 px: small nuclei, thin strips) keeps the
  pixels of its largest distance, its centre or centre line, so every nucleus has a marker.

Distances follow nucseg.distance.label_distance_map: another nucleus counts as outside, the
image border does not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

TARGET_NAMES = ("foreground", "boundary", "interior")


@dataclass(frozen=True)
class TargetOptions:
    boundary_distance: float = 2.0   # px: nucleus pixels this close to another nucleus
    interior_radius: float = 2.0     # px: erosion radius of each nucleus

    def __post_init__(self):
        if not 0 < self.boundary_distance <= 20:
            raise ValueError(f"boundary distance must be in (0, 20] px, got "
                             f"{self.boundary_distance}")
        if not 0 <= self.interior_radius <= 50:
            raise ValueError(f"interior radius must be in [0, 50] px, got "
                             f"{self.interior_radius}")

    def to_dict(self) -> dict:
        return asdict(self)


def disc(radius: float) -> np.ndarray:
    """Boolean footprint of the pixels within `radius` (Euclidean) of the centre pixel."""
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy * yy + xx * xx <= radius * radius


def _check(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map must hold integer ids, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label map has negative ids")
    return labels.astype(np.int64, copy=False)


def adjacent_boundary(labels: np.ndarray, distance: float = 2.0) -> np.ndarray:
    """Nucleus pixels with a pixel of another nucleus within `distance` px (bool HxW).

    In the disc around p, another id k != L(p) exists iff the disc's maximum exceeds L(p)
    (some k > L(p)) or its minimum over nucleus pixels is below L(p) (some k < L(p)).
    """
    labels = _check(labels)
    footprint = disc(distance)
    big = np.iinfo(np.int64).max
    high = ndimage.grey_dilation(labels, footprint=footprint, mode="constant", cval=0)
    low = ndimage.grey_erosion(np.where(labels > 0, labels, big), footprint=footprint,
                               mode="constant", cval=big)
    return (labels > 0) & ((high != labels) | (low != labels))


def interior(labels: np.ndarray, radius: float = 2.0) -> np.ndarray:
    """Each nucleus eroded by `radius` px; a nucleus that would vanish keeps its centre."""
    from nucseg.distance import label_distance_map

    labels = _check(labels)
    out = np.zeros(labels.shape, bool)
    if not labels.size or labels.max() == 0:
        return out
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    dist = label_distance_map(compact)
    peak = np.asarray(ndimage.maximum(dist, compact, np.arange(len(ids))), np.float32)
    peak_here = peak[compact]
    out = dist > radius
    out |= (compact > 0) & (peak_here <= radius) & (dist >= peak_here)
    return out


def make_targets(labels: np.ndarray, options: TargetOptions | None = None) -> np.ndarray:
    """HxWx3 uint8 array of 0/1: foreground, adjacent boundary, interior (TARGET_NAMES)."""
    options = options or TargetOptions()
    labels = _check(labels)
    return np.stack([labels > 0, adjacent_boundary(labels, options.boundary_distance),
                     interior(labels, options.interior_radius)], axis=-1).astype(np.uint8)


def target_names(labels_path) -> dict[str, str]:
    """Output file names per target (plus the colour preview), `_labels` dropped from the stem."""
    from nucseg.io import label_stem

    stem = label_stem(labels_path)
    names = {name: f"{stem}_{name}.png" for name in TARGET_NAMES}
    names["preview"] = f"{stem}_targets.png"
    return names


def preview(targets: np.ndarray) -> np.ndarray:
    """RGB look at the targets: foreground grey, interior green, adjacent boundary red."""
    fg, bd, inner = (targets[..., k].astype(bool) for k in range(3))
    rgb = np.zeros(targets.shape[:2] + (3,), np.uint8)
    rgb[fg] = (110, 110, 110)
    rgb[inner] = (0, 200, 0)
    rgb[bd] = (230, 30, 30)
    return rgb


def targets_file(labels_path, outdir, options: TargetOptions | None = None) -> list[Path]:
    """Read a label map (validated by nucseg.io.read_labels) and write its three targets as
    0/255 PNGs and a colour preview; returns the paths. Nothing is written for a bad map."""
    from nucseg.io import read_labels, write_rgb

    targets = make_targets(read_labels(labels_path), options)
    names = target_names(labels_path)
    written = [write_rgb(Path(outdir) / names[name], targets[..., k] * np.uint8(255))
               for k, name in enumerate(TARGET_NAMES)]
    written.append(write_rgb(Path(outdir) / names["preview"], preview(targets)))
    return written
