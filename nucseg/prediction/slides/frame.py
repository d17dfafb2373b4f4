"""The model-resolution pixel grid over a slide, and reading it piece by piece.

A model sees nuclei at the pixel size it was trained at (config MODEL_MPP), so a slide is read
at its best level and resampled to that size: the *frame*. The best level is the coarsest one
still at least as fine as the model (read, then shrink, never enlarge a coarse level); a slide
coarser than the model (a 20x scan for a 40x model) is read at level 0 and enlarged. Within
RESAMPLE_TOLERANCE of the model's pixel size a level is used as it is: scanners report 0.2465 or
0.2527 um/px for "40x", and nuclei differ between labs by more than that.

Coordinates map linearly in the continuous frame (pixel (r, c) covers [c, c + 1) x [r, r + 1)):
level-0 x = frame x * `level0_per_px`. Every region is resampled from that one global mapping,
so two overlapping blocks get the same pixels where they overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLE_TOLERANCE = 0.10
OVERVIEW_MAX_SIDE = 2048          # tissue detection and thumbnail
_CHUNK = 4096                     # level pixels read at once for the overview


@dataclass(frozen=True)
class Frame:
    """Frame pixels = level `level` pixels x `scale` (1.0: the level as it is)."""

    level: int
    downsample: float             # level-0 px per level px
    scale: float                  # frame px per level px
    width: int
    height: int
    level_mpp: float              # um/px of the level read
    mpp: float                    # um/px of the frame (the model's)

    @property
    def level0_per_px(self) -> float:
        return self.downsample / self.scale

    def as_dict(self) -> dict:
        return {"level": self.level, "level_downsample": round(self.downsample, 6),
                "level_mpp": round(self.level_mpp, 6), "resample_factor": round(self.scale, 6),
                "mpp": round(self.mpp, 6), "width": self.width, "height": self.height,
                "level0_px_per_px": round(self.level0_per_px, 6)}


def plan_frame(info, model_mpp: float) -> Frame:
    """The level to read and the resampling that gives the model's pixel size."""
    if not (model_mpp and math.isfinite(model_mpp) and model_mpp > 0):
        raise ValueError(f"model pixel size (MODEL_MPP) must be a positive number, got "
                         f"{model_mpp}")
    mpp0 = math.sqrt(info.mpp[0] * info.mpp[1])
    fine = [k for k, d in enumerate(info.downsamples)
            if mpp0 * d <= model_mpp * (1 + RESAMPLE_TOLERANCE)]
    level = max(fine, key=lambda k: info.downsamples[k]) if fine else 0
    downsample = float(info.downsamples[level])
    scale = mpp0 * downsample / model_mpp
    if abs(scale - 1) <= RESAMPLE_TOLERANCE:
        scale = 1.0
    width, height = info.dimensions[level]
    return Frame(level, downsample, scale, int(math.floor(width * scale)),
                 int(math.floor(height * scale)), mpp0 * downsample,
                 mpp0 * downsample / scale)


def read_frame_region(reader, frame: Frame, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
    """Frame pixels [y1:y2, x1:x2] as RGB uint8 (outside the slide: white)."""
    d = frame.downsample
    if frame.scale == 1.0:
        return reader.read(frame.level, round(x1 * d), round(y1 * d), x2 - x1, y2 - y1)
    import cv2

    s = frame.scale
    sigma = max(0.0, (1 / s - 1) / 2)              # anti-aliasing when shrinking (skimage's)
    pad = 2 + math.ceil(3 * sigma)
    ax = math.floor((x1 + 0.5) / s - 0.5) - pad
    ay = math.floor((y1 + 0.5) / s - 0.5) - pad
    bx = math.ceil((x2 - 0.5) / s - 0.5) + pad + 1
    by = math.ceil((y2 - 0.5) / s - 0.5) + pad + 1
    src = reader.read(frame.level, round(ax * d), round(ay * d), bx - ax, by - ay)
    if sigma > 0:
        src = cv2.GaussianBlur(src, (0, 0), sigma)
    matrix = np.array([[1 / s, 0, (x1 + 0.5) / s - 0.5 - ax],
                       [0, 1 / s, (y1 + 0.5) / s - 0.5 - ay]], np.float64)
    return cv2.warpAffine(src, matrix, (x2 - x1, y2 - y1),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def read_overview(reader, max_side: int = OVERVIEW_MAX_SIDE) -> tuple[np.ndarray, float]:
    """(RGB image of at most ~`max_side` px a side, level-0 px per overview px).

    Read from the coarsest level that is not smaller than the overview, in chunks, each
    shrunk by an integer factor with area averaging, so memory stays bounded on slides
    without a pyramid.
    """
    import cv2

    info = reader.info
    target = max(info.width, info.height) / max_side
    level = max((k for k, d in enumerate(info.downsamples) if d <= max(target, 1.0)),
                key=lambda k: info.downsamples[k])
    factor = max(1, int(target / info.downsamples[level]))
    width, height = info.dimensions[level]
    out_w, out_h = -(-width // factor), -(-height // factor)
    out = np.empty((out_h, out_w, 3), np.uint8)
    step = max(1, _CHUNK // factor) * factor
    d = info.downsamples[level]
    for y in range(0, height, step):
        for x in range(0, width, step):
            h, w = min(step, height - y), min(step, width - x)
            ch, cw = -(-h // factor), -(-w // factor)
            chunk = reader.read(level, round(x * d), round(y * d), cw * factor, ch * factor)
            if factor > 1:
                chunk = cv2.resize(chunk, (cw, ch), interpolation=cv2.INTER_AREA)
            out[y // factor:y // factor + ch, x // factor:x // factor + cw] = chunk
    return out, float(d * factor)
