"""Molding (resize, pad, mean, image meta) and unmolding (boxes, masks, label maps)."""
import time
import types

import numpy as np
import pytest
from skimage.transform import resize as sk_resize

from nucseg.mrcnn.boxes import extract_bboxes
from nucseg.mrcnn.molding import (compose_image_meta, expand_mask, full_masks, masks_to_labels,
                                  minimize_mask, mold_image, mold_inputs, parse_image_meta,
                                  resize_image, resize_mask, resize_soft_mask,
                                  unmold_detections, unmold_detections_matterport)


def config(**overrides):
    values = dict(IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=1024, IMAGE_MIN_SCALE=0,
                  IMAGE_RESIZE_MODE="pad64", NUM_CLASSES=2, MEAN_PIXEL=[123.7, 116.8, 103.9],
                  DETECTION_MASK_THRESHOLD=0.5)
    values.update(overrides)
    return types.SimpleNamespace(**values)


# ---------------------------------------------------------------------------------------------
# resize_image / resize_mask
# ---------------------------------------------------------------------------------------------


def test_resize_none_keeps_the_image():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out, window, scale, padding, crop = resize_image(image, 256, 1024, 0, mode="none")
    assert out is image or np.array_equal(out, image)
    assert window == (0, 0, 5, 7) and scale == 1 and crop is None
    assert padding == [(0, 0), (0, 0), (0, 0)]


def test_resize_square_upscales_short_side_and_pads_centred():
    image = np.full((300, 200, 3), 200, np.uint8)
    out, window, scale, padding, crop = resize_image(image, 256, 512, 0, mode="square")
    assert scale == pytest.approx(1.28) and out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert padding == [(64, 64), (128, 128), (0, 0)] and window == (64, 128, 448, 384)
    assert (out[64:448, 128:384] == 200).all() and out[:64].sum() == 0 and out[:, :128].sum() == 0


def test_resize_square_caps_long_side_at_max_dim():
    image = np.ones((100, 400, 3), np.uint8)
    out, window, scale, padding, _ = resize_image(image, 200, 512, 0, mode="square")
    assert scale == pytest.approx(512 / 400) and out.shape == (512, 512, 3)
    assert window == (192, 0, 320, 512) and padding[0] == (192, 192)


def test_resize_scale_matches_skimage_and_truncates_to_dtype():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)
    out, window, scale, _, _ = resize_image(image, 64, None, 2, mode="pad64")
    assert scale == 2 and out.shape == (128, 128, 3) and window == (4, 14, 124, 114)
    expected = sk_resize(image, (120, 100), order=1, mode="constant", preserve_range=True,
                         anti_aliasing=False).astype(np.uint8)
    np.testing.assert_array_equal(out[4:124, 14:114], expected)


def test_resize_pad64_odd_split_as_golden(golden):
    out, window, scale, padding, crop = resize_image(golden["image"], 256, 1024, 0, mode="pad64")
    assert out.shape == (320, 448, 3) and scale == 1 and crop is None
    assert padding == [(1, 2), (3, 4), (0, 0)]
    assert window == tuple(golden["window"])
    assert resize_image(np.zeros((128, 192, 3)), 256, None, 0, "pad64")[3][:2] == [(0, 0)] * 2


def test_resize_crop_is_seeded_and_takes_min_dim_square():
    image = np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    first = resize_image(image, 128, 128, 0, mode="crop", rng=np.random.default_rng(5))
    again = resize_image(image, 128, 128, 0, mode="crop", rng=np.random.default_rng(5))
    out, window, scale, padding, crop = first
    assert crop == again[4] and out.shape == (128, 128, 3) and window == (0, 0, 128, 128)
    y, x, h, w = crop
    assert 0 <= y <= 300 - 128 and 0 <= x <= 260 - 128 and (h, w) == (128, 128)
    np.testing.assert_array_equal(out, image[y:y + 128, x:x + 128])
    mask = np.zeros((300, 260, 2), bool)
    mask[y + 5, x + 7, 1] = True
    cropped = resize_mask(mask, scale, padding, crop)
    assert cropped.shape == (128, 128, 2) and cropped[5, 7, 1] and cropped.sum() == 1


