"""ProposalLayer ("ROI"): RPN scores and deltas + anchors -> NMS'd normalised proposals."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nucseg.mrcnn.boxes import apply_box_deltas_graph, clip_boxes_graph
from nucseg.mrcnn.graph_layer import GraphLayer


def propose_one_image(scores, deltas, anchors, proposal_count, nms_threshold, pre_nms_limit):
    """Proposals of one image: [proposal_count, 4], zero-padded.

    scores [A] (foreground probability), deltas [A, 4] already multiplied by the std-dev,
    anchors [A, 4] normalised. Top-k by score, refine, clip to [0, 1], NMS, pad.
    """
    k = tf.minimum(pre_nms_limit, tf.shape(anchors)[0])
    top = tf.nn.top_k(scores, k, sorted=True, name="top_anchors").indices
    scores = tf.gather(scores, top)
    deltas = tf.gather(deltas, top)
    anchors = tf.gather(anchors, top)
    boxes = apply_box_deltas_graph(anchors, deltas)
    boxes = clip_boxes_graph(boxes, tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32))
    keep = tf.image.non_max_suppression(boxes, scores, proposal_count, nms_threshold,
                                        name="rpn_non_max_suppression")
    proposals = tf.gather(boxes, keep)
    padding = tf.maximum(proposal_count - tf.shape(proposals)[0], 0)
    proposals = tf.pad(proposals, [(0, padding), (0, 0)])
    return tf.reshape(proposals, [proposal_count, 4])


@keras.saving.register_keras_serializable(package="nucseg")
class ProposalLayer(GraphLayer):
    """Inputs [rpn_class (B, A, 2), rpn_bbox (B, A, 4), anchors (B, A, 4)] -> (B, count, 4).

    Works per image with tf.map_fn (no Python loop over the batch). Deltas arrive *before*
    scaling by RPN_BBOX_STD_DEV, as the RPN outputs them.
    """

    def __init__(self, proposal_count, nms_threshold, config=None, name="ROI",
                 rpn_bbox_std_dev=None, pre_nms_limit=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        if rpn_bbox_std_dev is None:
            rpn_bbox_std_dev = config.RPN_BBOX_STD_DEV
        if pre_nms_limit is None:
            pre_nms_limit = config.PRE_NMS_LIMIT
        self.rpn_bbox_std_dev = [float(v) for v in np.asarray(rpn_bbox_std_dev).reshape(4)]
        self.pre_nms_limit = int(pre_nms_limit)

    def call(self, inputs):
        rpn_class, rpn_bbox, anchors = inputs
        scores = rpn_class[:, :, 1]
        deltas = rpn_bbox * tf.reshape(tf.constant(self.rpn_bbox_std_dev, tf.float32), [1, 1, 4])
        anchors = tf.cast(anchors, tf.float32)

        def one(elems):
            return propose_one_image(elems[0], elems[1], elems[2], self.proposal_count,
                                     self.nms_threshold, self.pre_nms_limit)

        return tf.map_fn(one, (scores, deltas, anchors),
                         fn_output_signature=tf.TensorSpec([self.proposal_count, 4], tf.float32))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        base = super().get_config()
        base.update(proposal_count=self.proposal_count, nms_threshold=self.nms_threshold,
                    rpn_bbox_std_dev=self.rpn_bbox_std_dev, pre_nms_limit=self.pre_nms_limit)
        return base
