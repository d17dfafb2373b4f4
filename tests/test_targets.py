"""RPN targets and DetectionTargetLayer on hand-made boxes with hand-computed answers."""
import math

import numpy as np

from nucseg.mrcnn.targets import build_rpn_targets, detection_targets_graph


def test_rpn_targets_labels_and_deltas():
    anchors = np.array([[1, 0, 11, 10],      # IoU 90/110 = 0.82 with GT -> positive
                        [0, 5, 10, 15],      # IoU 50/150 = 0.33 -> neutral
                        [50, 50, 60, 60],    # IoU 0 -> negative
                        [0, 0, 10, 40]],     # IoU 100/400 = 0.25 -> negative
                       float)
    gt = np.array([[0, 0, 10, 10]])
    match, bbox = build_rpn_targets(anchors, np.array([1]), gt, anchors_per_image=8,
                                    rng=np.random.default_rng(0))
    assert match.tolist() == [1, 0, -1, -1]
    assert bbox.shape == (8, 4)
    # anchor centre y 6, GT centre y 5, h 10: dy = -0.1, divided by std 0.1
    np.testing.assert_allclose(bbox[0], [-1.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert not bbox[1:].any()


def test_rpn_targets_every_tied_best_anchor_is_positive():
    anchors = np.array([[0, 0, 10, 20], [0, -10, 10, 10], [0, 0, 20, 20]], float)
    # IoUs with GT: 0.5, 0.5, 0.25 -> the two tied best are positive although < 0.7
    match, bbox = build_rpn_targets(anchors, np.array([1]), np.array([[0, 0, 10, 10]]),
                                    anchors_per_image=8)
    assert match.tolist() == [1, 1, -1]
    # positives packed in ascending anchor order: anchor 0 is wider (dx 0.5/... check dw)
    np.testing.assert_allclose(bbox[0], [0, -0.25 / 0.1, 0, math.log(0.5) / 0.2], atol=1e-6)
    np.testing.assert_allclose(bbox[1], [0, 0.25 / 0.1, 0, math.log(0.5) / 0.2], atol=1e-6)


def test_rpn_targets_crowd_blocks_negatives_and_is_not_a_target():
    anchors = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [52, 52, 58, 58], [80, 80, 90, 90]],
                       float)
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60]])
    match, _ = build_rpn_targets(anchors, np.array([1, -1]), gt, anchors_per_image=8)
    # anchor 1 equals the crowd box: not positive (crowds are no targets), not negative
    assert match.tolist() == [1, 0, 0, -1]


def test_rpn_targets_without_instances_are_neutral():
    anchors = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)
    match, bbox = build_rpn_targets(anchors, np.zeros(0, int), np.zeros((0, 4)), 8)
    assert not match.any() and not bbox.any()


def test_rpn_targets_subsampling_respects_budget():
    rng = np.random.default_rng(1)
    ys, xs = np.meshgrid(np.arange(0, 200, 4), np.arange(0, 200, 4), indexing="ij")
    anchors = np.stack([ys, xs, ys + 16, xs + 16], -1).reshape(-1, 4).astype(float)
    gt = np.array([[y, x, y + 16, x + 16] for y in range(0, 192, 20) for x in range(0, 192, 20)])
    match, bbox = build_rpn_targets(anchors, np.ones(len(gt), int), gt, 32, rng=rng)
    assert np.sum(match == 1) == 16                 # capped at half the budget
    assert np.sum(match != 0) == 32
    assert np.count_nonzero(np.abs(bbox).sum(1)) <= 16


# ---------------------------------------------------------------------------------------------
def _targets(proposals, class_ids, boxes, masks, rois=6, ratio=0.5, mini=True):
    import tensorflow as tf
    out = detection_targets_graph(
        tf.constant(proposals, tf.float32), tf.constant(class_ids, tf.int32),
        tf.constant(boxes, tf.float32), tf.constant(masks), rois_per_image=rois,
        positive_ratio=ratio, bbox_std_dev=(0.1, 0.1, 0.2, 0.2), mask_shape=(28, 28),
        use_mini_mask=mini)
    return [o.numpy() for o in out]


