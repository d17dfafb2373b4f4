"""Faithfulness: nucseg reproduces the Matterport Mask R-CNN's golden outputs.

tests/fixtures/matterport_golden/README.md defines every weight by a formula of its
Matterport weight name, an input crop, and what the Matterport code computed at every stage.
Here the golden config is built, every weight is set BY MATTERPORT NAME, the graph runs once
per case, and each stage is compared with the README's tolerances and matching rules (proposals
matched as a set, head rows through that matching, detections paired by corners and class,
border ROIs exempt from the per-row check, masks per instance within 0.5 % of the box).
"""
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "matterport_golden"

GAINS = {"conv1": 0.02, "fpn_p3": -1.5, "fpn_p4": 2.5, "fpn_p5": 4.0, "rpn_bbox_pred": 2.0,
         "mrcnn_class_logits": -1.0, "mrcnn_mask": 10.0}


def kernel_gain(layer, case):
    if layer == "mrcnn_class_logits" and case == "B":
        return 1.0
    if layer.startswith("res") and layer.endswith("_branch2c"):
        return 0.2
    return GAINS.get(layer, 1.0)


def golden_value(name, shape, case="A"):
    """The README's weight formula, keyed by the Matterport weight name."""
    z = np.random.default_rng(zlib.crc32(name.encode("utf-8"))).standard_normal(shape)
    layer = name.split("/")[0]
    kind = name.split("/")[-1].split(":")[0]
    if kind == "kernel":
        if len(shape) == 2:
            fan_in = shape[0]
        elif layer == "mrcnn_mask_deconv":  # Conv2DTranspose kernel (kh, kw, out, in)
            fan_in = shape[0] * shape[1] * shape[3]
        else:
            fan_in = shape[0] * shape[1] * shape[2]
        return (z * (kernel_gain(layer, case) / math.sqrt(fan_in))).astype(np.float32)
    scale, offset = {"bias": (0.01, 0.0), "gamma": (0.1, 1.0), "beta": (0.1, 0.0),
                     "moving_mean": (0.1, 0.0)}.get(kind, (None, None))
    if kind == "moving_variance":
        return (1.0 + 0.1 * np.abs(z)).astype(np.float32)
    if scale is None:
        raise ValueError(f"no golden formula for weight {name}")
    return (offset + scale * z).astype(np.float32)


def golden_config():
    from nucseg.mrcnn import Config

    return Config(NAME="golden", GPU_COUNT=1, IMAGES_PER_GPU=1, NUM_CLASSES=2,
                  BACKBONE="resnet101", IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=256,
                  IMAGE_MAX_DIM=1024, IMAGE_MIN_SCALE=0, RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128),
                  RPN_NMS_THRESHOLD=0.7, PRE_NMS_LIMIT=6000, POST_NMS_ROIS_INFERENCE=1000,
                  DETECTION_MAX_INSTANCES=400, DETECTION_MIN_CONFIDENCE=0,
                  DETECTION_NMS_THRESHOLD=0.3, TRAIN_BN=False, IMAGE_CHANNEL_COUNT=3)


# Stage tensors to probe (MaskRCNN.tensors keys, or layer names for the ROIAlign outputs).
PROBES = ("C1", "C2", "C3", "C4", "C5", "P2", "P3", "P4", "P5", "P6", "rpn_class_logits",
          "rpn_class", "rpn_bbox", "rpn_rois", "roi_align_classifier", "mrcnn_class_logits",
          "mrcnn_class", "mrcnn_bbox", "detections", "roi_align_mask", "mrcnn_mask")


def set_golden_weights(model, case, only=None):
    """Assign every weight (or those of layer `only`) by its Matterport name; returns sums."""
    from nucseg.mrcnn.weights import weight_entries

    sums = {}
    for _, entries in weight_entries(model.keras_model):
        for name, variable in entries:
            if only is not None and name.split("/")[0] != only:
                continue
            value = golden_value(name, tuple(int(d) for d in variable.shape), case)
            variable.assign(value)
            sums[name] = float(value.astype(np.float64).sum())
    return sums


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "golden.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def golden_b(golden):
    b = dict(np.load(GOLDEN / "golden_b.npz", allow_pickle=False))
    return {**golden, **b}


