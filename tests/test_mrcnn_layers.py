"""Graph layers of the Mask R-CNN core against the Matterport golden fixture.

Each layer is fed the golden input of its stage (README of tests/fixtures/matterport_golden)
and must reproduce the golden output within the README's tolerances.
"""
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from nucseg.mrcnn import boxes as B
from nucseg.mrcnn.anchors import (compute_backbone_shapes, generate_pyramid_anchors,
                                  get_anchors)
from nucseg.mrcnn.detection import ActiveDetectionBoxes, DetectionLayer
from nucseg.mrcnn.proposals import ProposalLayer
from nucseg.mrcnn.roi_align import PyramidROIAlign, roi_levels


def golden_config(**overrides):
    """The golden fixture's config (only the attributes these layers read)."""
    values = dict(
        BACKBONE="resnet101", RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128),
        RPN_ANCHOR_RATIOS=[0.5, 1, 2], BACKBONE_STRIDES=[4, 8, 16, 32, 64],
        RPN_ANCHOR_STRIDE=1, RPN_BBOX_STD_DEV=np.array([0.1, 0.1, 0.2, 0.2]),
        BBOX_STD_DEV=np.array([0.1, 0.1, 0.2, 0.2]), PRE_NMS_LIMIT=6000,
        POST_NMS_ROIS_INFERENCE=1000, RPN_NMS_THRESHOLD=0.7, DETECTION_MAX_INSTANCES=400,
        DETECTION_MIN_CONFIDENCE=0, DETECTION_NMS_THRESHOLD=0.3)
    values.update(overrides)
    return types.SimpleNamespace(**values)


def feature_samples(golden):
    """P2..P5 restricted to channels 0, 64, 128, 192 (what the ROIAlign samples hold)."""
    return [golden[f"P{i}_ch16"][..., ::4] for i in range(2, 6)]


def match_rows(expected, actual, tol):
    """Pair rows of two arrays one-to-one by L-inf distance; return actual's index per row."""
    dist = np.abs(expected[:, None, :] - actual[None, :, :]).max(axis=-1)
    pairs = dist.argmin(axis=1)
    assert len(np.unique(pairs)) == len(pairs), "rows do not match one-to-one"
    assert dist[np.arange(len(pairs)), pairs].max() <= tol
    return pairs


# ---------------------------------------------------------------------------------------------
# anchors and box utilities
# ---------------------------------------------------------------------------------------------


def test_anchors_equal_golden(golden):
    config = golden_config()
    anchors = get_anchors(config, (320, 448, 3))
    assert anchors.dtype == np.float32 and anchors.shape == (35805, 4)
    np.testing.assert_allclose(anchors, golden["anchors"][0], rtol=0, atol=1e-6)
    assert not isinstance(anchors, keras.Variable)
    assert get_anchors(config, (320, 448, 3)) is anchors  # cached per shape
    assert not anchors.flags.writeable
    assert get_anchors(config, (320, 512, 3)).shape[0] != anchors.shape[0]


def test_backbone_shapes_round_up_and_anchor_order():
    config = golden_config()
    shapes = compute_backbone_shapes(config, (100, 130))
    assert shapes.tolist() == [[25, 33], [13, 17], [7, 9], [4, 5], [2, 3]]
    anchors = generate_pyramid_anchors([8, 16], [0.5, 1, 2], [[2, 3], [1, 1]], [4, 8], 1)
    assert anchors.shape == (3 * 6 + 3, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # order: level -> y -> x -> ratio; centres at multiples of the stride
    assert centres[:18:3].tolist() == [[0, 0], [0, 4], [0, 8], [4, 0], [4, 4], [4, 8]]
    sizes = anchors[:3, 2:] - anchors[:3, :2]
    np.testing.assert_allclose(sizes[:, 0] * sizes[:, 1], 64.0)  # area = scale^2
    np.testing.assert_allclose(sizes[:, 1] / sizes[:, 0], [0.5, 1, 2])  # width / height


def test_box_utils_numpy_and_graph_agree():
    rng = np.random.default_rng(1)
    y1x1 = rng.uniform(0, 0.8, (50, 2)).astype(np.float32)
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(0.01, 0.2, (50, 2))], axis=1)
    boxes = boxes.astype(np.float32)
    deltas = rng.normal(0, 0.3, (50, 4)).astype(np.float32)
    refined = B.apply_box_deltas(boxes, deltas)
    np.testing.assert_allclose(B.apply_box_deltas_graph(boxes, deltas).numpy(), refined,
                               atol=1e-6)
    # refinement is the inverse of applying deltas
    np.testing.assert_allclose(B.box_refinement(boxes, refined), deltas, atol=1e-4)
    np.testing.assert_allclose(B.box_refinement_graph(boxes, refined).numpy(), deltas, atol=1e-4)
    np.testing.assert_allclose(B.overlaps_graph(boxes, refined).numpy(),
                               B.compute_overlaps(boxes, refined), atol=1e-5)
    clipped = B.clip_boxes_graph(refined, np.array([0.1, 0.2, 0.9, 0.8], np.float32)).numpy()
    assert clipped[:, [0, 2]].min() >= 0.1 and clipped[:, [0, 2]].max() <= 0.9
    assert clipped[:, [1, 3]].min() >= 0.2 and clipped[:, [1, 3]].max() <= 0.8
    pixels = np.array([[1, 3, 318, 444], [0, 0, 320, 448]])
    normed = B.norm_boxes(pixels, (320, 448))
    np.testing.assert_array_equal(normed[1], [0, 0, 1, 1])
    np.testing.assert_array_equal(B.denorm_boxes(normed, (320, 448)), pixels)
    np.testing.assert_allclose(B.norm_boxes_graph(pixels.astype(np.float32),
                                                  np.array([320.0, 448.0])).numpy(), normed)
    np.testing.assert_array_equal(
        B.denorm_boxes_graph(normed, np.array([320.0, 448.0])).numpy(), pixels)