def test_resize_mask_follows_image_geometry():
    image = np.zeros((50, 70, 3), np.uint8)
    image[10:20, 30:40] = 255
    mask = (image[..., :1] > 0)
    out, window, scale, padding, crop = resize_image(image, 128, None, 0, mode="pad64")
    resized = resize_mask(mask, scale, padding, crop)
    assert resized.shape == out.shape[:2] + (1,) and resized.dtype == bool
    bright = out[..., 0] > 128
    assert (resized[..., 0] == bright).mean() > 0.99


def test_resize_rejects_bad_settings():
    with pytest.raises(ValueError, match="pad64"):
        resize_image(np.zeros((10, 10, 3)), 100, None, 0, mode="pad64")
    with pytest.raises(ValueError, match="IMAGE_RESIZE_MODE"):
        resize_image(np.zeros((10, 10, 3)), 64, 64, 0, mode="stretch")


# ---------------------------------------------------------------------------------------------
# molding and meta
# ---------------------------------------------------------------------------------------------


def test_mold_inputs_equal_golden(golden):
    molded, metas, windows = mold_inputs([golden["image"]], config())
    assert molded.dtype == np.float32
    np.testing.assert_array_equal(molded, golden["molded_image"])  # float64 mean, then float32
    np.testing.assert_array_equal(metas, golden["image_meta"])
    np.testing.assert_array_equal(windows[0], golden["window"])


def test_mold_inputs_rejects_mismatches():
    with pytest.raises(ValueError, match="MEAN_PIXEL"):
        mold_image(np.zeros((64, 64, 5), np.uint8), config())
    with pytest.raises(ValueError, match="one shape"):
        mold_inputs([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 128, 3), np.uint8)],
                    config(IMAGE_MIN_DIM=64))


def test_image_meta_round_trip():
    meta = compose_image_meta(7, (317, 441, 5), (320, 448, 5), (1, 3, 318, 444), 1.5,
                              [1, 1, 0])
    assert meta.shape == (12 + 3,)
    parsed = parse_image_meta(meta[None])
    assert parsed["image_id"].tolist() == [7]
    assert parsed["original_image_shape"].tolist() == [[317, 441, 5]]
    assert parsed["image_shape"].tolist() == [[320, 448, 5]]
    assert parsed["window"].tolist() == [[1, 3, 318, 444]]
    assert parsed["scale"].tolist() == [1.5] and parsed["active_class_ids"].tolist() == [[1, 1, 0]]


# ---------------------------------------------------------------------------------------------
# mini masks
# ---------------------------------------------------------------------------------------------


def test_minimize_and_expand_mask_round_trip():
    yy, xx = np.mgrid[:120, :100]
    mask = np.stack([((yy - 40) / 25) ** 2 + ((xx - 30) / 12) ** 2 <= 1,
                     ((yy - 90) / 8) ** 2 + ((xx - 70) / 20) ** 2 <= 1], axis=-1)
    boxes = extract_bboxes(mask)
    assert boxes.tolist()[0] == [15, 18, 66, 43]
    mini = minimize_mask(boxes, mask, (56, 56))
    assert mini.shape == (56, 56, 2) and mini.dtype == bool
    back = expand_mask(boxes, mini, mask.shape)
    for i in range(2):
        iou = (back[..., i] & mask[..., i]).sum() / (back[..., i] | mask[..., i]).sum()
        assert iou > 0.9
    with pytest.raises(ValueError, match="area"):
        minimize_mask(np.array([[5, 5, 5, 9]]), mask[..., :1], (56, 56))


# ---------------------------------------------------------------------------------------------
# unmolding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 40), (28, 28), (27, 29), (100, 63), (300, 2)])
def test_soft_mask_resize_equals_skimage(shape):
    mask = np.random.default_rng(sum(shape)).uniform(0, 1, (28, 28)).astype(np.float32)
    expected = sk_resize(mask, shape, order=1, mode="constant", cval=0, clip=True,
                         preserve_range=False, anti_aliasing=False)
    ours = resize_soft_mask(mask, *shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["a", "b"])
