"""Training targets: RPN anchor labels (NumPy, in the loader) and ROI sampling (TF, in the graph).

Both follow Matterport's semantics (fact sheet §2.10, §3.5): crowd boxes (class id < 0) never
become training targets, and anchors/ROIs touching a crowd cannot be negatives.
"""
from __future__ import annotations

import numpy as np

from nucseg.mrcnn.boxes import (box_refinement, box_refinement_graph, compute_overlaps,
                                overlaps_graph)
from nucseg.mrcnn.graph_layer import GraphLayer

RPN_POSITIVE_IOU = 0.7
RPN_NEGATIVE_IOU = 0.3
CROWD_IOU = 0.001
ROI_POSITIVE_IOU = 0.5
_ANCHOR_CHUNK = 32768   # bounds the anchors x GT IoU block in memory


# ---------------------------------------------------------------------------------------------
# NumPy side (data loader)
# ---------------------------------------------------------------------------------------------
def _iou_summary(anchors, gt_boxes):
    """Per anchor: max IoU and argmax GT; per GT: its max IoU. Computed in anchor chunks."""
    n, g = len(anchors), len(gt_boxes)
    anchor_max = np.zeros(n)
    anchor_arg = np.zeros(n, np.int64)
    gt_max = np.zeros(g)
    for start in range(0, n, _ANCHOR_CHUNK):
        iou = compute_overlaps(anchors[start:start + _ANCHOR_CHUNK], gt_boxes)
        anchor_arg[start:start + len(iou)] = iou.argmax(axis=1)
        anchor_max[start:start + len(iou)] = iou.max(axis=1)
        gt_max = np.maximum(gt_max, iou.max(axis=0))
    return anchor_max, anchor_arg, gt_max


def _anchors_at_gt_max(anchors, gt_boxes, gt_max):
    """Indices of every anchor that ties for some GT's best IoU (GTs with best IoU 0 excluded:
    in Matterport such a degenerate GT would make every non-overlapping anchor positive)."""
    hits = []
    valid = gt_max > 0
    if not valid.any():
        return np.zeros(0, np.int64)
    for start in range(0, len(anchors), _ANCHOR_CHUNK):
        iou = compute_overlaps(anchors[start:start + _ANCHOR_CHUNK], gt_boxes[valid])
        rows = np.nonzero((iou == gt_max[valid][None, :]).any(axis=1))[0]
        hits.append(rows + start)
    return np.concatenate(hits)


