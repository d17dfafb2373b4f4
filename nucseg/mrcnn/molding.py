"""Image pre-processing for the network and post-processing of its detections.

Molding follows Matterport exactly (resize modes, padding split, float64 mean subtraction, image
meta), so that molded inputs are bit-identical. Unmolding resizes each 28x28 soft mask to its box
with the same bilinear sampling as skimage's `resize(order=1, mode="constant")` (pixel-centre
aligned, zero outside the mask), but as two small cached matrix products per detection instead
of one skimage call, and builds the label map by pasting box-sized crops in ascending score order.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from nucseg.mrcnn.boxes import denorm_boxes, norm_boxes

RESIZE_MODES = ("none", "square", "pad64", "crop")


# ---------------------------------------------------------------------------------------------
# resizing and padding
# ---------------------------------------------------------------------------------------------


def skimage_resize(image, output_shape, order=1, preserve_range=False):
    """skimage.transform.resize with Matterport's fixed options (no anti-aliasing)."""
    from skimage.transform import resize

    return resize(image, output_shape, order=order, mode="constant", cval=0, clip=True,
                  preserve_range=preserve_range, anti_aliasing=False)


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None):
    """Resize and pad an image as Matterport does.

    Returns (image in its original dtype, window (y1, x1, y2, x2), scale, padding, crop).
    `rng` (numpy Generator) draws the crop position in "crop" mode.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"IMAGE_RESIZE_MODE must be one of {RESIZE_MODES}, not {mode!r}")
    image = np.asarray(image)
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None
    if mode == "none":
        return image, window, scale, padding, crop

    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max
    if scale != 1:
        image = skimage_resize(image, (round(h * scale), round(w * scale)), preserve_range=True)

    if mode == "square":
        h, w = image.shape[:2]
        top_pad = (max_dim - h) // 2
        bottom_pad = max_dim - h - top_pad
        left_pad = (max_dim - w) // 2
        right_pad = max_dim - w - left_pad
        padding = [(top_pad, bottom_pad), (left_pad, right_pad), (0, 0)]
        image = np.pad(image, padding[:image.ndim], mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    elif mode == "pad64":
        h, w = image.shape[:2]
        if min_dim and min_dim % 64 != 0:
            raise ValueError(f"IMAGE_MIN_DIM must be a multiple of 64 in pad64 mode, not {min_dim}")
        top_pad, bottom_pad = _pad64_split(h)
        left_pad, right_pad = _pad64_split(w)
        padding = [(top_pad, bottom_pad), (left_pad, right_pad), (0, 0)]
        image = np.pad(image, padding[:image.ndim], mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    elif mode == "crop":
        h, w = image.shape[:2]
        if h < min_dim or w < min_dim:
            raise ValueError(f"crop mode needs an image of at least {min_dim} x {min_dim} after "
                             f"scaling, got {h} x {w}")
        rng = rng if rng is not None else np.random.default_rng()
        y = int(rng.integers(0, h - min_dim + 1))
        x = int(rng.integers(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image.astype(image_dtype), window, scale, padding, crop


def _pad64_split(size):
    """(before, after) padding that brings size up to the next multiple of 64, centred."""
    if size % 64 == 0:
        return 0, 0
    total = size - (size % 64) + 64 - size
    return total // 2, total - total // 2


def resize_mask(mask, scale, padding, crop=None):
    """Resize an [H, W, N] mask stack with the scale/padding/crop of resize_image (nearest)."""
    import scipy.ndimage

    mask = np.asarray(mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = scipy.ndimage.zoom(mask, zoom=[scale, scale, 1], order=0)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding, mode="constant", constant_values=0)


def minimize_mask(bbox, mask, mini_shape):
    """Crop each instance mask to its box and resize to mini_shape (bool [h, w, N])."""
    mini = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        m = mask[y1:y2, x1:x2, i].astype(bool)
        if m.size == 0:
            raise ValueError(f"instance {i} has a box of area zero: {tuple(bbox[i][:4])}")
        # bool -> float64 0/1 as older skimage did implicitly (newer versions refuse bool)
        m = skimage_resize(m.astype(np.float64), mini_shape)
        mini[:, :, i] = np.around(m).astype(bool)
    return mini


def expand_mask(bbox, mini_mask, image_shape):
    """Inverse of minimize_mask: bool [H, W, N] full-size masks."""
    mask = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        m = skimage_resize(mini_mask[:, :, i].astype(np.float64), (y2 - y1, x2 - x1))
        mask[y1:y2, x1:x2, i] = np.around(m).astype(bool)
    return mask


# ---------------------------------------------------------------------------------------------
# image meta and molding
# ---------------------------------------------------------------------------------------------


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Meta vector: id, original (H, W, C), molded (H, W, C), window, scale, active classes."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape) + list(window)
                    + [scale] + list(active_class_ids))


def parse_image_meta(meta):
    """NumPy meta array [B, M] -> dict of its parts (int32 except scale)."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def parse_image_meta_graph(meta):
    """Graph meta tensor [B, M] -> dict of float32 tensors (same keys as parse_image_meta)."""
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, 1:4],
        "image_shape": meta[:, 4:7],
        "window": meta[:, 7:11],
        "scale": meta[:, 11],
        "active_class_ids": meta[:, 12:],
    }