def test_unmold_detections_match_golden_detect(golden, golden_b, case):
    data = golden if case == "a" else golden_b
    result = unmold_detections(data["detections"][0], data["mrcnn_mask"][0],
                               golden["image"].shape, (320, 448, 3), golden["window"], config())
    np.testing.assert_array_equal(result["rois"], data["detect_rois"])
    np.testing.assert_array_equal(result["class_ids"], data["detect_class_ids"])
    np.testing.assert_allclose(result["scores"], data["detect_scores"], atol=1e-5)
    n = len(data["detect_class_ids"])
    assert len(result["masks"]) == n and result["rois"].dtype == np.int32
    for mask, (y1, x1, y2, x2) in zip(result["masks"], result["rois"]):
        assert mask.shape == (y2 - y1, x2 - x1) and mask.dtype == np.float32
    binary = full_masks(result["rois"], result["masks"], golden["image"].shape)
    wrong = (binary != data["detect_masks"]).sum(axis=(0, 1))
    box_area = np.prod(result["rois"][:, 2:] - result["rois"][:, :2], axis=1)
    assert (wrong <= 0.005 * box_area).all()
    assert result["labels"].dtype == np.uint16
    assert (result["labels"] == data["detect_label_map"]).mean() > 0.995
    matterport = unmold_detections_matterport(data["detections"][0], data["mrcnn_mask"][0],
                                              golden["image"].shape, (320, 448, 3),
                                              golden["window"])
    np.testing.assert_array_equal(matterport[0], data["detect_rois"])
    assert matterport[3].shape == data["detect_masks"].shape and matterport[3].dtype == bool


def test_labels_resolve_overlaps_by_score_in_any_order():
    rois = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [8, 8, 30, 30]])
    masks = [np.ones((10, 10), np.float32), np.ones((10, 10), np.float32),
             np.full((22, 22), 0.4, np.float32)]
    labels = masks_to_labels(rois, masks, np.array([0.6, 0.9, 0.99]), (20, 20), 0.5)
    assert labels[7, 7] == 2 and labels[2, 2] == 1 and labels[12, 12] == 2
    assert labels[19, 19] == 0  # the third mask is below threshold (and its box leaves the image)
    ties = masks_to_labels(rois[:2], masks[:2], np.array([0.5, 0.5]), (20, 20))
    assert ties[7, 7] == 1  # equal scores: the earlier detection wins
    assert masks_to_labels(rois[:0], [], np.array([]), (4, 5)).shape == (4, 5)
    with pytest.raises(ValueError, match="shape"):
        masks_to_labels(rois[:1], [np.ones((9, 10), np.float32)], np.ones(1), (20, 20))


def test_unmold_without_detections_gives_empty_results():
    result = unmold_detections(np.zeros((10, 6), np.float32), np.zeros((10, 28, 28, 2)),
                               (100, 120, 3), (128, 128, 3), (14, 4, 114, 124), config())
    assert result["rois"].shape == (0, 4) and result["masks"] == []
    assert result["labels"].shape == (100, 120) and not result["labels"].any()


def test_labels_switch_to_uint32_beyond_65535_instances():
    n = 65536
    ys, xs = np.divmod(np.arange(n), 300)
    rois = np.stack([ys, xs, ys + 1, xs + 1], axis=1)
    masks = [np.ones((1, 1), np.float32)] * n
    labels = masks_to_labels(rois, masks, np.ones(n), (300, 300))
    assert labels.dtype == np.uint32 and labels.max() == n


def test_unmolding_700_detections_on_a_1000px_tile_is_fast():
    rng = np.random.default_rng(0)
    n = 700
    centres = rng.uniform(0.05, 0.95, (n, 2))
    half = rng.uniform(4, 20, (n, 1)) / 1023
    detections = np.zeros((n + 5, 6), np.float32)
    detections[:n, :2] = centres - half
    detections[:n, 2:4] = centres + half
    detections[:n, 4] = 1
    detections[:n, 5] = np.sort(rng.uniform(0.5, 1, n))[::-1]
    masks = rng.uniform(0, 1, (n + 5, 28, 28, 2)).astype(np.float32)
    start = time.perf_counter()
    result = unmold_detections(detections, masks, (1000, 1000, 3), (1024, 1024, 3),
                               (12, 12, 1012, 1012), config())
    elapsed = time.perf_counter() - start
    assert len(result["rois"]) == n and result["labels"].shape == (1000, 1000)
    assert elapsed < 1.0, f"unmolding took {elapsed:.2f} s"