def _mini_left_half(n=1):
    m = np.zeros((56, 56, n), bool)
    m[:, :28] = True
    return m


def test_detection_targets_sampling_deltas_and_masks():
    proposals = [[0, 0, .5, .5], [.5, .5, 1, 1], [0, 0, 0, 0], [.02, 0, .5, .5]]
    gt_boxes = [[0, 0, .5, .5], [0, 0, 0, 0]]          # second row is padding
    rois, ids, deltas, masks = _targets(proposals, [1, 0], gt_boxes, _mini_left_half(2))
    assert rois.shape == (6, 4) and masks.shape == (6, 28, 28)
    # two positives (IoU 1 and 0.96), then int(2 / 0.5) - 2 = 2 negatives wanted, 1 exists
    assert ids.tolist() == [1, 1, 0, 0, 0, 0]
    np.testing.assert_allclose(sorted(rois[:2].tolist()), [[0, 0, .5, .5], [.02, 0, .5, .5]],
                               atol=1e-6)
    np.testing.assert_allclose(rois[2], [.5, .5, 1, 1])
    assert not rois[3:].any() and not deltas[2:].any() and not masks[2:].any()
    shifted = int(np.argmax(rois[:2, 0]))
    np.testing.assert_allclose(deltas[1 - shifted], 0, atol=1e-6)
    np.testing.assert_allclose(
        deltas[shifted], [-0.01 / 0.48 / 0.1, 0, math.log(0.5 / 0.48) / 0.2, 0], rtol=1e-4)
    # the ROI equal to the GT box samples the mini mask column j at 55 j / 27: left 14 are on
    # (TF's float32 sampling puts the last row at 55.0000x, just outside: it reads 0 there,
    # in Matterport too)
    exact = masks[1 - shifted][:27]
    assert exact[:, :14].all() and not exact[:, 14:].any()


def test_detection_targets_crowd_and_full_size_masks():
    proposals = [[0, 0, .5, .5], [.5, .5, 1, 1], [.6, 0, 1, .3]]
    boxes = [[0, 0, .5, .5], [.5, .5, 1, 1]]
    full = np.zeros((64, 64, 2), bool)
    full[:32, :32, 0] = True
    full[32:, 32:, 1] = True
    rois, ids, _, masks = _targets(proposals, [1, -1], boxes, full, rois=8, mini=False)
    # the crowd proposal is neither positive nor negative; [.6,0,1,.3] is the only negative
    assert ids.tolist()[:2] == [1, 0]
    np.testing.assert_allclose(rois[1], [.6, 0, 1, .3])
    assert not rois[2:].any()
    assert masks[0][:13].all()      # ROI [0, .5] on a 64 px mask: rows < 32 are inside


def test_detection_target_layer_batches():
    import tensorflow as tf

    from nucseg.mrcnn.config import Config
    from nucseg.mrcnn.targets import DetectionTargetLayer

    config = Config(TRAIN_ROIS_PER_IMAGE=6, ROI_POSITIVE_RATIO=0.5, IMAGES_PER_GPU=2,
                    NUM_CLASSES=2)
    layer = DetectionTargetLayer(config)
    proposals = tf.constant([[[0, 0, .5, .5], [.5, .5, 1, 1]]] * 2, tf.float32)
    ids = tf.constant([[1, 0], [0, 0]], tf.int32)
    boxes = tf.constant([[[0, 0, .5, .5], [0, 0, 0, 0]], [[0, 0, 0, 0]] * 2], tf.float32)
    masks = tf.constant(np.stack([_mini_left_half(2)] * 2))
    rois, cls, bbox, m = layer([proposals, ids, boxes, masks])
    assert rois.shape == (2, 6, 4) and m.shape == (2, 6, 28, 28)
    assert cls.numpy()[0].tolist() == [1, 0, 0, 0, 0, 0]
    assert not rois.numpy()[1].any()      # no GT: no positives, hence no negatives either
