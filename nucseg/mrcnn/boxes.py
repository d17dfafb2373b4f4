"""Box arithmetic shared by the graph layers (TF) and the data side (NumPy).

Boxes are (y1, x1, y2, x2). In pixels y2/x2 are exclusive; normalised boxes map pixel p to
p / (size - 1) with the far corner taken as inclusive (y2 - 1). The op order follows
Matterport's so that float32 results agree to the last bits where it matters (NMS ties,
rounding of pixel boxes).
"""
from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------------------------


def norm_boxes(boxes, shape):
    """Pixel boxes -> normalised float32 boxes for an image of shape (H, W)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide(np.asarray(boxes) - shift, scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Normalised boxes -> int32 pixel boxes (half-to-even rounding, as np.around)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


def apply_box_deltas(boxes, deltas):
    """Refine boxes by (dy, dx, log dh, log dw) deltas (NumPy twin of the graph op)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    deltas = np.asarray(deltas, dtype=np.float32)
    height, width, center_y, center_x = centre_size(boxes)
    center_y = center_y + deltas[:, 0] * height
    center_x = center_x + deltas[:, 1] * width
    height = height * np.exp(deltas[:, 2])
    width = width * np.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return np.stack([y1, x1, y1 + height, x1 + width], axis=1)


def centre_size(boxes):
    """(height, width, centre y, centre x) of [N, 4] boxes; NumPy arrays or TF tensors alike."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    return height, width, boxes[:, 0] + 0.5 * height, boxes[:, 1] + 0.5 * width


def _refinement_terms(box, gt_box):
    """dy, dx and the two size ratios whose logs are dh, dw (NumPy or TF; no +1 on sizes)."""
    height, width, center_y, center_x = centre_size(box)
    gt_height, gt_width, gt_center_y, gt_center_x = centre_size(gt_box)
    dy = (gt_center_y - center_y) / height
    dx = (gt_center_x - center_x) / width
    return dy, dx, gt_height / height, gt_width / width


def box_refinement(box, gt_box, dtype=np.float32):
    """Deltas that turn `box` into `gt_box` (no +1 on sizes), computed in `dtype`."""
    dy, dx, h_ratio, w_ratio = _refinement_terms(np.asarray(box, dtype=dtype),
                                                 np.asarray(gt_box, dtype=dtype))
    return np.stack([dy, dx, np.log(h_ratio), np.log(w_ratio)], axis=1)


def compute_overlaps(boxes1, boxes2):
    """IoU matrix [len(boxes1), len(boxes2)] (areas without +1; 0 where the union is 0)."""
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    y1 = np.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    x1 = np.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    y2 = np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    x2 = np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return iou


def extract_bboxes(mask):
    """Tight int32 boxes [N, 4] of a bool [H, W, N] mask stack (y2/x2 exclusive; 0s if empty)."""
    mask = np.asarray(mask)
    n = mask.shape[-1]
    boxes = np.zeros((n, 4), dtype=np.int32)
    rows_any = mask.any(axis=1)  # [H, N]
    cols_any = mask.any(axis=0)  # [W, N]
    for i in range(n):
        rows = np.flatnonzero(rows_any[:, i])
        cols = np.flatnonzero(cols_any[:, i])
        if rows.size:
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


# ---------------------------------------------------------------------------------------------
# TensorFlow (graph side)
# ---------------------------------------------------------------------------------------------


def apply_box_deltas_graph(boxes, deltas):
    """Refine [N, 4] boxes by [N, 4] deltas (centre/size form)."""
    import tensorflow as tf

    height, width, center_y, center_x = centre_size(boxes)
    center_y += deltas[:, 0] * height
    center_x += deltas[:, 1] * width
    height *= tf.exp(deltas[:, 2])
    width *= tf.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    y2 = y1 + height
    x2 = x1 + width
    return tf.stack([y1, x1, y2, x2], axis=1)


def clip_boxes_graph(boxes, window):
    """Clamp [N, 4] boxes into window (y1, x1, y2, x2)."""
    import tensorflow as tf

    wy1, wx1, wy2, wx2 = tf.split(window, 4)
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=1)
    y1 = tf.maximum(tf.minimum(y1, wy2), wy1)
    x1 = tf.maximum(tf.minimum(x1, wx2), wx1)
    y2 = tf.maximum(tf.minimum(y2, wy2), wy1)
    x2 = tf.maximum(tf.minimum(x2, wx2), wx1)
    clipped = tf.concat([y1, x1, y2, x2], axis=1)
    clipped.set_shape((clipped.shape[0], 4))
    return clipped


def norm_boxes_graph(boxes, shape):
    """Pixel boxes -> normalised, in the graph; shape is (H, W)."""
    import tensorflow as tf

    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.divide(boxes - shift, scale)


def denorm_boxes_graph(boxes, shape):
    """Normalised boxes -> int32 pixel boxes, in the graph (tf.round is half to even)."""
    import tensorflow as tf

    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.cast(tf.round(tf.multiply(boxes, scale) + shift), tf.int32)


def box_refinement_graph(box, gt_box):
    """Deltas that turn [N, 4] `box` into [N, 4] `gt_box`, in the graph."""
    import tensorflow as tf

    dy, dx, h_ratio, w_ratio = _refinement_terms(tf.cast(box, tf.float32),
                                                 tf.cast(gt_box, tf.float32))
    return tf.stack([dy, dx, tf.math.log(h_ratio), tf.math.log(w_ratio)], axis=1)


def overlaps_graph(boxes1, boxes2):
    """IoU matrix [N1, N2] of two box sets, in the graph (areas without +1; 0 for no union)."""
    import tensorflow as tf

    b1y1, b1x1, b1y2, b1x2 = tf.split(boxes1[:, None, :], 4, axis=-1)
    b2y1, b2x1, b2y2, b2x2 = tf.split(boxes2[None, :, :], 4, axis=-1)
    y1 = tf.maximum(b1y1, b2y1)
    x1 = tf.maximum(b1x1, b2x1)
    y2 = tf.minimum(b1y2, b2y2)
    x2 = tf.minimum(b1x2, b2x2)
    intersection = tf.maximum(x2 - x1, 0) * tf.maximum(y2 - y1, 0)
    b1_area = (b1y2 - b1y1) * (b1x2 - b1x1)
    b2_area = (b2y2 - b2y1) * (b2x2 - b2x1)
    union = b1_area + b2_area - intersection
    iou = tf.math.divide_no_nan(intersection, union)  # 0 where the union is 0, as compute_overlaps
    return tf.squeeze(iou, axis=-1)