@pytest.fixture(scope="module")
def model():
    from nucseg.mrcnn import MaskRCNN

    return MaskRCNN(golden_config())


def run_case(model, golden):
    """One detect() call that also returns every probed stage (one graph run per case)."""
    from nucseg.mrcnn.anchors import get_anchors

    result = model.detect([golden["image"]], stages=PROBES)[0]
    stages = {name: value[None] for name, value in result.pop("stages").items()}
    anchors = get_anchors(model.config, stages["molded_image"].shape[1:3])[None]
    return dict(stages=stages, anchors=anchors, detect=result)


@pytest.fixture(scope="module")
def case_a(model, golden):
    sums = set_golden_weights(model, "A")
    return {**run_case(model, golden), "sums": sums}


@pytest.fixture(scope="module")
def case_b(model, golden_b, case_a):  # runs after A: B differs in one kernel's sign only
    changed = set_golden_weights(model, "B", only="mrcnn_class_logits")
    assert set(changed) == {"mrcnn_class_logits/kernel:0", "mrcnn_class_logits/bias:0"}
    return run_case(model, golden_b)


# ------------------------------------------------------------------------------- matching
def match_proposals(reference, ours, tol=1e-5):
    """One-to-one match of golden proposals to ours by L-inf distance; returns our indices."""
    distance = np.abs(reference[:, None, :] - ours[None, :, :]).max(axis=-1)
    index = distance.argmin(axis=1)
    worst = distance[np.arange(len(reference)), index].max()
    assert worst <= tol, f"a golden proposal has no match within {tol} (worst {worst:.3g})"
    assert len(np.unique(index)) == len(reference), "proposals do not match one-to-one"
    return index


def count_detections(detections):
    zero = np.where(detections[:, 4] == 0)[0]
    return int(zero[0]) if len(zero) else len(detections)


def match_detections(reference, ours, tol=1e-5):
    """Pair golden detections with ours by class and corners (zero-area boxes have no IoU)."""
    n = count_detections(reference)
    assert count_detections(ours) == n, "different number of detections"
    index = np.empty(n, dtype=int)
    for i in range(n):
        same_class = np.where(ours[:n, 4] == reference[i, 4])[0]
        distance = np.abs(ours[same_class, :4] - reference[i, :4]).max(axis=1)
        assert len(same_class) and distance.min() <= tol, \
            f"golden detection {i} {reference[i]} has no partner within {tol}"
        index[i] = same_class[distance.argmin()]
    assert len(np.unique(index)) == n
    np.testing.assert_allclose(ours[index, 5], reference[:n, 5], atol=1e-5, rtol=0)
    return index


# ------------------------------------------------------------------------------- case A
def test_weights_follow_the_formula_by_matterport_name(case_a):
    lines = [line.rstrip("\n").split("\t")
             for line in (GOLDEN / "weight_checksums.tsv").read_text().splitlines()
             if line and not line.startswith(("#", "layer\t"))]
    assert len(lines) == 690 and len(case_a["sums"]) == 690
    for layer, name, *_rest in lines:
        expected = float(_rest[3])
        assert math.isclose(case_a["sums"][name], expected, rel_tol=1e-9, abs_tol=1e-12), name


def test_molding_and_anchors(case_a, golden):
    stages = case_a["stages"]
    np.testing.assert_array_equal(stages["molded_image"].astype(np.float32),
                                  golden["molded_image"])
    np.testing.assert_array_equal(stages["image_meta"], golden["image_meta"])
    np.testing.assert_array_equal(stages["window"][0], golden["window"])
    np.testing.assert_allclose(case_a["anchors"], golden["anchors"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, key, step", [
    ("C1", "C1_ch8", 8), ("C2", "C2_ch16", 16), ("C3", "C3_ch32", 32), ("C4", "C4_ch64", 64),
    ("C5", "C5_ch128", 128), ("P2", "P2_ch16", 16), ("P3", "P3_ch16", 16),
    ("P4", "P4_ch16", 16), ("P5", "P5_ch16", 16), ("P6", "P6_ch16", 16)])
def test_backbone_and_fpn(case_a, golden, name, key, step):
    ours = case_a["stages"][name][..., ::step]
    assert ours.shape == golden[key].shape
    np.testing.assert_allclose(ours, golden[key], atol=1e-4, rtol=0)


