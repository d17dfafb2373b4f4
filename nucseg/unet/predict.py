"""Network input from an RGB tile, and distance prediction on images of any size.

Training and prediction share `model_input`, so the normalisation cannot drift between them:
each channel (R, G, B and optionally hematoxylin optical density) becomes
(x - mean) / std over the WHOLE image, std below 1e-6 counting as 1. Statistics come from the
whole image even when prediction is tiled, so tiles see the same input values as one pass would.

Sizes: the network needs height and width that are multiples of 32. The input is padded at the
bottom/right by reflection and the output cropped back. Images larger than `tile_size` on a
side are cut into tiles of `tile_size` that overlap by 2 * `margin`; each tile keeps only its
centre (the margin, where context is missing, is dropped) except on the image-edge sides, so
every output pixel comes from one tile. Tiles start on multiples of 32 px of the padded image,
aligned with the pooling grid of a single pass, and image edges are treated as in a single
pass, so tiled and untiled results differ only by the context beyond the margin.
"""
from __future__ import annotations

import numpy as np

from nucseg.unet.model import DIVISOR

DEFAULT_TILE_SIZE = 1024
DEFAULT_MARGIN = 64


def normalise_channels(image: np.ndarray) -> np.ndarray:
    """Per-image, per-channel zero mean and unit standard deviation, float32."""
    image = np.asarray(image, dtype=np.float32)
    flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std[std < 1e-6] = 1.0
    return ((image - mean) / std).astype(np.float32)


def model_input(rgb: np.ndarray, channels, hstain: np.ndarray | None = None) -> np.ndarray:
    """HxWxC float32 network input for an HxWx3 uint8 RGB tile.

    `channels` is the model's channel list (["R","G","B"] or ["R","G","B","H"]); the H channel
    is `hstain` when given, else computed from `rgb` by nucseg.stain.hematoxylin.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if list(channels) == ["R", "G", "B"]:
        stack = rgb.astype(np.float32)
    else:
        if hstain is None:
            from nucseg.stain import hematoxylin

            hstain = hematoxylin(rgb)
        hstain = np.asarray(hstain, dtype=np.float32)
        if hstain.shape != rgb.shape[:2]:
            raise ValueError(f"hematoxylin map shape {hstain.shape} differs from the image's "
                             f"{rgb.shape[:2]}")
        stack = np.concatenate([rgb.astype(np.float32), hstain[..., None]], axis=-1)
    return normalise_channels(stack)


def padded_size(n: int, divisor: int = DIVISOR) -> int:
    return -(-n // divisor) * divisor


def pad_to(image: np.ndarray, height: int, width: int, mode: str = "reflect") -> np.ndarray:
    """Pad the first two axes at the bottom/right to (height, width)."""
    pad = [(0, height - image.shape[0]), (0, width - image.shape[1])]
    pad += [(0, 0)] * (image.ndim - 2)
    if mode == "reflect":
        return np.pad(image, pad, mode="reflect")
    return np.pad(image, pad, mode="constant")


def _run(keras_model, x: np.ndarray) -> np.ndarray:
    """One forward pass on an HxWxC array whose sides are multiples of 32."""
    out = keras_model(x[None], training=False)
    return np.asarray(out)[0, ..., 0]


def check_tiling(tile_size: int, margin: int) -> None:
    if tile_size < DIVISOR or tile_size % DIVISOR or margin < 0 or margin % DIVISOR:
        raise ValueError(f"tile size and margin must be multiples of {DIVISOR} "
                         f"(got {tile_size} and {margin})")
    if tile_size - 2 * margin < DIVISOR:
        raise ValueError(f"tile size {tile_size} leaves no centre after two margins of "
                         f"{margin} px; use a larger tile or a smaller margin")


def predict_array(keras_model, x: np.ndarray, tile_size: int = DEFAULT_TILE_SIZE,
                  margin: int = DEFAULT_MARGIN) -> np.ndarray:
    """Distance map (HxW float32) for a normalised HxWxC input, tiled when it is large."""
    check_tiling(tile_size, margin)
    height, width = x.shape[:2]
    padded = pad_to(x, padded_size(height), padded_size(width))
    out = np.zeros(padded.shape[:2], dtype=np.float32)
    for ys, yk in _tile_spans(padded.shape[0], tile_size, margin):
        for xs, xk in _tile_spans(padded.shape[1], tile_size, margin):
            pred = _run(keras_model, padded[ys, xs])
            out[yk, xk] = pred[yk.start - ys.start:yk.stop - ys.start,
                               xk.start - xs.start:xk.stop - xs.start]
    return out[:height, :width]


def _tile_spans(length: int, tile_size: int, margin: int) -> list[tuple[slice, slice]]:
    """(tile, kept part) slices along one padded axis: starts every tile - 2*margin px, the last
    one moved back to end at the edge; each tile keeps its centre, the end tiles also keep the
    image-edge side (which has no more context in a single pass either)."""
    if length <= tile_size:
        return [(slice(0, length), slice(0, length))]
    step = tile_size - 2 * margin
    starts = list(range(0, length - tile_size, step)) + [length - tile_size]
    spans = []
    for k, start in enumerate(starts):
        keep_from = 0 if k == 0 else start + margin
        keep_to = length if k == len(starts) - 1 else start + tile_size - margin
        spans.append((slice(start, start + tile_size), slice(keep_from, keep_to)))
    return spans


def predict_distance(model, rgb: np.ndarray, hstain: np.ndarray | None = None,
                     tile_size: int = DEFAULT_TILE_SIZE,
                     margin: int = DEFAULT_MARGIN) -> np.ndarray:
    """Predicted per-nucleus distance map (pixels, float32 HxW) of an RGB uint8 tile.

    `model` is what `load_unet` returns. Negative predictions are clipped to 0 (a distance).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {rgb.dtype}")
    x = model_input(rgb, model.config.channels, hstain)
    dist = predict_array(model.keras_model, x, tile_size, margin)
    return np.maximum(dist, 0, out=dist)


def predict_file(image_path, model, outdir, tile_size: int = DEFAULT_TILE_SIZE,
                 margin: int = DEFAULT_MARGIN):
    """Read one RGB tile, write `<outdir>/<stem>_dist.tif` (float32); returns the path."""
    from nucseg.io import output_path, read_rgb, write_float_map

    rgb = read_rgb(image_path)
    dist = predict_distance(model, rgb, tile_size=tile_size, margin=margin)
    return write_float_map(output_path(outdir, image_path, "_dist.tif"), dist)
