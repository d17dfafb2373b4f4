"""The training graph: Matterport's training model built from the shared builders, and one step.

Graph logic lives in custom layers (anchors as a constant, GT box normalisation, ROI sampling,
positive-ROI selection); the losses are computed in the step function from the model outputs
(Keras 3 custom train step), with L2 decay over the trainable non-BN-scale weights.

Two deliberate differences from Matterport, neither of which changes a loss value:
* the mask head runs only on the leading ROIs up to the batch's largest positive count
  (DetectionTargetLayer puts positives first, and the mask loss reads positives only);
* the ROI targets are constants (stop_gradient), so no gradient leaks through the targets into
  the RPN deltas.
"""
from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from nucseg.mrcnn import backbone as _backbone
from nucseg.mrcnn.fpn import build_fpn
from nucseg.mrcnn.graph_layer import GraphLayer, dtype_policy
from nucseg.mrcnn.heads import fpn_classifier_head, fpn_mask_head
from nucseg.mrcnn.losses import (LOSS_NAMES, l2_weight_decay, mrcnn_bbox_loss, mrcnn_class_loss,
                                 mrcnn_mask_loss, rpn_bbox_loss, rpn_class_loss)
from nucseg.mrcnn.optim import FusedAdam
from nucseg.mrcnn.proposals import ProposalLayer
from nucseg.mrcnn.rpn import apply_rpn
from nucseg.mrcnn.targets import DetectionTargetLayer

# Matterport's trainable-layer presets (full regex match on layer names).
_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"
LAYER_PRESETS = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": ".*",
    # Mask R-CNN+ stage 1: the input projection, conv1 and the mrcnn heads.
    "preproc+heads": r"(PREPROC.*)|(conv1.*)|(mrcnn\_.*)",
}


class ConstantAnchors(GraphLayer):
    """Normalised anchors for the training image shape, tiled over the batch (no weights)."""

    def __init__(self, anchors, name="anchors", **kwargs):
        super().__init__(name=name, **kwargs)
        self._anchors = np.asarray(anchors, np.float32)

    def call(self, image):
        anchors = tf.constant(self._anchors)
        return tf.tile(anchors[None], [tf.shape(image)[0], 1, 1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self._anchors.shape


class NormGTBoxes(GraphLayer):
    """Pixel GT boxes -> normalised (y1, x1, y2 - 1, x2 - 1) / (H - 1, W - 1, ...)."""

    def __init__(self, image_shape, name="norm_gt_boxes", **kwargs):
        super().__init__(name=name, **kwargs)
        self.image_shape = tuple(int(v) for v in image_shape[:2])

    def call(self, boxes):
        h, w = self.image_shape
        scale = tf.constant([h - 1, w - 1, h - 1, w - 1], tf.float32)
        shift = tf.constant([0, 0, 1, 1], tf.float32)
        return (tf.cast(boxes, tf.float32) - shift) / scale

    def compute_output_shape(self, input_shape):
        return input_shape


class LeadingROIs(GraphLayer):
    """The first n ROIs of every image, n = the largest positive count in the batch (>= 1)."""

    def call(self, inputs):
        rois, target_class_ids = inputs
        n = tf.reduce_max(tf.reduce_sum(tf.cast(target_class_ids > 0, tf.int32), axis=1))
        return rois[:, :tf.maximum(n, 1)]

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], None, 4)


def build_training_model(config, precision: str = "float32") -> keras.Model:
    """Matterport's training graph (without loss layers) as a functional Keras model.

    Inputs, in BATCH_KEYS order of nucseg.data.loader: input_image, input_image_meta,
    input_rpn_match, input_rpn_bbox, input_gt_class_ids, input_gt_boxes (pixels),
    input_gt_masks. Outputs: a dict of the tensors the losses need.

    precision 'mixed_bfloat16' runs the convolutions and dense layers in bfloat16 with float32
    weights; graph logic, the output probabilities and the losses stay float32.
    """
    with dtype_policy(precision):
        return _build_training_model(config)


