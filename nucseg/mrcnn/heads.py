"""Box/class head and mask head, with the ROI axis folded into the batch axis.

Matterport wraps every head layer in TimeDistributed. Keras 3 runs TimeDistributed as one call
per ROI (about 40x slower here) and cannot handle a dynamic ROI count, so the heads reshape
(B, N, h, w, C) -> (B*N, h, w, C), run plain Conv2D/BatchNorm/Dense layers, and reshape back.
The weighted layers keep Matterport's names and shapes (mrcnn_class_conv1, mrcnn_mask_bn2,
mrcnn_mask_deconv, ...), so Matterport weight files load unchanged and the arithmetic is the
same per ROI.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers as KL

from nucseg.mrcnn.backbone import BatchNorm
from nucseg.mrcnn.graph_layer import GraphLayer
from nucseg.mrcnn.roi_align import PyramidROIAlign


@keras.saving.register_keras_serializable(package="nucseg")
class FoldROIs(GraphLayer):
    """(B, N, d1, ..., dk) -> (B*N, d1, ..., dk); the trailing dims must be static."""

    def call(self, inputs):
        return tf.reshape(inputs, [-1] + list(inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None or input_shape[1] is None \
            else input_shape[0] * input_shape[1]
        return (batch,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="nucseg")
class UnfoldROIs(GraphLayer):
    """[(B*N, ...), reference (B, N, ...)] -> (B, N, *target_shape)."""

    def __init__(self, target_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = None if target_shape is None else tuple(target_shape)

    def _target(self, folded_shape):
        return self.target_shape if self.target_shape is not None else tuple(folded_shape[1:])

    def call(self, inputs):
        folded, reference = inputs
        ref_shape = tf.shape(reference)
        target = tf.constant(self._target(folded.shape), dtype=tf.int32)
        return tf.reshape(folded, tf.concat([ref_shape[:2], target], axis=0))

    def compute_output_shape(self, input_shapes):
        folded_shape, reference_shape = input_shapes
        return tuple(reference_shape[:2]) + self._target(folded_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": self.target_shape}


@keras.saving.register_keras_serializable(package="nucseg")
class WindowConv2D(KL.Conv2D):
    """A 'valid' Conv2D whose kernel spans its whole input (output 1 x 1), run as one matrix
    product: the same weights (Matterport's kernel shape) and the same arithmetic per ROI.

    Why: TensorFlow's CPU convolution (oneDNN) runs this shape, 7 x 7 x 256 -> 1024 over the
    600 training ROIs, at about 1 GFLOP/s on an AVX2 CPU (45 of a step's 48 s here), where a
    matrix product runs at over 100 GFLOP/s (bench/train_step_flops.py)."""

    def build(self, input_shape):
        if tuple(input_shape[1:3]) != tuple(self.kernel_size) or self.padding != "valid":
            raise ValueError(f"{self.name}: WindowConv2D needs a 'valid' kernel of the input's "
                             f"size, got kernel {self.kernel_size} for input {input_shape}")
        super().build(input_shape)

    def call(self, inputs):
        depth = self.kernel_size[0] * self.kernel_size[1] * inputs.shape[-1]
        y = tf.matmul(tf.reshape(inputs, [-1, depth]), tf.reshape(self.kernel,
                                                                  [depth, self.filters]))
        if self.use_bias:
            y = y + self.bias
        if self.activation is not None:
            y = self.activation(y)
        return tf.reshape(y, [-1, 1, 1, self.filters])


def fpn_classifier_head(rois, feature_maps, image_meta, config, train_bn=None):
    """ROIs (B, N, 4) normalised -> (class logits (B, N, C), class probs, deltas (B, N, C, 4)).

    The deltas are raw (before BBOX_STD_DEV), as in Matterport.
    """
    if train_bn is None:
        train_bn = config.TRAIN_BN
    pool = config.POOL_SIZE
    num_classes = config.NUM_CLASSES
    width = config.FPN_CLASSIF_FC_LAYERS_SIZE
    pooled = PyramidROIAlign([pool, pool], name="roi_align_classifier")(
        [rois, image_meta] + list(feature_maps))
    x = FoldROIs(name="mrcnn_class_fold")(pooled)
    x = WindowConv2D(width, pool, padding="valid", name="mrcnn_class_conv1")(x)
    x = BatchNorm(train_bn, name="mrcnn_class_bn1")(x)
    x = KL.Activation("relu")(x)
    x = WindowConv2D(width, 1, padding="valid", name="mrcnn_class_conv2")(x)
    x = BatchNorm(train_bn, name="mrcnn_class_bn2")(x)
    x = KL.Activation("relu")(x)
    shared = KL.Reshape((width,), name="pool_squeeze")(x)
    logits = KL.Dense(num_classes, name="mrcnn_class_logits")(shared)
    logits = UnfoldROIs((num_classes,), name="mrcnn_class_logits_rois")([logits, pooled])
    probs = KL.Activation("softmax", name="mrcnn_class")(logits)
    deltas = KL.Dense(num_classes * 4, activation="linear", name="mrcnn_bbox_fc")(shared)
    deltas = UnfoldROIs((num_classes, 4), name="mrcnn_bbox")([deltas, pooled])
    return logits, probs, deltas


def fpn_mask_head(rois, feature_maps, image_meta, config, train_bn=None):
    """ROIs (B, N, 4) normalised -> sigmoid masks (B, N, 2*MASK_POOL_SIZE, same, C)."""
    if train_bn is None:
        train_bn = config.TRAIN_BN
    pool = config.MASK_POOL_SIZE
    pooled = PyramidROIAlign([pool, pool], name="roi_align_mask")(
        [rois, image_meta] + list(feature_maps))
    x = FoldROIs(name="mrcnn_mask_fold")(pooled)
    for i in range(1, 5):
        x = KL.Conv2D(256, 3, padding="same", name=f"mrcnn_mask_conv{i}")(x)
        x = BatchNorm(train_bn, name=f"mrcnn_mask_bn{i}")(x)
        x = KL.Activation("relu")(x)
    x = KL.Conv2DTranspose(256, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")(x)
    # float32 under any policy: the mask loss takes logs of these probabilities
    x = KL.Conv2D(config.NUM_CLASSES, 1, strides=1, activation="sigmoid", name="mrcnn_mask",
                  dtype="float32")(x)
    return UnfoldROIs(name="mrcnn_mask_rois")([x, pooled])
