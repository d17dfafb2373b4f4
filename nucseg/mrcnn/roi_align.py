"""PyramidROIAlign: pool each box from the FPN level that matches its size.

Level = clip(4 + round(log2(sqrt(h * w) / (224 / sqrt(H * W)))), 2, 5) with tf.round (half to
even), H, W the molded shape of image 0 from image_meta; area-0 boxes (zero padding) go to P2.
Sampling is tf.image.crop_and_resize (bilinear, one sample per bin, 0 outside the map).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from nucseg.mrcnn.graph_layer import GraphLayer
from nucseg.mrcnn.molding import parse_image_meta_graph


def log2_graph(x):
    """log2 as Matterport computes it (ln x / ln 2, float32)."""
    return tf.math.log(x) / tf.math.log(2.0)


def roi_levels(boxes, image_shape):
    """Pyramid level (int32, 2..5) of normalised boxes [..., 4] for a molded (H, W)."""
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=-1)
    h = y2 - y1
    w = x2 - x1
    image_area = tf.cast(image_shape[0] * image_shape[1], tf.float32)
    level = log2_graph(tf.sqrt(h * w) / (224.0 / tf.sqrt(image_area)))
    zero_area = tf.equal(h * w, 0.0)
    level = tf.where(zero_area, tf.zeros_like(level), tf.round(level))
    level = tf.minimum(5, tf.maximum(2, 4 + tf.cast(level, tf.int32)))
    level = tf.where(zero_area, 2 * tf.ones_like(level), level)
    return tf.squeeze(level, axis=-1)


@keras.saving.register_keras_serializable(package="nucseg")
class PyramidROIAlign(GraphLayer):
    """Inputs [boxes (B, N, 4), image_meta (B, M), P2, P3, P4, P5] -> (B, N, ph, pw, C).

    Boxes of all images are pooled level by level (one crop_and_resize per level) and put back
    in (image, box) order with an inverse permutation.
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)

    def call(self, inputs):
        boxes = tf.cast(inputs[0], tf.float32)
        image_meta = inputs[1]
        feature_maps = inputs[2:]
        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
        levels = roi_levels(boxes, image_shape)  # [B, N]

        batch = tf.shape(boxes)[0]
        count = tf.shape(boxes)[1]
        flat_boxes = tf.reshape(boxes, [-1, 4])
        flat_levels = tf.reshape(levels, [-1])
        flat_image = tf.reshape(tf.tile(tf.range(batch)[:, None], [1, count]), [-1])

        pooled, order = [], []
        for i, level in enumerate(range(2, 6)):
            ix = tf.where(tf.equal(flat_levels, level))[:, 0]
            level_boxes = tf.stop_gradient(tf.gather(flat_boxes, ix))
            box_indices = tf.stop_gradient(tf.gather(flat_image, ix))
            order.append(tf.cast(ix, tf.int32))
            pooled.append(tf.image.crop_and_resize(feature_maps[i], level_boxes, box_indices,
                                                   self.pool_shape, method="bilinear"))
        pooled = tf.concat(pooled, axis=0)
        order = tf.concat(order, axis=0)
        pooled = tf.gather(pooled, tf.math.invert_permutation(order))
        shape = tf.concat([tf.shape(boxes)[:2], tf.shape(pooled)[1:]], axis=0)
        return tf.reshape(pooled, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:2]) + self.pool_shape + (input_shape[2][-1],)

    def get_config(self):
        base = super().get_config()
        base.update(pool_shape=self.pool_shape)
        return base
