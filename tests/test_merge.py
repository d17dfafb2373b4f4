"""Merging members: synthetic members with known truth (shifted, missing, extra instances)."""
from __future__ import annotations

import numpy as np
import pytest

from nucseg.io import InputError
from nucseg.prediction.members import Member, load_member, save_member
from nucseg.prediction.merge import merge_mask_nms, merge_members, merge_vote
from nucseg.prediction.overlap import box_iou_pairs, intersecting_pairs, mask_iou_pairs

SHAPE = (120, 160)


def disk(cy, cx, r, value=1.0, margin=2):
    """A box-cropped soft disk detection: (box, mask)."""
    y1, x1 = int(cy - r) - margin, int(cx - r) - margin
    y2, x2 = int(cy + r) + margin + 1, int(cx + r) + margin + 1
    yy, xx = np.mgrid[y1:y2, x1:x2]
    mask = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, value, 0.0).astype(np.float32)
    return [y1, x1, y2, x2], mask


def member(objects, name, shape=SHAPE):
    """objects: list of (cy, cx, r, score)."""
    boxes, masks, scores = [], [], []
    for cy, cx, r, score in objects:
        box, mask = disk(cy, cx, r)
        boxes.append(box)
        masks.append(mask)
        scores.append(score)
    return Member(np.array(boxes).reshape(-1, 4), scores, np.ones(len(boxes)), masks, shape,
                  model=name)


def label_at(merged, y, x):
    return int(merged.labels[y, x])


@pytest.fixture
def five_members():
    """Nucleus A seen by all 5 (jittered), B by 3, C by 2, D by 1 (a false positive)."""
    a = [(30 + d, 30 - d, 9, 0.9 - 0.01 * k) for k, d in enumerate([0, 1, -1, 1, 0])]
    b = [(30, 100, 8, 0.8)] * 3
    c = [(90, 40, 8, 0.95)] * 2
    d = [(90, 120, 8, 0.99)]
    per_member = [[a[0], b[0], c[0], d[0]], [a[1], b[1], c[1]], [a[2], b[2]], [a[3]], [a[4]]]
    return [member(objs, f"m{k}") for k, objs in enumerate(per_member)]


def test_vote_keeps_majority_and_drops_minorities(five_members):
    merged = merge_vote(five_members)
    assert len(merged) == 2
    a, b = label_at(merged, 30, 30), label_at(merged, 30, 100)
    assert a and b and a != b
    assert label_at(merged, 90, 40) == 0 and label_at(merged, 90, 120) == 0
    np.testing.assert_allclose(merged.agreement[a - 1], 1.0)
    np.testing.assert_allclose(merged.agreement[b - 1], 0.6)
    np.testing.assert_allclose(merged.scores[a - 1], np.mean([0.9, 0.89, 0.88, 0.87, 0.86]),
                               rtol=1e-6)
    assert merged.labels.dtype == np.uint16 and merged.labels.shape == SHAPE


def test_min_members_one_keeps_every_object(five_members):
    merged = merge_vote(five_members, min_members=1)
    assert len(merged) == 4
    assert sorted(np.round(merged.agreement, 2)) == [0.2, 0.4, 0.6, 1.0]
    # ids follow descending score: the singleton (0.99) comes first
    assert label_at(merged, 90, 120) == 1


def test_vote_averages_masks_and_mask_nms_unites_them():
    """Hard disks of radius 8, 9, 10 around one centre: the vote keeps pixels all three members
    cover (mean 1 > 0.7, 2/3 is not), i.e. the r=8 disk; mask NMS unites them, the r=10 disk."""
    members = [member([(60, 80, r, s)], f"m{k}") for k, (r, s) in
               enumerate([(9, 0.9), (8, 0.8), (10, 0.7)])]
    vote = merge_vote(members)
    nms = merge_mask_nms(members)
    assert len(vote) == len(nms) == 1
    area = lambda r: int(disk(60, 80, r)[1].sum())  # noqa: E731
    assert int((vote.labels > 0).sum()) == area(8)
    assert int((nms.labels > 0).sum()) == area(10)
    assert nms.scores[0] == pytest.approx(0.9)                 # the kept (top) detection
    assert vote.scores[0] == pytest.approx(0.8)                # the mean
    # soft masks are averaged, not voted: 0.6 everywhere in all three never passes 0.7
    faint = [Member(m.rois, m.scores, m.class_ids, [x * 0.6 for x in m.masks], SHAPE, m.model)
             for m in members]
    assert len(merge_vote(faint)) == 0
    assert len(merge_vote(faint, mask_threshold=0.5)) == 1