def mold_image(images, config):
    """Subtract MEAN_PIXEL in float64 (as Matterport) and return float32."""
    images = np.asarray(images)
    mean = np.asarray(config.MEAN_PIXEL, dtype=np.float64)
    if images.shape[-1] != mean.shape[-1]:
        raise ValueError(f"image has {images.shape[-1]} channels but MEAN_PIXEL has "
                         f"{mean.shape[-1]} values")
    return (images.astype(np.float32) - mean).astype(np.float32)


def unmold_image(normalized_images, config):
    """Add MEAN_PIXEL back and return uint8 (for display)."""
    return (np.asarray(normalized_images) + np.asarray(config.MEAN_PIXEL)).astype(np.uint8)


def mold_inputs(images, config):
    """List of HxWxC images -> (molded float32 [B, H', W', C], metas float32 [B, M], windows)."""
    molded_images, image_metas, windows = [], [], []
    for image in images:
        molded, window, scale, _padding, _crop = resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
        molded = mold_image(molded, config)
        meta = compose_image_meta(0, image.shape, molded.shape, window, scale,
                                  np.zeros([config.NUM_CLASSES], dtype=np.int32))
        molded_images.append(molded)
        image_metas.append(meta)
        windows.append(window)
    shapes = {m.shape for m in molded_images}
    if len(shapes) > 1:
        raise ValueError(f"images of one batch must mold to one shape, got {sorted(shapes)}")
    return (np.stack(molded_images).astype(np.float32), np.stack(image_metas).astype(np.float32),
            np.stack(windows))


# ---------------------------------------------------------------------------------------------
# unmolding
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _interp_matrix(n_in, n_out):
    """[n_out, n_in] bilinear weights of skimage/scipy grid-mode zoom with zeros outside."""
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    rows = np.arange(n_out)
    for idx, wgt in ((low, 1.0 - frac), (low + 1, frac)):
        inside = (idx >= 0) & (idx < n_in)
        weights[rows[inside], idx[inside]] += wgt[inside]
    weights.setflags(write=False)
    return weights


def resize_soft_mask(mask, height, width):
    """Bilinear resize of a float mask to (height, width) like skimage resize(order=1,
    mode='constant'): float32 result."""
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        return np.zeros((max(height, 0), max(width, 0)), dtype=np.float32)
    ry = _interp_matrix(mask.shape[0], height)
    rx = _interp_matrix(mask.shape[1], width)
    return (ry @ mask.astype(np.float64) @ rx.T).astype(np.float32)


