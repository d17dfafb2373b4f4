"""Tiles scanned at another magnification than the model's: their pixel size, and rescaling.

A model finds nuclei of the size it was trained on (MoNuSeg: 40x, about 0.25 um/px). A 20x
tile given as it is halves every nucleus: on held-out 20x tiles of another lab the model found
978 of 1,771 nuclei, and 1,829 once the tiles were upscaled 2x. So a tile whose pixel size is
known (`--mpp`, `--magnification`, or TIFF resolution tags) and differs from the model's by
more than 10% is resampled to the model's pixel size, predicted there, and its nuclei are
mapped back to the tile's own pixels: outputs are always in the input's pixel grid. Tiles
without a known pixel size are taken to be at the model's (what nucseg has always done).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: um/px = MAGNIFICATION_UM / magnification (40x -> 0.25, 20x -> 0.5: the usual scanner values)
MAGNIFICATION_UM = 10.0
#: relative pixel-size difference below which a tile is used as it is
TOLERANCE = 0.10


@dataclass(frozen=True)
class TileResolution:
    mpp: float | None            # the tile's um/px, None when unknown
    source: str                  # "--mpp", "--magnification", "TIFF resolution tags", ""
    model_mpp: float

    @property
    def factor(self) -> float:
        """Resize factor to the model's pixel size (2.0: a 20x tile for a 40x model)."""
        if self.mpp is None or abs(self.mpp / self.model_mpp - 1) <= TOLERANCE:
            return 1.0
        return self.mpp / self.model_mpp

    def as_dict(self) -> dict:
        return {"tile_mpp": self.mpp, "source": self.source or "unknown (taken as the "
                "model's)", "model_mpp": self.model_mpp, "scale": round(self.factor, 6)}


def tile_resolution(path, model_mpp: float, mpp: float | None = None,
                    magnification: float | None = None) -> TileResolution:
    """The pixel size of one tile: `mpp` wins, then `magnification`, then TIFF tags."""
    if mpp:
        return TileResolution(float(mpp), "--mpp", model_mpp)
    if magnification:
        return TileResolution(MAGNIFICATION_UM / float(magnification), "--magnification",
                              model_mpp)
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        from nucseg.io import InputError
        from nucseg.prediction.slides.reader import TiffReader

        try:
            info = TiffReader(path).info
        except InputError:
            info = None                          # read_rgb reports what is wrong with it
        if info is not None and info.mpp:
            return TileResolution(float(np.sqrt(info.mpp[0] * info.mpp[1])),
                                  info.mpp_source, model_mpp)
    return TileResolution(None, "", model_mpp)


def resize_rgb(rgb: np.ndarray, factor: float) -> np.ndarray:
    """RGB resampled by `factor` (area averaging down, bilinear up)."""
    import cv2

    height, width = rgb.shape[:2]
    size = (max(2, int(round(width * factor))), max(2, int(round(height * factor))))
    method = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=method))


def member_at(member, shape):
    """A member detected on a resampled image, mapped onto the original image of `shape`:
    boxes scaled (and kept at least 1 px), soft masks resized bilinearly to the new boxes.
    Merging then happens in the original grid, so `predict` and a later `merge` of the kept
    members give the same nuclei."""
    import cv2

    from nucseg.prediction.members import Member

    sy, sx = shape[0] / member.image_shape[0], shape[1] / member.image_shape[1]
    rois, masks = [], []
    for (y1, x1, y2, x2), mask in zip(member.rois, member.masks):
        top, left = int(np.floor(y1 * sy)), int(np.floor(x1 * sx))
        bottom = min(max(int(np.ceil(y2 * sy)), top + 1), shape[0])
        right = min(max(int(np.ceil(x2 * sx)), left + 1), shape[1])
        top, left = min(top, bottom - 1), min(left, right - 1)
        rois.append((top, left, bottom, right))
        masks.append(cv2.resize(np.asarray(mask, np.float32), (right - left, bottom - top),
                                interpolation=cv2.INTER_LINEAR))
    return Member(np.asarray(rois, np.int32).reshape(-1, 4), member.scores, member.class_ids,
                  masks, tuple(shape), member.model, member.transform, dict(member.extra),
                  member.image)