def test_compute_overlaps_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [3, 3, 3, 3]])
    np.testing.assert_allclose(B.compute_overlaps(a, b)[0], [1.0, 25 / 175, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# proposals
# ---------------------------------------------------------------------------------------------


def test_proposals_match_golden_as_a_set(golden):
    config = golden_config()
    layer = ProposalLayer(config.POST_NMS_ROIS_INFERENCE, config.RPN_NMS_THRESHOLD, config)
    assert layer.name == "ROI"
    rois = layer([golden["rpn_class"], golden["rpn_bbox"], golden["anchors"]]).numpy()
    assert rois.shape == (1, 1000, 4)
    match_rows(golden["rpn_rois"][0], rois[0], 1e-5)


def test_proposals_work_per_image_and_pad_with_zeros(golden):
    config = golden_config(PRE_NMS_LIMIT=300)
    layer = ProposalLayer(200, 0.3, config)
    rpn_class = golden["rpn_class"]
    flipped = rpn_class[:, ::-1, :]  # a second image with other scores
    batch = layer([np.concatenate([rpn_class, flipped]),
                   np.concatenate([golden["rpn_bbox"]] * 2),
                   np.concatenate([golden["anchors"]] * 2)]).numpy()
    single = layer([flipped, golden["rpn_bbox"], golden["anchors"]]).numpy()
    np.testing.assert_allclose(batch[1], single[0], atol=1e-6)
    assert not np.allclose(batch[0], batch[1])
    # strict NMS on 300 candidates keeps fewer than 200: the rest is zero padding
    nonzero = np.any(batch[0] != 0, axis=1)
    assert 0 < nonzero.sum() < 200 and not nonzero[nonzero.sum():].any()


# ---------------------------------------------------------------------------------------------
# ROIAlign
# ---------------------------------------------------------------------------------------------


def test_roi_align_classifier_matches_golden(golden):
    layer = PyramidROIAlign((7, 7), name="roi_align_classifier")
    rois = golden["rpn_rois"]
    pooled = layer([rois, golden["image_meta"]] + feature_samples(golden)).numpy()
    assert pooled.shape == (1, 1000, 7, 7, 4)
    border = (rois[0, :, 2] == 1.0) | (rois[0, :, 3] == 1.0)  # README's exemption
    assert border.sum() < 200
    np.testing.assert_allclose(pooled[0][~border], golden["roi_align_classifier_ch64"][0][~border],
                               rtol=0, atol=5e-4)
    levels = roi_levels(rois[0], golden["image_meta"][0, 4:6]).numpy()
    assert np.bincount(levels, minlength=6)[2:].tolist() == [874, 95, 31, 0]


@pytest.mark.parametrize("case", ["a", "b"])
def test_roi_align_mask_matches_golden_including_padded_rows(golden, golden_b, case):
    data = golden if case == "a" else golden_b
    layer = PyramidROIAlign((14, 14), name="roi_align_mask")
    boxes = data["detections"][..., :4]
    pooled = layer([boxes, golden["image_meta"]] + feature_samples(golden)).numpy()
    np.testing.assert_allclose(pooled, data["roi_align_mask_ch64"], rtol=0, atol=5e-4)


def test_roi_levels_round_half_to_even_and_zero_area_to_p2():
    # level = 4 + round(log2(sqrt(h * w) * sqrt(H * W) / 224)); square boxes of side ~ 2^-0.5
    # give -0.5 on a 224 x 224 image and +0.5 on a 448 x 448 one. Search a few ulps for sides
    # whose float32 argument is exactly the half.
    sides = np.float32(2 ** -0.5) + np.arange(-300, 300, dtype=np.float32) * np.float32(6e-8)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    found = {}
    for target, image_side in ((-0.5, 224.0), (0.5, 448.0)):
        y1, x1, y2, x2 = tf.split(tf.constant(boxes), 4, axis=-1)
        raw = (tf.math.log(tf.sqrt((y2 - y1) * (x2 - x1))
                           / (224.0 / tf.sqrt(image_side * image_side)))
               / tf.math.log(2.0)).numpy()[:, 0]
        # (TF's vectorised log can differ by an ulp with the tensor shape: keep the shape)
        levels = roi_levels(tf.constant(boxes), tf.constant([image_side] * 2)).numpy()
        assert (raw == target).any(), f"no float32 box gives exactly {target}"
        found[target] = levels[raw == target]
    assert (found[-0.5] == 4).all()  # half away from zero would give 3
    assert (found[0.5] == 4).all()  # ... and 5
    boxes = np.array([[0, 0, 0, 0], [0.3, 0.3, 0.3, 0.9], [0, 0, 0.01, 0.01], [0, 0, 1, 1]],
                     np.float32)  # zero area, zero area, tiny (clipped to 2), whole image
    assert roi_levels(tf.constant(boxes), tf.constant([224.0, 224.0])).numpy().tolist() == [
        2, 2, 2, 4]
    assert roi_levels(tf.constant(boxes), tf.constant([896.0, 896.0])).numpy().tolist() == [
        2, 2, 2, 5]


def test_roi_align_keeps_box_order_across_images_and_levels():
    rng = np.random.default_rng(3)
    maps = [rng.normal(size=(2, 64 // 2 ** i, 64 // 2 ** i, 3)).astype(np.float32)
            for i in range(4)]
    small = [0.1, 0.1, 0.2, 0.2]
    large = [0.0, 0.0, 0.9, 0.95]
    boxes = np.array([[large, small, [0, 0, 0, 0]], [small, [0.2, 0.3, 0.6, 0.7], large]],
                     np.float32)
    meta = np.zeros((2, 14), np.float32)
    meta[:, 4:7] = [256, 256, 3]
    pooled = PyramidROIAlign((5, 5))([boxes, meta] + maps).numpy()
    levels = roi_levels(tf.constant(boxes), tf.constant([256.0, 256.0])).numpy()
    assert len(np.unique(levels)) >= 3
    for b in range(2):
        for n in range(3):
            want = tf.image.crop_and_resize(maps[levels[b, n] - 2], boxes[b, n][None], [b],
                                            (5, 5)).numpy()[0]
            np.testing.assert_allclose(pooled[b, n], want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# detections
# ---------------------------------------------------------------------------------------------


def assert_detections_match(actual, expected):
    """Same count and classes; corners and scores within 1e-5, rows paired by corners."""
    count = int((expected[:, 4] > 0).sum())
    assert int((actual[:, 4] > 0).sum()) == count
    pairs = match_rows(expected[:count, :4], actual[:count, :4], 1e-5)
    np.testing.assert_array_equal(actual[pairs, 4], expected[:count, 4])
    np.testing.assert_allclose(actual[pairs, 5], expected[:count, 5], atol=1e-5)
    assert not actual[count:].any()  # zero padding


@pytest.mark.parametrize("case", ["a", "b"])
def test_detections_match_golden(golden, golden_b, case):
    data = golden if case == "a" else golden_b
    layer = DetectionLayer(golden_config())
    assert layer.name == "mrcnn_detection"
    detections = layer([golden["rpn_rois"], data["mrcnn_class"], data["mrcnn_bbox"],
                        golden["image_meta"]]).numpy()
    assert detections.shape == (1, 400, 6)
    assert_detections_match(detections[0], data["detections"][0])


def test_detection_min_confidence_semantics(golden):
    inputs = [golden["rpn_rois"], golden["mrcnn_class"], golden["mrcnn_bbox"],
              golden["image_meta"]]
    scores = golden["mrcnn_class"][0, :, 1]
    cut = float(np.sort(scores[scores > 0.5])[-60])  # an existing score: kept (>=)
    high = DetectionLayer(golden_config(DETECTION_MIN_CONFIDENCE=cut))(inputs).numpy()[0]
    kept = high[high[:, 4] > 0]
    assert 0 < len(kept) <= 60 and kept[:, 5].min() >= cut
    assert np.isclose(kept[:, 5], cut).any()
    # 0 switches the filter off entirely (golden case A relies on it)
    off = DetectionLayer(golden_config(DETECTION_MIN_CONFIDENCE=0))(inputs).numpy()[0]
    assert (off[:, 4] > 0).sum() == 400 and off[:, 5].min() < cut


def test_detection_nms_is_per_class_and_empty_input_gives_zeros():
    rois = np.array([[[0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.3, 0.31], [0.1, 0.1, 0.3, 0.3],
                      [0.6, 0.6, 0.8, 0.8]]], np.float32)
    probs = np.array([[[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7],
                       [0.9, 0.1, 0.0]]], np.float32)
    deltas = np.zeros((1, 4, 3, 4), np.float32)
    meta = np.zeros((1, 15), np.float32)
    meta[0, 4:11] = [101, 101, 3, 0, 0, 101, 101]
    layer = DetectionLayer(golden_config(DETECTION_MAX_INSTANCES=5))
    det = layer([rois, probs, deltas, meta]).numpy()[0]
    # box 1 overlaps box 0 of the same class and is suppressed; box 2 (class 2) survives;
    # box 3 is background
    assert det[:2, 4].tolist() == [1, 2]
    np.testing.assert_allclose(det[:2, 5], [0.9, 0.7])
    np.testing.assert_allclose(det[:2, :4], rois[0, [0, 2]], atol=1e-6)
    assert not det[2:].any()
    background = np.zeros_like(probs)
    background[..., 0] = 1
    assert not layer([rois, background, deltas, meta]).numpy().any()


def test_active_detection_boxes_cut_only_the_padding(golden, golden_b):
    layer = ActiveDetectionBoxes()
    only_b = layer(golden_b["detections"]).numpy()
    np.testing.assert_array_equal(only_b, golden_b["detections"][:, :25, :4])
    both = layer(np.concatenate([golden_b["detections"], golden["detections"]])).numpy()
    assert both.shape == (2, 400, 4)
    assert layer(np.zeros((2, 10, 6), np.float32)).shape == (2, 1, 4)


def test_layers_in_a_compiled_keras_graph_with_batch_of_two(golden, golden_b):
    config = golden_config()
    rpn_class, rpn_bbox = keras.Input((None, 2)), keras.Input((None, 4))
    anchors, meta = keras.Input((None, 4)), keras.Input((14,))
    mrcnn_class, mrcnn_bbox = keras.Input((None, 2)), keras.Input((None, 2, 4))
    maps = [keras.Input((None, None, 4)) for _ in range(4)]
    head_rois = keras.Input((None, 4))  # the golden proposals the head outputs belong to
    rois = ProposalLayer(1000, 0.7, config)([rpn_class, rpn_bbox, anchors])
    pooled = PyramidROIAlign((7, 7), name="roi_align_classifier")([rois, meta] + maps)
    detections = DetectionLayer(config)([head_rois, mrcnn_class, mrcnn_bbox, meta])
    assert tuple(rois.shape) == (None, 1000, 4) and tuple(detections.shape) == (None, 400, 6)
    model = keras.Model([rpn_class, rpn_bbox, anchors, meta, head_rois, mrcnn_class, mrcnn_bbox]
                        + maps, [rois, pooled, detections])
    run = tf.function(model, jit_compile=False)
    both = lambda key, other=None: np.concatenate([golden[key], (other or golden)[key]])
    out_rois, out_pooled, out_det = run(
        [both("rpn_class"), both("rpn_bbox"), both("anchors"), both("image_meta"),
         both("rpn_rois"), both("mrcnn_class", golden_b), both("mrcnn_bbox", golden_b)]
        + [np.concatenate([m, m]) for m in feature_samples(golden)])
    border = (golden["rpn_rois"][0, :, 2] == 1.0) | (golden["rpn_rois"][0, :, 3] == 1.0)
    for b in range(2):
        pairs = match_rows(golden["rpn_rois"][0], out_rois.numpy()[b], 1e-5)
        np.testing.assert_allclose(out_pooled.numpy()[b][pairs][~border],
                                   golden["roi_align_classifier_ch64"][0][~border], atol=5e-4)
    # image 0 gets case A's head outputs, image 1 case B's: each its own detections
    assert_detections_match(out_det.numpy()[0], golden["detections"][0])
    assert_detections_match(out_det.numpy()[1], golden_b["detections"][0])
