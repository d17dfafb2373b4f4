"""The five Mask R-CNN losses and the L2 weight decay, with Matterport's semantics (§2.11).

Each loss returns a scalar; an empty selection (no positive anchors/ROIs) gives 0, not NaN.
"""
from __future__ import annotations

import tensorflow as tf

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")


def smooth_l1(y_true, y_pred):
    """0.5 d^2 where |d| < 1, else |d| - 0.5, element-wise."""
    diff = tf.abs(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32))
    return tf.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5)


def _mean_or_zero(values):
    values = tf.reshape(values, [-1])
    return tf.cond(tf.size(values) > 0, lambda: tf.reduce_mean(values), lambda: 0.0)


def rpn_class_loss(rpn_match, rpn_class_logits):
    """Softmax CE of anchor objectness over non-neutral anchors.

    rpn_match [B, N, 1] or [B, N] in {-1, 0, 1}; rpn_class_logits [B, N, 2].
    """
    rpn_match = tf.reshape(tf.cast(rpn_match, tf.int32), tf.shape(rpn_class_logits)[:2])
    labels = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    indices = tf.where(tf.not_equal(rpn_match, 0))
    logits = tf.gather_nd(rpn_class_logits, indices)
    labels = tf.gather_nd(labels, indices)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                          logits=tf.cast(logits, tf.float32))
    return _mean_or_zero(loss)


def rpn_bbox_loss(target_bbox, rpn_match, rpn_bbox):
    """Smooth-L1 of positive anchors' deltas.

    target_bbox [B, R, 4] holds each image's positives' targets packed first (ascending anchor
    order); rpn_match [B, N(, 1)]; rpn_bbox [B, N, 4] predictions.
    """
    rpn_match = tf.reshape(tf.cast(rpn_match, tf.int32), tf.shape(rpn_bbox)[:2])
    positive = tf.equal(rpn_match, 1)
    predicted = tf.gather_nd(rpn_bbox, tf.where(positive))
    counts = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    rows = tf.shape(target_bbox)[1]
    keep = tf.sequence_mask(tf.minimum(counts, rows), rows)
    target = tf.boolean_mask(target_bbox, keep)
    predicted = predicted[:tf.shape(target)[0]]   # positives never exceed the packed rows
    return _mean_or_zero(smooth_l1(target, predicted))


def mrcnn_class_loss(target_class_ids, pred_class_logits, active_class_ids):
    """Softmax CE over all sampled ROIs (negatives and padding count as background).

    Each term is weighted by whether the predicted class is active in image 0's source;
    the sum is divided by the sum of those weights.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int64)
    pred_class_logits = tf.cast(pred_class_logits, tf.float32)
    active = tf.cast(active_class_ids, tf.float32)
    pred_ids = tf.argmax(pred_class_logits, axis=2)
    weights = tf.gather(active[0], pred_ids)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids,
                                                          logits=pred_class_logits)
    return tf.math.divide_no_nan(tf.reduce_sum(loss * weights), tf.reduce_sum(weights))


def mrcnn_bbox_loss(target_bbox, target_class_ids, pred_bbox):
    """Smooth-L1 of positive ROIs' deltas, read at the target class. pred_bbox [B, T, C, 4]."""
    target_class_ids = tf.reshape(tf.cast(target_class_ids, tf.int64), [-1])
    target_bbox = tf.reshape(target_bbox, [-1, 4])
    pred_bbox = tf.reshape(pred_bbox, [-1, tf.shape(pred_bbox)[2], 4])
    positive = tf.where(target_class_ids > 0)[:, 0]
    indices = tf.stack([positive, tf.gather(target_class_ids, positive)], axis=1)
    target = tf.gather(target_bbox, positive)
    predicted = tf.gather_nd(pred_bbox, indices)
    return _mean_or_zero(smooth_l1(target, predicted))


def mrcnn_mask_loss(target_masks, target_class_ids, pred_masks):
    """Binary CE of positive ROIs' masks at the target class, mean over all their pixels.

    target_masks [B, T, h, w]; pred_masks [B, T, h, w, C] sigmoid probabilities.
    """
    target_class_ids = tf.reshape(tf.cast(target_class_ids, tf.int64), [-1])
    shape = tf.shape(target_masks)
    target_masks = tf.reshape(target_masks, [-1, shape[2], shape[3]])
    pshape = tf.shape(pred_masks)
    pred_masks = tf.reshape(pred_masks, [-1, pshape[2], pshape[3], pshape[4]])
    pred_masks = tf.transpose(pred_masks, [0, 3, 1, 2])
    positive = tf.where(target_class_ids > 0)[:, 0]
    indices = tf.stack([positive, tf.gather(target_class_ids, positive)], axis=1)
    y_true = tf.cast(tf.gather(target_masks, positive), tf.float32)
    y_pred = tf.cast(tf.gather_nd(pred_masks, indices), tf.float32)
    eps = 1e-7
    y_pred = tf.clip_by_value(y_pred, eps, 1.0 - eps)
    bce = -(y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred))
    return _mean_or_zero(bce)


def decayed_weights(variables):
    """The weights L2 decay covers: every given (trainable) weight except BN gamma/beta."""
    chosen = []
    for v in variables:
        name = getattr(v, "path", None) or v.name
        if "gamma" in name or "beta" in name:
            continue
        chosen.append(v)
    return chosen


def l2_weight_decay(variables, weight_decay: float):
    """sum over tensors of weight_decay * sum(w^2) / size(w) (Matterport's size-normalised l2)."""
    terms = [weight_decay * tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
             / tf.cast(tf.size(v), tf.float32) for v in decayed_weights(variables)]
    return tf.add_n(terms) if terms else tf.constant(0.0)
