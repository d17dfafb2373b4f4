"""DetectionLayer ("mrcnn_detection"): class scores + box deltas -> final detections.

Per image: argmax class and its probability, class-specific deltas x BBOX_STD_DEV applied to the
ROI, clip to the (normalised) window, drop background and (if DETECTION_MIN_CONFIDENCE is
truthy) scores below it, per-class NMS, top DETECTION_MAX_INSTANCES by score. Rows are
[y1, x1, y2, x2, class_id, score], normalised, zero-padded; the first class_id 0 ends the list.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nucseg.mrcnn.boxes import apply_box_deltas_graph, clip_boxes_graph, norm_boxes_graph
from nucseg.mrcnn.graph_layer import GraphLayer
from nucseg.mrcnn.molding import parse_image_meta_graph


def refine_detections_graph(rois, probs, deltas, window, bbox_std_dev, max_instances,
                            min_confidence, nms_threshold):
    """Detections of one image: [max_instances, 6]. rois [N, 4], probs [N, C], deltas [N, C, 4]."""
    class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
    indices = tf.stack([tf.range(tf.shape(probs)[0]), class_ids], axis=1)
    class_scores = tf.gather_nd(probs, indices)
    deltas_specific = tf.gather_nd(deltas, indices)
    refined = apply_box_deltas_graph(rois, deltas_specific * bbox_std_dev)
    refined = clip_boxes_graph(refined, window)

    keep_mask = class_ids > 0
    if min_confidence:
        keep_mask = tf.logical_and(keep_mask, class_scores >= min_confidence)
    keep = tf.where(keep_mask)[:, 0]  # ascending indices

    pre_class_ids = tf.gather(class_ids, keep)
    pre_scores = tf.gather(class_scores, keep)
    pre_rois = tf.gather(refined, keep)
    unique_ids = tf.unique(pre_class_ids)[0]

    def nms_one_class(class_id):
        ixs = tf.where(tf.equal(pre_class_ids, class_id))[:, 0]
        class_keep = tf.image.non_max_suppression(
            tf.gather(pre_rois, ixs), tf.gather(pre_scores, ixs),
            max_output_size=max_instances, iou_threshold=nms_threshold)
        class_keep = tf.gather(keep, tf.gather(ixs, class_keep))
        gap = max_instances - tf.shape(class_keep)[0]
        class_keep = tf.pad(class_keep, [(0, gap)], constant_values=-1)
        return tf.reshape(class_keep, [max_instances])

    nms_keep = tf.map_fn(nms_one_class, unique_ids,
                         fn_output_signature=tf.TensorSpec([max_instances], tf.int64))
    nms_keep = tf.reshape(nms_keep, [-1])
    nms_keep = tf.gather(nms_keep, tf.where(nms_keep > -1)[:, 0])
    # Survivors in ascending ROI order, as Matterport's set intersection leaves them.
    keep = tf.sort(nms_keep)

    kept_scores = tf.gather(class_scores, keep)
    num_keep = tf.minimum(tf.shape(kept_scores)[0], max_instances)
    top = tf.nn.top_k(kept_scores, k=num_keep, sorted=True).indices
    keep = tf.gather(keep, top)

    detections = tf.concat([
        tf.gather(refined, keep),
        tf.cast(tf.gather(class_ids, keep), tf.float32)[:, None],
        tf.gather(class_scores, keep)[:, None]], axis=1)
    gap = max_instances - tf.shape(detections)[0]
    detections = tf.pad(detections, [(0, gap), (0, 0)])
    return tf.reshape(detections, [max_instances, 6])


@keras.saving.register_keras_serializable(package="nucseg")
class DetectionLayer(GraphLayer):
    """Inputs [rois (B, N, 4), mrcnn_class (B, N, C), mrcnn_bbox (B, N, C, 4), image_meta]
    -> detections (B, DETECTION_MAX_INSTANCES, 6)."""

    def __init__(self, config=None, name="mrcnn_detection", bbox_std_dev=None,
                 max_instances=None, min_confidence=None, nms_threshold=None, **kwargs):
        super().__init__(name=name, **kwargs)
        pick = lambda given, attr: given if given is not None else getattr(config, attr)
        self.bbox_std_dev = [float(v) for v in
                             np.asarray(pick(bbox_std_dev, "BBOX_STD_DEV")).reshape(4)]
        self.max_instances = int(pick(max_instances, "DETECTION_MAX_INSTANCES"))
        self.min_confidence = float(pick(min_confidence, "DETECTION_MIN_CONFIDENCE") or 0.0)
        self.nms_threshold = float(pick(nms_threshold, "DETECTION_NMS_THRESHOLD"))

    def call(self, inputs):
        rois, mrcnn_class, mrcnn_bbox, image_meta = inputs
        meta = parse_image_meta_graph(image_meta)
        image_shape = meta["image_shape"][0]
        windows = norm_boxes_graph(meta["window"], image_shape[:2])
        std = tf.constant(self.bbox_std_dev, tf.float32)

        def one(elems):
            return refine_detections_graph(elems[0], elems[1], elems[2], elems[3], std,
                                           self.max_instances, self.min_confidence,
                                           self.nms_threshold)

        return tf.map_fn(one, (tf.cast(rois, tf.float32), mrcnn_class, mrcnn_bbox, windows),
                         fn_output_signature=tf.TensorSpec([self.max_instances, 6], tf.float32))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_instances, 6)

    def get_config(self):
        base = super().get_config()
        base.update(bbox_std_dev=self.bbox_std_dev, max_instances=self.max_instances,
                    min_confidence=self.min_confidence, nms_threshold=self.nms_threshold)
        return base


@keras.saving.register_keras_serializable(package="nucseg")
class ActiveDetectionBoxes(GraphLayer):
    """Detections (B, D, 6) -> boxes (B, n, 4), n = the largest detection count in the batch
    (at least 1).

    Matterport feeds all D rows, zero padding included, to the mask head, whose cost is
    ~0.5 GMAC per row; cutting the padding makes the cost follow the real detection count.
    Rows are unchanged, so unmold_detections gives the same result.
    """

    def call(self, detections):
        count = tf.reduce_sum(tf.cast(detections[..., 4] > 0, tf.int32), axis=1)
        keep = tf.maximum(tf.reduce_max(count), 1)
        return detections[:, :keep, :4]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, 4)