def build_rpn_targets(anchors: np.ndarray, gt_class_ids: np.ndarray, gt_boxes: np.ndarray,
                      anchors_per_image: int = 256, rpn_bbox_std_dev=(0.1, 0.1, 0.2, 0.2),
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RPN training targets for one image.

    anchors: (N, 4) pixel anchors; gt_boxes: (G, 4) pixel boxes; class ids < 0 mark crowds.
    Returns rpn_match (N,) int32 in {1 positive, -1 negative, 0 neutral} and rpn_bbox
    (anchors_per_image, 4) float32: the normalised deltas of the positives in ascending
    anchor order, zero-padded. An image without (non-crowd) instances gives all-neutral anchors,
    as the Mask R-CNN+ loader did.
    """
    rng = rng if rng is not None else np.random.default_rng()
    anchors = np.asarray(anchors, np.float64)
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    rpn_match = np.zeros(len(anchors), np.int32)
    rpn_bbox = np.zeros((anchors_per_image, 4), np.float32)

    crowd = gt_class_ids < 0
    if crowd.any():
        crowd_max, _, _ = _iou_summary(anchors, gt_boxes[crowd])
        no_crowd = crowd_max < CROWD_IOU
        gt_boxes = gt_boxes[~crowd]
    else:
        no_crowd = np.ones(len(anchors), bool)
    if len(gt_boxes) == 0:
        return rpn_match, rpn_bbox

    anchor_max, anchor_arg, gt_max = _iou_summary(anchors, gt_boxes)
    rpn_match[(anchor_max < RPN_NEGATIVE_IOU) & no_crowd] = -1
    rpn_match[_anchors_at_gt_max(anchors, gt_boxes, gt_max)] = 1
    rpn_match[anchor_max >= RPN_POSITIVE_IOU] = 1

    positives = np.nonzero(rpn_match == 1)[0]
    extra = len(positives) - anchors_per_image // 2
    if extra > 0:
        rpn_match[rng.choice(positives, extra, replace=False)] = 0
    negatives = np.nonzero(rpn_match == -1)[0]
    extra = len(negatives) - (anchors_per_image - int(np.sum(rpn_match == 1)))
    if extra > 0:
        rpn_match[rng.choice(negatives, extra, replace=False)] = 0

    positives = np.nonzero(rpn_match == 1)[0]
    deltas = box_refinement(anchors[positives], gt_boxes[anchor_arg[positives]],
                            dtype=np.float64)
    rpn_bbox[:len(positives)] = deltas / np.asarray(rpn_bbox_std_dev, np.float64)
    return rpn_match, rpn_bbox


# ---------------------------------------------------------------------------------------------
# TF side (training graph): DetectionTargetLayer, "proposal_targets"
# ---------------------------------------------------------------------------------------------
def _tf():
    import tensorflow as tf
    return tf


def detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks, *, rois_per_image: int,
                            positive_ratio: float, bbox_std_dev, mask_shape, use_mini_mask: bool):
    """Sample ROIs for one image and build their class, box and mask targets.

    proposals [P, 4] and gt_boxes [G, 4] normalised (zero rows are padding); gt_masks [h, w, G].
    Returns rois [T, 4], class_ids [T] int32, deltas [T, 4], masks [T, mh, mw]; positives first,
    then negatives, then zero padding (T = rois_per_image).
    """
    tf = _tf()
    proposals = tf.cast(proposals, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_class_ids = tf.cast(gt_class_ids, tf.int32)
    proposals = tf.boolean_mask(proposals, tf.reduce_any(tf.abs(proposals) > 0, axis=1))
    gt_present = tf.reduce_any(tf.abs(gt_boxes) > 0, axis=1)
    gt_boxes = tf.boolean_mask(gt_boxes, gt_present)
    gt_class_ids = tf.boolean_mask(gt_class_ids, gt_present)
    gt_masks = tf.gather(gt_masks, tf.where(gt_present)[:, 0], axis=2)

    is_crowd = gt_class_ids < 0
    crowd_boxes = tf.boolean_mask(gt_boxes, is_crowd)
    keep = tf.where(tf.logical_not(is_crowd))[:, 0]
    gt_class_ids = tf.gather(gt_class_ids, keep)
    gt_boxes = tf.gather(gt_boxes, keep)
    gt_masks = tf.gather(gt_masks, keep, axis=2)

    overlaps = overlaps_graph(proposals, gt_boxes)
    crowd_max = tf.reduce_max(tf.concat([overlaps_graph(proposals, crowd_boxes),
                                         tf.zeros_like(proposals[:, :1])], axis=1), axis=1)
    no_crowd = crowd_max < CROWD_IOU
    roi_max = tf.reduce_max(tf.concat([overlaps, tf.fill([tf.shape(proposals)[0], 1], -1.0)],
                                      axis=1), axis=1)
    positive_indices = tf.where(roi_max >= ROI_POSITIVE_IOU)[:, 0]
    negative_indices = tf.where(tf.logical_and(roi_max < ROI_POSITIVE_IOU, no_crowd))[:, 0]

    positive_indices = tf.random.shuffle(positive_indices)[:int(rois_per_image * positive_ratio)]
    positive_count = tf.shape(positive_indices)[0]
    negative_count = tf.cast((1.0 / positive_ratio) * tf.cast(positive_count, tf.float32),
                             tf.int32) - positive_count
    negative_indices = tf.random.shuffle(negative_indices)[:negative_count]
    positive_rois = tf.gather(proposals, positive_indices)
    negative_rois = tf.gather(proposals, negative_indices)

    positive_overlaps = tf.gather(overlaps, positive_indices)
    assignment = tf.cond(tf.shape(positive_overlaps)[1] > 0,
                         lambda: tf.argmax(positive_overlaps, axis=1),
                         lambda: tf.zeros([0], tf.int64))
    roi_gt_boxes = tf.gather(gt_boxes, assignment)
    roi_gt_class_ids = tf.gather(gt_class_ids, assignment)
    deltas = box_refinement_graph(positive_rois, roi_gt_boxes)
    deltas = deltas / tf.constant(np.asarray(bbox_std_dev, np.float32))

    instance_masks = tf.expand_dims(tf.transpose(tf.cast(gt_masks, tf.float32), [2, 0, 1]), -1)
    roi_masks = tf.gather(instance_masks, assignment)
    boxes = positive_rois
    if use_mini_mask:
        y1, x1, y2, x2 = tf.split(positive_rois, 4, axis=1)
        gy1, gx1, gy2, gx2 = tf.split(roi_gt_boxes, 4, axis=1)
        gh = gy2 - gy1
        gw = gx2 - gx1
        boxes = tf.concat([(y1 - gy1) / gh, (x1 - gx1) / gw, (y2 - gy1) / gh, (x2 - gx1) / gw],
                          axis=1)
    box_ids = tf.range(tf.shape(roi_masks)[0])
    masks = tf.image.crop_and_resize(roi_masks, boxes, box_ids, list(mask_shape))
    masks = tf.round(tf.squeeze(masks, axis=3))

    rois = tf.concat([positive_rois, negative_rois], axis=0)
    n_neg = tf.shape(negative_rois)[0]
    pad = tf.maximum(rois_per_image - tf.shape(rois)[0], 0)
    rois = tf.pad(rois, [(0, pad), (0, 0)])
    class_ids = tf.pad(roi_gt_class_ids, [(0, n_neg + pad)])
    deltas = tf.pad(deltas, [(0, n_neg + pad), (0, 0)])
    masks = tf.pad(masks, [(0, n_neg + pad), (0, 0), (0, 0)])
    return rois, class_ids, deltas, masks


class DetectionTargetLayer(GraphLayer):
    """Keras layer "proposal_targets": per image ROI sampling and targets (no weights).

    Inputs: [proposals [B, P, 4], gt_class_ids [B, G], gt_boxes [B, G, 4] normalised,
    gt_masks [B, h, w, G]]. Outputs: rois, target_class_ids, target_bbox, target_mask.
    """

    def __init__(self, config, name="proposal_targets", **kwargs):
        super().__init__(name=name, **kwargs)
        self.rois_per_image = int(config.TRAIN_ROIS_PER_IMAGE)
        self.positive_ratio = float(config.ROI_POSITIVE_RATIO)
        self.bbox_std_dev = tuple(float(v) for v in config.BBOX_STD_DEV)
        self.mask_shape = tuple(int(v) for v in config.MASK_SHAPE)
        self.use_mini_mask = bool(config.USE_MINI_MASK)

    def call(self, inputs):
        tf = _tf()
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        t, (mh, mw) = self.rois_per_image, self.mask_shape

        def one(args):
            return detection_targets_graph(
                *args, rois_per_image=t, positive_ratio=self.positive_ratio,
                bbox_std_dev=self.bbox_std_dev, mask_shape=self.mask_shape,
                use_mini_mask=self.use_mini_mask)

        signature = (tf.TensorSpec([t, 4], tf.float32), tf.TensorSpec([t], tf.int32),
                     tf.TensorSpec([t, 4], tf.float32), tf.TensorSpec([t, mh, mw], tf.float32))
        rois, class_ids, deltas, masks = tf.map_fn(
            one, (tf.cast(proposals, tf.float32), tf.cast(gt_class_ids, tf.int32),
                  tf.cast(gt_boxes, tf.float32), gt_masks),
            fn_output_signature=signature)
        return [tf.stop_gradient(rois), class_ids, deltas, masks]

    def compute_output_shape(self, input_shape):
        b = input_shape[0][0]
        t, (mh, mw) = self.rois_per_image, self.mask_shape
        return [(b, t, 4), (b, t), (b, t, 4), (b, t, mh, mw)]

    def compute_output_spec(self, inputs):
        import keras
        shapes = self.compute_output_shape([x.shape for x in inputs])
        dtypes = ["float32", "int32", "float32", "float32"]
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]
