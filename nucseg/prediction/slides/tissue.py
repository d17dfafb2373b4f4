"""Where the tissue is: blocks without any are not run.

Detection works on the overview averaged down to about TISSUE_UM_PER_PX (8 um/px, where
nuclei and stroma blend): stained tissue is coloured and glass is not, so saturation (HSV,
0-255) separates them; its Otsu threshold (at least MIN_SATURATION, so an empty slide's noise
is not split in two) gives the mask, and specks and holes smaller than MIN_TISSUE_UM2 (dust,
small gaps between cells) are removed with scikit-image. A mask given
with --tissue-mask (nonzero = tissue) must cover the whole slide at one downsample, i.e. have
the slide's aspect ratio; its resolution is free.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nucseg.io import InputError

MIN_SATURATION = 20
TISSUE_UM_PER_PX = 8.0
MIN_TISSUE_UM2 = 50.0 * 50.0
MASK_SUFFIXES = ("_tissue.png", "_tissue.tif", "_tissue.tiff", ".png", ".tif", ".tiff")


def detect_tissue(overview: np.ndarray, um_per_px: float) -> tuple[np.ndarray, int]:
    """(boolean tissue mask, overview px per mask px) of an RGB overview whose pixels are
    `um_per_px` wide; the overview is first averaged down to about TISSUE_UM_PER_PX, where
    nuclei and stroma blend into one tissue colour."""
    import cv2
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    factor = max(1, int(TISSUE_UM_PER_PX / um_per_px))
    if factor > 1:
        h, w = -(-overview.shape[0] // factor), -(-overview.shape[1] // factor)
        padded = np.pad(overview, ((0, h * factor - overview.shape[0]),
                                   (0, w * factor - overview.shape[1]), (0, 0)),
                        constant_values=255)
        overview = cv2.resize(padded, (w, h), interpolation=cv2.INTER_AREA)
    saturation = cv2.cvtColor(overview, cv2.COLOR_RGB2HSV)[..., 1]
    threshold = MIN_SATURATION
    if saturation.max() > saturation.min():
        threshold = max(float(threshold_otsu(saturation)), MIN_SATURATION)
    mask = saturation > threshold
    small = max(1, int(MIN_TISSUE_UM2 / (um_per_px * factor) ** 2))
    mask = remove_small_objects(mask, max_size=small)
    return remove_small_holes(mask, max_size=small), factor


def find_mask(given, slide: Path) -> Path:
    """A mask file as given, or `<stem>_tissue.png` (etc.) when `given` is a directory."""
    given = Path(given)
    if given.is_dir():
        for suffix in MASK_SUFFIXES:
            candidate = given / f"{slide.stem}{suffix}"
            if candidate.is_file():
                return candidate
        raise InputError(slide, f"no tissue mask for it in {given} (looked for "
                                f"{slide.stem}{MASK_SUFFIXES[0]} and similar)")
    return given


def read_mask(path, slide: Path, width: int, height: int) -> np.ndarray:
    """A tissue mask file as booleans, checked against the slide's level-0 size."""
    from nucseg.io import _read_plane

    path = Path(path)
    try:
        mask = _read_plane(path, "a tissue mask must be a single-channel image")
    except InputError as exc:
        raise InputError(slide, f"tissue mask {path}: {exc.problem}") from None
    h, w = mask.shape
    same_aspect = abs(height * w / width - h) <= 1 and abs(width * h / height - w) <= 1
    if h > height or w > width or not same_aspect:      # 1 px of rounding either way
        raise InputError(slide, f"tissue mask {path} is {w}x{h} px (width x height) but the "
                                f"slide is {width}x{height} px at level 0: a mask must cover "
                                "the whole slide at one downsample (the same aspect ratio)")
    return mask > 0


def region_has_tissue(mask: np.ndarray, level0_per_mask_px: tuple, box) -> bool:
    """Does any mask pixel fall in `box` = (y1, x1, y2, x2) level-0 pixels?"""
    fy, fx = level0_per_mask_px
    y1, x1, y2, x2 = box
    r1, c1 = int(y1 // fy), int(x1 // fx)
    r2, c2 = int(-(-y2 // fy)), int(-(-x2 // fx))
    return bool(mask[r1:max(r2, r1 + 1), c1:max(c2, c1 + 1)].any())
