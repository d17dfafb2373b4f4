"""The Region Proposal Network: one shared sub-model `rpn_model`, applied to P2..P6."""
from __future__ import annotations

import keras
from keras import layers as KL

RPN_OUTPUT_NAMES = ("rpn_class_logits", "rpn_class", "rpn_bbox")


def build_rpn_model(anchor_stride: int, anchors_per_location: int, depth: int) -> keras.Model:
    """Feature map [B, H, W, depth] -> [logits (B, H*W*A, 2), probs, deltas (B, H*W*A, 4)].

    The outputs are ordered (y, x, anchor), the order of the pyramid anchors. Inner layer
    names (rpn_conv_shared, rpn_class_raw, rpn_bbox_pred) are Matterport's, so the nested
    model's weights match the `rpn_model` group of a Matterport file.
    """
    feature_map = keras.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    shared = KL.Conv2D(512, 3, padding="same", activation="relu", strides=anchor_stride,
                       name="rpn_conv_shared")(feature_map)
    x = KL.Conv2D(2 * anchors_per_location, 1, padding="valid", activation="linear",
                  name="rpn_class_raw")(shared)
    logits = KL.Reshape((-1, 2))(x)
    probs = KL.Activation("softmax", name="rpn_class_xxx", dtype="float32")(logits)
    x = KL.Conv2D(4 * anchors_per_location, 1, padding="valid", activation="linear",
                  name="rpn_bbox_pred")(shared)
    deltas = KL.Reshape((-1, 4))(x)
    return keras.Model([feature_map], [logits, probs, deltas], name="rpn_model")


def apply_rpn(rpn_feature_maps, config):
    """Run the shared rpn_model on every level and concatenate in level order P2..P6."""
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE)
    per_level = [rpn([p]) for p in rpn_feature_maps]
    return [KL.Concatenate(axis=1, name=name)([outputs[i] for outputs in per_level])
            for i, name in enumerate(RPN_OUTPUT_NAMES)]
