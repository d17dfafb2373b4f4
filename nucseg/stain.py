"""Hematoxylin optical density by Ruifrok-Johnston colour deconvolution.

The result equals scikit-image's `rgb2hed(rgb)[..., 0]` (same H&E-DAB matrix, same clipping of
zero intensities at 1e-6 and the same log normalisation by log(1e-6)), but is computed from
three 256-entry float32 lookup tables: a uint8 pixel has only 256 possible log values per
channel, so the log image times the stain column collapses to one table look-up per channel
value and a 3-term sum per pixel (OpenCV's LUT and add, by row blocks), far cheaper than rgb2hed's
float64 log of every pixel and full 3x3 matrix product.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Stain OD vectors, one row per stain (H, E, DAB): the Ruifrok-Johnston values scikit-image uses.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]])

_LOG_FLOOR = 1e-6  # rgb2hed clips intensities to this before the log, then divides by its log


def _check_stain_matrix(stains: np.ndarray, source: str = "stain matrix") -> np.ndarray:
    stains = np.asarray(stains, dtype=np.float64)
    if stains.shape != (3, 3):
        raise ValueError(f"{source}: expected 3 rows of 3 values (R G B OD per stain), "
                         f"got shape {stains.shape}")
    if not np.all(np.isfinite(stains)):
        raise ValueError(f"{source}: values must be finite numbers")
    if np.any(stains < 0):
        raise ValueError(f"{source}: optical-density vectors cannot be negative")
    if np.any(np.linalg.norm(stains, axis=1) == 0):
        raise ValueError(f"{source}: a stain vector is all zeros")
    if np.linalg.cond(stains) > 1e6:
        raise ValueError(f"{source}: the stain vectors are (nearly) linearly dependent; "
                         "they cannot be separated")
    return stains


def read_stain_matrix(path) -> np.ndarray:
    """Read a user's 3x3 stain matrix: rows H, E, third stain; columns R, G, B optical density.

    Plain text or CSV (commas, semicolons, tabs or spaces); `#` starts a comment.
    """
    from nucseg.io import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read stain matrix ({exc})") from None
    for line in text.splitlines():
        line = line.split("#", 1)[0].replace(",", " ").replace(";", " ").strip()
        if not line:
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise InputError(path, f"stain matrix has a non-numeric value in line {line!r}") \
                from None
    if len({len(r) for r in rows}) > 1:
        raise InputError(path, "stain matrix rows have different lengths")
    try:
        return _check_stain_matrix(np.array(rows, dtype=np.float64), "stain matrix")
    except ValueError as exc:
        raise InputError(path, str(exc).removeprefix("stain matrix: ")) from None


def _hematoxylin_tables(stain_matrix: np.ndarray | None) -> np.ndarray:
    """(3, 256) float32: table[c, v] = contribution of value v in channel c to the H density."""
    stains = RGB_FROM_HED if stain_matrix is None else _check_stain_matrix(stain_matrix)
    h_column = np.linalg.inv(stains)[:, 0]                     # RGB OD -> H amount
    values = np.maximum(np.arange(256) / 255.0, _LOG_FLOOR)    # as img_as_float, then clipped
    log_od = np.log(values) / np.log(_LOG_FLOOR)               # (256,)
    return (h_column[:, None] * log_od[None, :]).astype(np.float32)


def hematoxylin(rgb: np.ndarray, stain_matrix: np.ndarray | None = None) -> np.ndarray:
    """Hematoxylin optical density (>= 0) of an HxWx3 uint8 RGB image, as float32 HxW.

    `stain_matrix`: rows are stain OD vectors (row 0 = hematoxylin), default Ruifrok-Johnston.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {rgb.dtype}")
    import cv2

    luts = [table.reshape(1, 256) for table in _hematoxylin_tables(stain_matrix)]
    height, width = rgb.shape[:2]
    out = np.empty((height, width), np.float32)
    # Row blocks of ~64k pixels keep the scratch buffers in cache: fresh full-size temporaries
    # cost more in page faults than the arithmetic itself.
    rows = max(1, (1 << 16) // max(width, 1))
    channel = np.empty((rows, width), np.uint8)
    scratch = np.empty((rows, width), np.float32)
    for y in range(0, height, rows):
        block, dst = rgb[y:y + rows], out[y:y + rows]
        n = len(dst)
        for c, lut in enumerate(luts):
            np.copyto(channel[:n], block[..., c])
            if c == 0:
                cv2.LUT(channel[:n], lut, dst=dst)
            else:
                cv2.LUT(channel[:n], lut, dst=scratch[:n])
                cv2.add(dst, scratch[:n], dst=dst)
        np.maximum(dst, 0, out=dst)  # rgb2hed clips negative densities
    return out


def hematoxylin_model_channel(h: np.ndarray) -> np.ndarray:
    """The uint8 H channel of the 5-channel Mask R-CNN+ input: h / max(h) * 255, truncated.

    The Mask R-CNN+ code copied pre-computed 0-255 H arrays into its uint8 input without
    rescaling; how those were made is not published. nucseg scales per image exactly as that
    code scaled the distance channel (see docs/formats.md). An all-zero map stays zero.
    """
    from nucseg.distance import scale_to_uint8_range

    return scale_to_uint8_range(h)


def hstain_file(image_path, outdir, stain_matrix: np.ndarray | None = None) -> Path:
    """Read one RGB tile, write `<outdir>/<stem>_hstain.tif` (float32); returns the path."""
    from nucseg.io import output_path, read_rgb, write_float_map

    h = hematoxylin(read_rgb(image_path), stain_matrix)
    return write_float_map(output_path(outdir, image_path, "_hstain.tif"), h)