def masks_to_labels(rois, soft_masks, scores, image_shape, threshold=0.5):
    """Instance label map (ids 1..N in the given order); where masks overlap, the higher score
    wins (ties: the earlier detection). uint16, or uint32 beyond 65535 instances."""
    n = len(soft_masks)
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    height, width = int(image_shape[0]), int(image_shape[1])
    labels = np.zeros((height, width), dtype=dtype)
    if n == 0:
        return labels
    rois = np.asarray(rois).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    for i in order[::-1]:  # lowest score first: later pastes overwrite
        y1, x1, y2, x2 = (int(v) for v in rois[i])
        mask = soft_masks[i]
        if mask.shape != (y2 - y1, x2 - x1):
            raise ValueError(f"mask {i} has shape {mask.shape} but its box {(y1, x1, y2, x2)} "
                             f"needs {(y2 - y1, x2 - x1)}")
        if mask.size == 0:
            continue
        # keep the part of the box that lies inside the image
        cy1, cx1 = max(y1, 0), max(x1, 0)
        cy2, cx2 = min(y2, height), min(x2, width)
        if cy2 <= cy1 or cx2 <= cx1:
            continue
        part = mask[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1] >= threshold
        labels[cy1:cy2, cx1:cx2][part] = i + 1
    return labels


def _unmold_boxes(detections, mrcnn_mask, original_image_shape, image_shape, window):
    """Cut padding, map boxes to original pixels, drop empty boxes. Returns the kept arrays."""
    detections = np.asarray(detections)
    zero_ix = np.where(detections[:, 4] == 0)[0]
    n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    masks = np.asarray(mrcnn_mask)[np.arange(n), :, :, class_ids]

    wy1, wx1, wy2, wx2 = norm_boxes(window, image_shape[:2])
    shift = np.array([wy1, wx1, wy1, wx1])
    wh = wy2 - wy1
    ww = wx2 - wx1
    scale = np.array([wh, ww, wh, ww])
    boxes = denorm_boxes(np.divide(boxes - shift, scale), original_image_shape[:2])

    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    return boxes[keep], class_ids[keep], scores[keep].astype(np.float32), masks[keep]


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window,
                      config=None, threshold=None):
    """Detections of one image -> dict(rois, class_ids, scores, masks, labels).

    masks are the soft probabilities resized to each box (float32 (h, w) arrays); labels is
    the instance map thresholded at DETECTION_MASK_THRESHOLD (>=), higher score on top.
    """
    if threshold is None:
        threshold = float(getattr(config, "DETECTION_MASK_THRESHOLD", 0.5))
    rois, class_ids, scores, small_masks = _unmold_boxes(
        detections, mrcnn_mask, original_image_shape, image_shape, window)
    soft = [resize_soft_mask(m, y2 - y1, x2 - x1)
            for m, (y1, x1, y2, x2) in zip(small_masks, rois)]
    labels = masks_to_labels(rois, soft, scores, original_image_shape[:2], threshold)
    return {"rois": rois.astype(np.int32), "class_ids": class_ids, "scores": scores,
            "masks": soft, "labels": labels}


def full_masks(rois, soft_masks, image_shape, threshold=0.5):
    """Matterport's bool [H, W, N] mask stack from box-cropped soft masks."""
    height, width = int(image_shape[0]), int(image_shape[1])
    out = np.zeros((height, width, len(soft_masks)), dtype=bool)
    for i, (mask, (y1, x1, y2, x2)) in enumerate(zip(soft_masks, np.asarray(rois).reshape(-1, 4))):
        if mask.size:
            out[y1:y2, x1:x2, i] = mask >= threshold
    return out


def unmold_detections_matterport(detections, mrcnn_mask, original_image_shape, image_shape,
                                 window, threshold=0.5):
    """Matterport's tuple: (boxes int32 [N, 4], class_ids, scores, masks bool [H, W, N])."""
    rois, class_ids, scores, small_masks = _unmold_boxes(
        detections, mrcnn_mask, original_image_shape, image_shape, window)
    soft = [resize_soft_mask(m, y2 - y1, x2 - x1)
            for m, (y1, x1, y2, x2) in zip(small_masks, rois)]
    return rois, class_ids, scores, full_masks(rois, soft, original_image_shape, threshold)
