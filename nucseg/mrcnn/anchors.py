"""Pyramid anchors in Matterport's order (level -> y -> x -> ratio), as plain NumPy.

Anchors are an input of the inference graph and a constant of the training graph; they are
never a Keras variable, so they never end up in a weight file. `get_anchors` caches them per
(anchor settings, image shape) because detect() asks for them on every call.
"""
from __future__ import annotations

import math

import numpy as np

from nucseg.mrcnn.boxes import norm_boxes

_ANCHOR_CACHE: dict = {}
_CACHE_LIMIT = 32


def compute_backbone_shapes(config, image_shape):
    """[[h, w], ...] of the feature maps P2..P6 for an input of image_shape (H, W[, C])."""
    if callable(config.BACKBONE):
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    if config.BACKBONE not in ("resnet50", "resnet101"):
        raise ValueError(f"BACKBONE must be 'resnet50' or 'resnet101', not {config.BACKBONE!r}")
    return np.array([[int(math.ceil(image_shape[0] / stride)),
                      int(math.ceil(image_shape[1] / stride))]
                     for stride in config.BACKBONE_STRIDES])


def generate_anchors(scale, ratios, feature_shape, feature_stride, anchor_stride):
    """Pixel anchors of one level: [h * w * len(ratios), 4], ordered y -> x -> ratio.

    Centres sit at multiples of the feature stride (no half-stride offset), as in Matterport.
    """
    ratios = np.asarray(ratios, dtype=np.float64).reshape(-1)
    heights = scale / np.sqrt(ratios)  # [A]
    widths = scale * np.sqrt(ratios)
    ys = np.arange(0, feature_shape[0], anchor_stride) * feature_stride
    xs = np.arange(0, feature_shape[1], anchor_stride) * feature_stride
    cy = np.broadcast_to(ys[:, None, None], (len(ys), len(xs), len(ratios)))
    cx = np.broadcast_to(xs[None, :, None], cy.shape)
    h = np.broadcast_to(heights[None, None, :], cy.shape)
    w = np.broadcast_to(widths[None, None, :], cy.shape)
    boxes = np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
    return boxes.reshape(-1, 4)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """Pixel anchors [N, 4] (float64) for all levels, one scale per level, P2 first."""
    if len(scales) != len(feature_shapes) or len(scales) != len(feature_strides):
        raise ValueError("need one anchor scale and one stride per pyramid level: got "
                         f"{len(scales)} scales, {len(feature_shapes)} feature shapes, "
                         f"{len(feature_strides)} strides")
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i], anchor_stride)
        for i in range(len(scales))], axis=0)


def _cache_key(config, image_shape):
    backbone = config.BACKBONE if not callable(config.BACKBONE) else id(config.BACKBONE)
    return (backbone, tuple(config.RPN_ANCHOR_SCALES), tuple(config.RPN_ANCHOR_RATIOS),
            tuple(config.BACKBONE_STRIDES), int(config.RPN_ANCHOR_STRIDE),
            tuple(int(s) for s in image_shape[:2]))


def get_pixel_anchors(config, image_shape):
    """Pixel anchors [N, 4] float64 for an image shape (what RPN target matching uses)."""
    shapes = compute_backbone_shapes(config, image_shape)
    return generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                    shapes, config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)


def get_anchors(config, image_shape):
    """Normalised float32 anchors [N, 4] for a molded image shape; cached and read-only."""
    key = _cache_key(config, image_shape)
    anchors = _ANCHOR_CACHE.get(key)
    if anchors is None:
        anchors = norm_boxes(get_pixel_anchors(config, image_shape), image_shape[:2])
        anchors.setflags(write=False)
        if len(_ANCHOR_CACHE) >= _CACHE_LIMIT:
            _ANCHOR_CACHE.pop(next(iter(_ANCHOR_CACHE)))
        _ANCHOR_CACHE[key] = anchors
    return anchors
