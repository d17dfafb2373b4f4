"""MaskRCNN: wires the components into Matterport's inference graph; detect, load, save.

The graph is Matterport's (same layer names, weight names and shapes, same outputs
[detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois, rpn_class, rpn_bbox]) except that
the heads fold the ROI axis into the batch axis instead of using TimeDistributed. Inference
runs as one tf.function per molded input shape with jit_compile=False (XLA has no
CropAndResize kernel).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from nucseg.mrcnn.anchors import get_anchors
from nucseg.mrcnn.backbone import build_resnet_backbone
from nucseg.mrcnn.config import Config
from nucseg.mrcnn.detection import DetectionLayer
from nucseg.mrcnn.fpn import build_fpn
from nucseg.mrcnn.graph_layer import GraphLayer
from nucseg.mrcnn.heads import fpn_classifier_head, fpn_mask_head
from nucseg.mrcnn.proposals import ProposalLayer
from nucseg.mrcnn.rpn import apply_rpn

OUTPUT_NAMES = ("detections", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask", "rpn_rois",
                "rpn_class", "rpn_bbox")


@keras.saving.register_keras_serializable(package="nucseg")
class DetectionBoxes(GraphLayer):
    """Detection rows -> the boxes the mask head needs: every real detection of the batch
    plus one zero (padding) row.

    Matterport runs the mask head on all DETECTION_MAX_INSTANCES rows, padding included
    (~0.5 GMAC per row); every padding row is the same (0, 0, 0, 0) box, so one of them is
    enough (see PadMaskRows). The cost then grows with the number of detections.
    """

    def call(self, detections):
        counts = tf.reduce_sum(tf.cast(detections[..., 4] > 0, tf.int32), axis=1)
        rows = tf.minimum(tf.reduce_max(counts) + 1, tf.shape(detections)[1])
        return detections[:, :rows, :4]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, 4)


@keras.saving.register_keras_serializable(package="nucseg")
class PadMaskRows(GraphLayer):
    """[masks (B, m, h, w, C), detections (B, D, 6)] -> (B, D, h, w, C), Matterport's shape:
    rows m..D-1 repeat row m-1, the mask of a padding box, which is what the mask head gives
    every padding row."""

    def call(self, inputs):
        masks, detections = inputs
        missing = tf.shape(detections)[1] - tf.shape(masks)[1]
        return tf.concat([masks, tf.repeat(masks[:, -1:], missing, axis=1)], axis=1)

    def compute_output_shape(self, input_shapes):
        mask_shape, detection_shape = input_shapes
        return (mask_shape[0], detection_shape[1]) + tuple(mask_shape[2:])


def build_inference_graph(config: Config) -> tuple[list, dict]:
    """Matterport's inference graph: ([input tensors], {stage name: Keras tensor}).

    The named tensors (C1..C5, P2..P6, rpn_class_logits, rpn_rois, roi_align_classifier,
    mrcnn_class_logits, detections, roi_align_mask, mrcnn_mask, ...) let tests and benchmarks
    build sub-models that share the layers and weights.
    """
    input_image = keras.Input(shape=[None, None, config.IMAGE_CHANNEL_COUNT], name="input_image")
    input_image_meta = keras.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")
    input_anchors = keras.Input(shape=[None, 4], name="input_anchors")
    t = {}
    t["C1"], t["C2"], t["C3"], t["C4"], t["C5"] = build_resnet_backbone(
        input_image, config, train_bn=config.TRAIN_BN)
    rpn_feature_maps, mrcnn_feature_maps = build_fpn(t["C2"], t["C3"], t["C4"], t["C5"],
                                                     config.TOP_DOWN_PYRAMID_SIZE)
    t.update(zip(("P2", "P3", "P4", "P5", "P6"), rpn_feature_maps))
    t["rpn_class_logits"], t["rpn_class"], t["rpn_bbox"] = apply_rpn(rpn_feature_maps, config)
    t["rpn_rois"] = ProposalLayer(proposal_count=config.POST_NMS_ROIS_INFERENCE,
                                  nms_threshold=config.RPN_NMS_THRESHOLD, name="ROI",
                                  config=config)([t["rpn_class"], t["rpn_bbox"], input_anchors])
    t["mrcnn_class_logits"], t["mrcnn_class"], t["mrcnn_bbox"] = fpn_classifier_head(
        t["rpn_rois"], mrcnn_feature_maps, input_image_meta, config, train_bn=config.TRAIN_BN)
    t["detections"] = DetectionLayer(config, name="mrcnn_detection")(
        [t["rpn_rois"], t["mrcnn_class"], t["mrcnn_bbox"], input_image_meta])
    detection_boxes = DetectionBoxes(name="detection_boxes")(t["detections"])
    masks = fpn_mask_head(detection_boxes, mrcnn_feature_maps, input_image_meta, config,
                          train_bn=config.TRAIN_BN)
    t["mrcnn_mask"] = PadMaskRows(name="mrcnn_mask_padded")([masks, t["detections"]])
    return [input_image, input_image_meta, input_anchors], t


def build_inference_model(config: Config) -> keras.Model:
    """Matterport's inference model 'mask_rcnn' with its seven outputs (OUTPUT_NAMES)."""
    inputs, tensors = build_inference_graph(config)
    return keras.Model(inputs, [tensors[name] for name in OUTPUT_NAMES], name="mask_rcnn")


