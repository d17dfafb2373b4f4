"""Each loss on a hand-made case whose value is worked out by hand in the comments."""
import math

import numpy as np
import pytest
import tensorflow as tf

from nucseg.mrcnn import losses


def test_rpn_class_loss_ignores_neutral_anchors():
    match = tf.constant([[[1], [-1], [0]]], tf.int32)
    logits = tf.constant([[[0.0, 0.0], [0.0, math.log(3)], [5.0, -5.0]]])
    # anchor 0: p(fg) = 1/2 -> ln 2; anchor 1: p(bg) = 1/(1+3) -> ln 4; anchor 2 neutral
    assert float(losses.rpn_class_loss(match, logits)) == pytest.approx(1.5 * math.log(2))


def test_rpn_bbox_loss_uses_packed_rows_of_positives():
    match = tf.constant([[0, 1, -1, 1], [1, 0, 0, 0]], tf.int32)
    pred = tf.zeros([2, 4, 4])
    target = tf.constant([[[0.5, 0, 0, 0], [0, 0, 2, 0], [9, 9, 9, 9]],
                          [[0, -3, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9]]], tf.float32)
    # positives use rows 0-1 of image 0 and row 0 of image 1 (the 9s are padding):
    # smooth-L1: 0.5 -> 0.125, 2 -> 1.5, -3 -> 2.5; mean over 3 x 4 elements
    expected = (0.125 + 1.5 + 2.5) / 12
    assert float(losses.rpn_bbox_loss(target, match, pred)) == pytest.approx(expected)


def test_losses_without_positives_are_zero_not_nan():
    match = tf.zeros([1, 3], tf.int32)
    assert float(losses.rpn_class_loss(match, tf.zeros([1, 3, 2]))) == 0.0
    assert float(losses.rpn_bbox_loss(tf.zeros([1, 2, 4]), match, tf.ones([1, 3, 4]))) == 0.0
    ids = tf.zeros([1, 2], tf.int32)
    assert float(losses.mrcnn_bbox_loss(tf.zeros([1, 2, 4]), ids, tf.ones([1, 2, 2, 4]))) == 0
    assert float(losses.mrcnn_mask_loss(tf.zeros([1, 2, 4, 4]), ids,
                                        tf.fill([1, 2, 4, 4, 2], 0.3))) == 0.0


def test_mrcnn_class_loss_weights_by_active_class_of_prediction():
    targets = tf.constant([[1, 0, 0]], tf.int32)
    logits = tf.constant([[[0.0, 0.0, -100.0],          # predicts a tie 0/1 -> class 0 active
                           [0.0, math.log(3), -100.0],  # predicts class 1 (active)
                           [0.0, 0.0, 100.0]]])         # predicts class 2, inactive -> weight 0
    active = tf.constant([[1.0, 1.0, 0.0]])
    # ROI 0: target 1, p = 1/2 -> ln 2; ROI 1: target 0, p = 1/4 -> ln 4; ROI 2 weight 0
    value = float(losses.mrcnn_class_loss(targets, logits, active))
    assert value == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-5)


def test_mrcnn_bbox_loss_reads_the_target_class_deltas():
    ids = tf.constant([[2, 0]], tf.int32)
    target = tf.constant([[[1.0, 0, 0, 0], [5, 5, 5, 5]]])
    pred = np.zeros([1, 2, 3, 4], np.float32)
    pred[0, 0, 1] = 7.0                     # another class's deltas: must be ignored
    pred[0, 0, 2] = [0.0, 0.0, 0.5, 3.0]    # |d| = 1, 0, 0.5, 3 -> 0.5, 0, 0.125, 2.5
    value = float(losses.mrcnn_bbox_loss(target, ids, tf.constant(pred)))
    assert value == pytest.approx((0.5 + 0 + 0.125 + 2.5) / 4)


def test_mrcnn_mask_loss_binary_cross_entropy_of_target_class():
    ids = tf.constant([[1, 0]], tf.int32)
    target = np.zeros([1, 2, 2, 2], np.float32)
    target[0, 0, 0] = 1.0                               # top row on
    pred = np.full([1, 2, 2, 2, 2], 0.9, np.float32)
    pred[0, 0, ..., 1] = [[0.5, 0.5], [0.25, 0.25]]     # class 1 of the positive ROI
    # top: -ln 0.5 twice; bottom: -ln 0.75 twice; mean over 4 pixels
    expected = (2 * math.log(2) + 2 * -math.log(0.75)) / 4
    value = float(losses.mrcnn_mask_loss(tf.constant(target), ids, tf.constant(pred)))
    assert value == pytest.approx(expected, rel=1e-5)


def test_l2_decay_skips_gamma_and_beta_and_normalises_by_size():
    import keras

    dense = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")
    bn = keras.layers.BatchNormalization()
    inputs = keras.Input((3,))
    keras.Model(inputs, bn(dense(inputs)))
    variables = dense.trainable_weights + bn.trainable_weights
    names = [v.path for v in losses.decayed_weights(variables)]
    assert len(names) == 2 and all("gamma" not in n and "beta" not in n for n in names)
    # kernel: 6 ones -> 1e-4 * 6 / 6; bias zeros -> 0
    assert float(losses.l2_weight_decay(variables, 1e-4)) == pytest.approx(1e-4)