def _build_training_model(config) -> keras.Model:
    from nucseg.mrcnn.anchors import get_anchors

    h, w, c = (int(v) for v in config.IMAGE_SHAPE)
    input_image = keras.Input(shape=[h, w, c], name="input_image")
    input_image_meta = keras.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")
    input_rpn_match = keras.Input(shape=[None, 1], name="input_rpn_match", dtype="int32")
    input_rpn_bbox = keras.Input(shape=[None, 4], name="input_rpn_bbox")
    input_gt_class_ids = keras.Input(shape=[None], name="input_gt_class_ids", dtype="int32")
    input_gt_boxes = keras.Input(shape=[None, 4], name="input_gt_boxes")
    mask_hw = list(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK else [h, w]
    input_gt_masks = keras.Input(shape=mask_hw + [None], name="input_gt_masks", dtype="bool")

    # module attribute lookup, so a test can substitute a reduced backbone (docs/training.md)
    _, c2, c3, c4, c5 = _backbone.build_resnet_backbone(input_image, config,
                                                        train_bn=config.TRAIN_BN)
    rpn_feature_maps, mrcnn_feature_maps = build_fpn(c2, c3, c4, c5,
                                                     config.TOP_DOWN_PYRAMID_SIZE)
    rpn_class_logits, rpn_class, rpn_bbox = apply_rpn(rpn_feature_maps, config)
    anchors = ConstantAnchors(get_anchors(config, (h, w)))(input_image)
    rpn_rois = ProposalLayer(proposal_count=config.POST_NMS_ROIS_TRAINING,
                             nms_threshold=config.RPN_NMS_THRESHOLD, name="ROI",
                             config=config)([rpn_class, rpn_bbox, anchors])
    gt_boxes = NormGTBoxes((h, w))(input_gt_boxes)
    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(config)(
        [rpn_rois, input_gt_class_ids, gt_boxes, input_gt_masks])
    mrcnn_class_logits, _, mrcnn_bbox = fpn_classifier_head(
        rois, mrcnn_feature_maps, input_image_meta, config, train_bn=config.TRAIN_BN)
    mask_rois = LeadingROIs(name="positive_rois")([rois, target_class_ids])
    mrcnn_mask = fpn_mask_head(mask_rois, mrcnn_feature_maps, input_image_meta, config,
                               train_bn=config.TRAIN_BN)
    inputs = [input_image, input_image_meta, input_rpn_match, input_rpn_bbox,
              input_gt_class_ids, input_gt_boxes, input_gt_masks]
    outputs = {
        "rpn_class_logits": rpn_class_logits, "rpn_bbox": rpn_bbox, "rpn_rois": rpn_rois,
        "rois": rois, "target_class_ids": target_class_ids, "target_bbox": target_bbox,
        "target_mask": target_mask, "mrcnn_class_logits": mrcnn_class_logits,
        "mrcnn_bbox": mrcnn_bbox, "mrcnn_mask": mrcnn_mask,
    }
    return keras.Model(inputs, outputs, name="mask_rcnn")


# ---------------------------------------------------------------------------------------------
# trainable layers
# ---------------------------------------------------------------------------------------------
def layer_regex(layers: str) -> str:
    """A preset name (heads, 3+, 4+, 5+, all, preproc+heads) or a custom regex."""
    regex = LAYER_PRESETS.get(layers, layers)
    try:
        re.compile(regex)
    except re.error as exc:
        raise ValueError(f"invalid layer regex {layers!r}: {exc}") from None
    return regex


def set_trainable(model, layers: str) -> list[str]:
    """Make exactly the weighted layers whose name fully matches the regex trainable.

    The nested rpn_model is entered and its inner names tested (Matterport's rule). BN layers
    stay in inference mode (BatchNorm with TRAIN_BN False) but their gamma/beta train when
    selected. Returns the names of the trainable layers.
    """
    regex = re.compile(layer_regex(layers))
    chosen = []

    def visit(container):
        for layer in container.layers:
            if isinstance(layer, keras.Model):
                layer.trainable = True
                visit(layer)
                continue
            if not layer.weights:
                continue
            layer.trainable = bool(regex.fullmatch(layer.name))
            if layer.trainable:
                chosen.append(layer.name)

    visit(model)
    return chosen


# ---------------------------------------------------------------------------------------------
# losses and the step
# ---------------------------------------------------------------------------------------------
def compute_losses(outputs, batch, config) -> dict:
    """The five weighted losses as scalars, keyed by Matterport's names (in float32, also
    when the model computes in bfloat16)."""
    outputs = {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v
               for k, v in outputs.items()}
    n_mask = tf.shape(outputs["mrcnn_mask"])[1]
    values = {
        "rpn_class_loss": rpn_class_loss(batch["input_rpn_match"], outputs["rpn_class_logits"]),
        "rpn_bbox_loss": rpn_bbox_loss(batch["input_rpn_bbox"], batch["input_rpn_match"],
                                       outputs["rpn_bbox"]),
        "mrcnn_class_loss": mrcnn_class_loss(outputs["target_class_ids"],
                                             outputs["mrcnn_class_logits"],
                                             batch["input_image_meta"][:, 12:]),
        "mrcnn_bbox_loss": mrcnn_bbox_loss(outputs["target_bbox"], outputs["target_class_ids"],
                                           outputs["mrcnn_bbox"]),
        "mrcnn_mask_loss": mrcnn_mask_loss(outputs["target_mask"][:, :n_mask],
                                           outputs["target_class_ids"][:, :n_mask],
                                           outputs["mrcnn_mask"]),
    }
    return {name: values[name] * float(config.LOSS_WEIGHTS.get(name, 1.0))
            for name in LOSS_NAMES}


def make_optimizer(kind: str, learning_rate: float, config):
    """'adam' (Mask R-CNN+: Keras's Adam defaults, no clipping; fused, see optim.py) or 'sgd'
    (Matterport: momentum, clipping by the global norm as Keras 2's clipnorm did)."""
    if kind == "adam":
        return FusedAdam(learning_rate)
    if kind == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate,
                                    momentum=float(config.LEARNING_MOMENTUM),
                                    global_clipnorm=float(config.GRADIENT_CLIP_NORM))
    raise ValueError(f"unknown optimizer {kind!r}; use 'adam' or 'sgd'")