def test_shifted_members_group_by_box_iou_threshold():
    """Boxes of two members shifted by 6 px (IoU 0.61) do not group at 0.7, do at 0.5."""
    members = [member([(60, 80, 10, 0.9)], "m0"), member([(60, 86, 10, 0.9)], "m1")]
    assert len(merge_vote(members, min_members=2)) == 0
    merged = merge_vote(members, min_members=2, iou_threshold=0.5, mask_threshold=0.4)
    assert len(merged) == 1 and merged.agreement[0] == 1.0
    assert len(merge_vote(members, min_members=2, iou_type="mask", iou_threshold=0.5)) == 0
    assert len(merge_vote(members, min_members=2, iou_type="mask", iou_threshold=0.4)) == 1


def test_overlaps_go_to_the_higher_score_and_small_objects_are_removed():
    big = [(60, 60, 10, 0.6), (60, 75, 10, 0.9), (20, 130, 3, 0.9)]    # r=3: 29 px < 50
    merged = merge_vote([member(big, "m0")], min_members=1)
    assert len(merged) == 2
    assert merged.scores[label_at(merged, 60, 68) - 1] == pytest.approx(0.9)
    assert label_at(merged, 20, 130) == 0
    assert len(merge_vote([member(big, "m0")], min_members=1, min_area=1)) == 3
    ids = np.unique(merged.labels)
    assert list(ids) == [0, 1, 2]                                     # consecutive ids
    for k, (y1, x1, y2, x2) in enumerate(merged.rois, start=1):
        ys, xs = np.nonzero(merged.labels == k)
        assert (y1, x1, y2, x2) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def test_member_order_does_not_matter(five_members):
    a = merge_vote(five_members)
    b = merge_vote(five_members[::-1])
    np.testing.assert_array_equal(a.labels > 0, b.labels > 0)
    np.testing.assert_allclose(sorted(a.scores), sorted(b.scores))


def test_bad_merge_requests():
    with pytest.raises(ValueError, match="image size"):
        merge_vote([member([], "a"), member([], "b", shape=(50, 50))])
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_members([member([], "a")], method="mean")
    with pytest.raises(ValueError, match="no members"):
        merge_vote([])
    empty = merge_vote([member([], "a")])
    assert len(empty) == 0 and not empty.labels.any()


def test_sparse_pairs_equal_brute_force():
    rng = np.random.default_rng(3)
    y1 = rng.integers(0, 300, 400)
    x1 = rng.integers(0, 300, 400)
    size = rng.integers(1, 30, (400, 2))
    size[:5] = 150                                                     # a few huge boxes
    rois = np.stack([y1, x1, y1 + size[:, 0], x1 + size[:, 1]], 1)
    ih = np.minimum(rois[:, None, 2], rois[None, :, 2]) - np.maximum(rois[:, None, 0],
                                                                     rois[None, :, 0])
    iw = np.minimum(rois[:, None, 3], rois[None, :, 3]) - np.maximum(rois[:, None, 1],
                                                                     rois[None, :, 1])
    inter = np.clip(ih, 0, None) * np.clip(iw, 0, None)
    area = size[:, 0] * size[:, 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    want = {(i, j) for i, j in zip(*np.nonzero(np.triu(inter > 0, 1)))}
    assert set(zip(*intersecting_pairs(rois))) == want
    for threshold in (0.0, 0.3, 0.7):
        i, j, v = box_iou_pairs(rois, threshold)
        assert set(zip(i, j)) == {(a, b) for a, b in
                                  zip(*np.nonzero(np.triu(iou > threshold, 1)))}
        np.testing.assert_allclose(v, iou[i, j])
    masks = [rng.random((h, w)) > 0.5 for h, w in size]
    i, j, v = mask_iou_pairs(rois, masks, (500, 500), 0.05)
    for a, b, value in zip(i[:50], j[:50], v[:50]):
        canvas = np.zeros((2, 500, 500), bool)
        for c, k in enumerate((a, b)):
            canvas[c, rois[k, 0]:rois[k, 2], rois[k, 1]:rois[k, 3]] = masks[k]
        both = (canvas[0] & canvas[1]).sum() / (canvas[0] | canvas[1]).sum()
        assert value == pytest.approx(both)


def test_member_file_round_trip_is_exact(tmp_path, five_members):
    rng = np.random.default_rng(0)
    result = {"rois": five_members[0].rois, "scores": five_members[0].scores,
              "class_ids": five_members[0].class_ids,
              "masks": [rng.random(m.shape).astype(np.float32) for m in five_members[0].masks]}
    original = Member.from_detection(result, SHAPE, model="fold_1.h5", transform="vflip")
    back = load_member(save_member(tmp_path / "m.npz", original))
    assert (back.model, back.transform, back.image_shape) == ("fold_1.h5", "vflip", SHAPE)
    np.testing.assert_array_equal(back.rois, original.rois)
    np.testing.assert_array_equal(back.scores, original.scores)
    for a, b in zip(back.masks, original.masks):
        np.testing.assert_array_equal(a, b)
    assert np.abs(original.masks[0] - result["masks"][0]).max() <= 0.5 / 255 + 1e-7
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        load_member(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="not a member file"):
        load_member(tmp_path / "other.npz")