class MaskRCNN:
    """Matterport-shaped API: MaskRCNN(config).detect(images) -> list of dicts."""

    def __init__(self, config: Config, mode: str = "inference", model_dir=None,
                 precision: str = "float32"):
        """mode "inference" (detect) or "training" (the training graph of
        nucseg.mrcnn.training as `.keras_model`, for weights and parameter counts; training
        itself runs through nucseg.mrcnn.training.Trainer). `precision` "mixed_bfloat16"
        runs the inference convolutions and dense layers in bfloat16 (weights stay float32;
        faster on GPUs and CPUs with bfloat16 instructions)."""
        if mode not in ("inference", "training"):
            raise ValueError(f"mode must be 'inference' or 'training', got {mode!r}")
        if not isinstance(config, Config):
            raise ValueError(f"config must be a nucseg.mrcnn.Config, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.mode = mode
        self.model_dir = model_dir
        self._runners: dict = {}
        if mode == "training":
            from nucseg.mrcnn.training import build_training_model

            self.tensors = {}
            self.keras_model = build_training_model(config)
            return
        from nucseg.mrcnn.graph_layer import dtype_policy

        self.precision = precision
        with dtype_policy(precision):
            inputs, self.tensors = build_inference_graph(config)
        self.keras_model = keras.Model(inputs, [self.tensors[name] for name in OUTPUT_NAMES],
                                       name="mask_rcnn")

    # --------------------------------------------------------------------------- weights
    def load_weights(self, filepath, by_name: bool = True, exclude=(), skip_mismatch=False):
        """Load a Matterport/Keras 2 HDF5 file by layer name; returns a LoadReport."""
        from nucseg.mrcnn.weights import load_weights

        return load_weights(self.keras_model, filepath, by_name=by_name,
                            exclude=tuple(exclude or ()), skip_mismatch=skip_mismatch)

    def save_weights(self, filepath):
        """Write the weights in Matterport's HDF5 layout (readable by Matterport code)."""
        from nucseg.mrcnn.weights import save_weights

        return save_weights(self.keras_model, filepath)

    def weighted_layers(self) -> list[tuple[str, list[tuple[str, tuple]]]]:
        """[(layer name, [(Matterport weight name, shape)])] for layers with weights, in
        Matterport's file order."""
        from nucseg.mrcnn.weights import model_weight_shapes

        return [(layer, weights) for layer, weights in model_weight_shapes(self.keras_model)
                if weights]

    def count_params(self) -> int:
        return int(self.keras_model.count_params())

    def count_trainable_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.keras_model.trainable_weights))

    def set_detection_options(self, min_confidence=None, nms_threshold=None,
                              mask_threshold=None) -> None:
        """Change DETECTION_MIN_CONFIDENCE / DETECTION_NMS_THRESHOLD /
        DETECTION_MASK_THRESHOLD without rebuilding the model (graphs re-trace on next use)."""
        changes = {key: float(value) for key, value in (
            ("DETECTION_MIN_CONFIDENCE", min_confidence),
            ("DETECTION_NMS_THRESHOLD", nms_threshold),
            ("DETECTION_MASK_THRESHOLD", mask_threshold)) if value is not None}
        if not changes:
            return
        self.config = self.config.copy(**changes)
        layer = self.keras_model.get_layer("mrcnn_detection")
        layer.min_confidence = float(self.config.DETECTION_MIN_CONFIDENCE or 0.0)
        layer.nms_threshold = float(self.config.DETECTION_NMS_THRESHOLD)
        self._runners.clear()

    # --------------------------------------------------------------------------- inference
    def _require_inference(self, what: str) -> None:
        if self.mode != "inference":
            raise ValueError(f"{what}() needs a model built with mode='inference' "
                             f"(this one is mode={self.mode!r})")

    def submodel(self, names) -> keras.Model:
        """A model from the same inputs to the named stage tensors (shares all weights).

        Names are keys of `self.tensors` (C1..C5, P2..P6, rpn_*, mrcnn_*, detections) or
        layer names (then that layer's output, e.g. roi_align_classifier, res4w_out).
        """
        outputs = [self.tensors[n] if n in self.tensors else self.keras_model.get_layer(n).output
                   for n in names]
        return keras.Model(self.keras_model.inputs, outputs)

    def _runner(self, shape, stages=()):
        """One compiled graph per molded input shape (and set of extra stage outputs)."""
        key = (tuple(int(s) for s in shape), tuple(stages))
        runner = self._runners.get(key)
        if runner is None:
            model = self.keras_model if not stages else \
                self.submodel(tuple(OUTPUT_NAMES) + tuple(stages))

            @tf.function(jit_compile=False, reduce_retracing=False)
            def runner(images, metas, anchors):
                return model([images, metas, anchors], training=False)

            self._runners[key] = runner
        return runner

    def run_graph(self, molded_images, image_metas, anchors=None, stages=()) -> dict:
        """Model outputs (NumPy, by OUTPUT_NAMES and `stages` names) for molded inputs.

        Anchors default to the cached ones for the molded shape.
        """
        self._require_inference("run_graph")
        molded_images = np.asarray(molded_images, dtype=np.float32)
        image_metas = np.asarray(image_metas, dtype=np.float32)
        if anchors is None:
            anchors = get_anchors(self.config, molded_images.shape[1:3])
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim == 2:
            anchors = np.broadcast_to(anchors, (molded_images.shape[0],) + anchors.shape)
        stages = tuple(s for s in stages if s not in OUTPUT_NAMES)
        outputs = self._runner(molded_images.shape, stages)(
            tf.constant(molded_images), tf.constant(image_metas), tf.constant(anchors))
        return {name: (tf.cast(out, tf.float32) if out.dtype == tf.bfloat16 else out).numpy()
                for name, out in zip(tuple(OUTPUT_NAMES) + stages, outputs)}

    def detect(self, images, verbose: int = 0, stages=()) -> list[dict]:
        """Detect instances in a list of images (H, W, IMAGE_CHANNEL_COUNT).

        Returns one dict per image: rois (N, 4) int32 [y1, x1, y2, x2] in original pixels,
        class_ids (N,), scores (N,), masks (N soft masks cropped to their boxes) and labels
        (H, W) instance map. Unlike Matterport, any number of images is accepted: they run in
        groups of BATCH_SIZE (the last group padded by repeating its last image).
        `stages` (names as in `submodel`) adds a "stages" dict of those tensors per image,
        plus the molded input, image meta and window, for debugging. With
        IMAGE_NORMALIZATION "per_image" each image is standardised per channel (the training
        loader's `normalize` option) instead of having MEAN_PIXEL subtracted.
        """
        from nucseg.mrcnn.molding import mold_inputs, unmold_detections

        self._require_inference("detect")
        images = list(images)
        if not images:
            return []
        for i, image in enumerate(images):
            if np.ndim(image) != 3 or np.shape(image)[2] != self.config.IMAGE_CHANNEL_COUNT:
                raise ValueError(f"image {i} has shape {np.shape(image)}; expected (H, W, "
                                 f"{self.config.IMAGE_CHANNEL_COUNT}) for "
                                 f"IMAGE_CHANNEL_COUNT={self.config.IMAGE_CHANNEL_COUNT}")
        mold_config = self.config
        if self.config.IMAGE_NORMALIZATION == "per_image":
            from nucseg.data.loader import standardize

            mold_config = self.config.copy(
                MEAN_PIXEL=[0.0] * self.config.IMAGE_CHANNEL_COUNT)
        batch = self.config.BATCH_SIZE
        results = []
        for start in range(0, len(images), batch):
            group = images[start:start + batch]
            padded = group + [group[-1]] * (batch - len(group))
            if mold_config is not self.config:
                padded = [standardize(image) for image in padded]
            molded, metas, windows = mold_inputs(padded, mold_config)
            if verbose:
                print(f"detect: images {start}..{start + len(group) - 1}, molded "
                      f"{molded.shape}")
            outputs = self.run_graph(molded, metas, stages=stages)
            for i, image in enumerate(group):
                result = unmold_detections(
                    outputs["detections"][i], outputs["mrcnn_mask"][i], image.shape,
                    molded[i].shape, windows[i], self.config)
                if stages:
                    result["stages"] = {name: outputs[name][i] for name in stages}
                    result["stages"].update(molded_image=molded[i], image_meta=metas[i],
                                            window=windows[i])
                results.append(result)
        return results

    def __repr__(self) -> str:
        return f"MaskRCNN({self.config!r}, params={self.count_params():,})"