class Trainer:
    """One optimiser over the currently trainable weights, and a compiled step function.

    Make a new Trainer per stage (new optimiser, new trainable set), as Matterport recompiles.
    """

    def __init__(self, model, config, optimizer):
        self.model = model
        self.config = config
        self.optimizer = optimizer
        self.variables = list(model.trainable_weights)
        if not self.variables:
            raise ValueError("no trainable weights: the layer selection matched nothing")
        self.optimizer.build(self.variables)
        self._step = tf.function(self._train_step, jit_compile=False, reduce_retracing=True)

    def _train_step(self, batch):
        with tf.GradientTape() as tape:
            outputs = self.model(batch, training=True)
            losses = compute_losses(outputs, batch, self.config)
            decay = l2_weight_decay(self.variables, float(self.config.WEIGHT_DECAY))
            total = tf.add_n(list(losses.values())) + decay
        grads = tape.gradient(total, self.variables)
        pairs = [(g, v) for g, v in zip(grads, self.variables) if g is not None]
        self.optimizer.apply_gradients(pairs)
        # the mask head's cost grows with this count (see docs/training.md, step time)
        positives = tf.reduce_sum(tf.cast(outputs["target_class_ids"] > 0, tf.float32))
        return {**losses, "l2_loss": decay, "loss": total, "positive_rois": positives}

    def step(self, batch: dict) -> dict:
        """Train on one batch (dict of NumPy arrays); returns the losses (and the count of
        positive training ROIs in the batch, `positive_rois`) as floats."""
        tensors = {k: tf.convert_to_tensor(v) for k, v in batch.items()}
        return {k: float(v) for k, v in self._step(tensors).items()}