def test_rpn(case_a, golden):
    stages = case_a["stages"]
    np.testing.assert_allclose(stages["rpn_class_logits"], golden["rpn_class_logits"],
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(stages["rpn_class"], golden["rpn_class"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(stages["rpn_bbox"], golden["rpn_bbox"], atol=2e-4, rtol=0)


def test_proposals_and_classifier_head(case_a, golden):
    stages = case_a["stages"]
    reference = golden["rpn_rois"][0]
    index = match_proposals(reference, stages["rpn_rois"][0])
    interior = (reference[:, 2] != 1.0) & (reference[:, 3] != 1.0)  # README: border exemption
    assert interior.sum() > 800
    for key, atol in (("mrcnn_class_logits", 1e-4), ("mrcnn_class", 1e-4),
                      ("mrcnn_bbox", 1e-4)):
        np.testing.assert_allclose(stages[key][0][index][interior], golden[key][0][interior],
                                   atol=atol, rtol=0, err_msg=key)
    pooled = stages["roi_align_classifier"][0][..., ::64][index]
    np.testing.assert_allclose(pooled[interior], golden["roi_align_classifier_ch64"][0][interior],
                               atol=5e-4, rtol=0)


def check_detections_and_masks(case, golden):
    stages = case["stages"]
    reference = golden["detections"][0]
    ours = stages["detections"][0]
    index = match_detections(reference, ours)
    n = len(index)
    rows = np.concatenate([index, np.arange(n, len(reference))])  # padded rows pair by position
    np.testing.assert_allclose(stages["mrcnn_mask"][0][rows], golden["mrcnn_mask"][0],
                               atol=1e-4, rtol=0)
    # The mask head pools the real detections plus one padding row (all padding rows are the
    # same zero box); the padded model output above covers every row.
    pooled = stages["roi_align_mask"][0][..., ::64]
    assert len(pooled) == min(n + 1, len(reference))
    pooled_rows = np.minimum(rows, len(pooled) - 1)
    np.testing.assert_allclose(pooled[pooled_rows], golden["roi_align_mask_ch64"][0],
                               atol=5e-4, rtol=0)
    return n


def check_detect(case, golden):
    result = case["detect"]
    np.testing.assert_array_equal(result["rois"], golden["detect_rois"])
    np.testing.assert_array_equal(result["class_ids"], golden["detect_class_ids"])
    np.testing.assert_allclose(result["scores"], golden["detect_scores"], atol=1e-5, rtol=0)
    assert len(result["masks"]) == len(golden["detect_rois"])
    for i, ((y1, x1, y2, x2), soft) in enumerate(zip(result["rois"], result["masks"])):
        assert soft.shape == (y2 - y1, x2 - x1)
        expected = golden["detect_masks"][y1:y2, x1:x2, i]
        differ = np.count_nonzero((soft >= 0.5) != expected)
        assert differ <= 0.005 * soft.size, f"mask {i}: {differ} of {soft.size} pixels differ"
    labels = result["labels"]
    assert labels.shape == golden["detect_label_map"].shape
    assert np.mean(labels == golden["detect_label_map"]) > 0.999


def test_detections_and_mask_head(case_a, golden):
    assert check_detections_and_masks(case_a, golden) == 400


def test_detect_results(case_a, golden):
    check_detect(case_a, golden)
    assert len(case_a["detect"]["rois"]) == 400


# ------------------------------------------------------------------------------- case B
def test_case_b_head_detections_and_masks(case_b, golden_b):
    stages = case_b["stages"]
    index = match_proposals(golden_b["rpn_rois"][0], stages["rpn_rois"][0])
    interior = (golden_b["rpn_rois"][0][:, 2:] != 1.0).all(axis=1)
    for key in ("mrcnn_class_logits", "mrcnn_class", "mrcnn_bbox"):
        np.testing.assert_allclose(stages[key][0][index][interior], golden_b[key][0][interior],
                                   atol=1e-4, rtol=0, err_msg=key)
    assert check_detections_and_masks(case_b, golden_b) == 25


def test_case_b_detect_results(case_b, golden_b):
    check_detect(case_b, golden_b)