# ------------------------------------------------------------------------------- summary
def model_summary(config: Config) -> dict:
    """Parameter counts and weighted layers of the inference model of `config` (no image is
    processed; building the graph takes a few seconds)."""
    model = MaskRCNN(config)
    total = model.count_params()
    trainable = model.count_trainable_params()
    layers = [{"name": name,
               "weights": [{"name": w, "shape": list(shape)} for w, shape in weights],
               "params": int(sum(np.prod(shape) for _, shape in weights))}
              for name, weights in model.weighted_layers()]
    return {"backbone": config.BACKBONE, "num_classes": int(config.NUM_CLASSES),
            "channels": int(config.IMAGE_CHANNEL_COUNT),
            "preproc": config.IMAGE_CHANNEL_COUNT != 3,
            "total_params": total, "trainable_params": trainable,
            "non_trainable_params": total - trainable,
            "weighted_layers": len(layers), "weights": sum(len(l["weights"]) for l in layers),
            "layers": layers}


def format_summary(summary: dict) -> str:
    """The summary as text: one line per weighted layer, then the totals."""
    lines = [f"Mask R-CNN inference model: {summary['backbone']}, "
             f"{summary['num_classes']} classes, {summary['channels']} input channels"
             + (" (PREPROC 1x1 conv to 3)" if summary["preproc"] else "")]
    width = max(len(layer["name"]) for layer in summary["layers"])
    for layer in summary["layers"]:
        shapes = ", ".join("x".join(str(d) for d in w["shape"]) for w in layer["weights"])
        lines.append(f"  {layer['name']:<{width}}  {layer['params']:>11,}  {shapes}")
    lines.append(f"weighted layers: {summary['weighted_layers']}, weights: {summary['weights']}")
    lines.append(f"total params: {summary['total_params']:,}  trainable: "
                 f"{summary['trainable_params']:,}  non-trainable: "
                 f"{summary['non_trainable_params']:,}")
    return "\n".join(lines)
