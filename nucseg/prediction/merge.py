"""Merge ensemble / TTA members into one set of nuclei: average voting or mask NMS.

Both methods pool every member's detections, walk them by descending score and group each
unused detection with the unused detections that overlap it; a group is one candidate nucleus,
seen by as many members as it has distinct members. Groups seen by fewer than `min_members`
members are dropped (by default a majority: 3 of 5 models, 3 of 4 TTA views). The agreement of a
nucleus is the fraction of members that saw it.

* `merge_vote` (the Mask R-CNN+ "average voting"): group by box IoU (or mask IoU) above 0.7,
  average the members' soft masks over the group, threshold at 0.7; score = mean member score.
* `merge_mask_nms` (the MoNuSeg 2018 rank-6 method): group by binary-mask IoU (NMS: the
  others are suppressed), the kept mask is the union of the highest-scoring mask and, from each
  other member, the mask that overlaps it most; score = that highest score.

Deliberate differences from the original Mask R-CNN+ code (docs/predict.md): seeds are visited
by score instead of stack order, a detection joins one group only, each member counts once per
group, and the first detection is not left out of every group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from nucseg.prediction.members import Member
from nucseg.prediction.overlap import box_iou_pairs, mask_iou_pairs, symmetric_csr

METHODS = ("vote", "mask-nms")


@dataclass
class Merged:
    """Merged nuclei of one image; arrays are indexed by label id - 1."""

    labels: np.ndarray          # (H, W) uint16 or uint32 instance map, ids 1..K
    scores: np.ndarray          # (K,) float32
    agreement: np.ndarray       # (K,) float32, fraction of members that saw the nucleus
    rois: np.ndarray            # (K, 4) int32 tight boxes of the final label map
    class_ids: np.ndarray       # (K,) int32
    n_members: int = 0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class _Pool:
    """All members' detections side by side."""

    rois: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    member: np.ndarray
    masks: list
    image_shape: tuple
    n_members: int


def _pool(members: list[Member]) -> _Pool:
    if not members:
        raise ValueError("nothing to merge: no members")
    shape = members[0].image_shape
    for m in members[1:]:
        if m.image_shape != shape:
            raise ValueError(f"members disagree on the image size: {m.name} is {m.image_shape},"
                             f" {members[0].name} is {shape}")
    cat = (lambda arrays, dtype, width=None: np.concatenate(arrays).astype(dtype)
           if arrays else np.zeros((0,) if width is None else (0, width), dtype))
    masks = [mask for m in members for mask in m.masks]
    return _Pool(
        rois=cat([m.rois for m in members], np.int32, 4).reshape(-1, 4),
        scores=cat([m.scores for m in members], np.float32),
        class_ids=cat([m.class_ids for m in members], np.int32),
        member=np.repeat(np.arange(len(members)), [len(m) for m in members]),
        masks=masks, image_shape=shape, n_members=len(members))


def _default_min_members(n_members: int, min_members: int | None) -> int:
    if min_members is None:
        return n_members // 2 + 1
    if min_members < 1:
        raise ValueError(f"min_members must be at least 1, got {min_members}")
    return min(int(min_members), n_members)


def _groups(pool: _Pool, pairs, min_members: int):
    """Greedy grouping by descending score; yields (seed, one detection per member, n seen).

    `pairs` = (i, j, iou) of overlapping detections above the grouping threshold.
    """
    n = len(pool.scores)
    adjacency = symmetric_csr(*pairs, n)
    indptr, indices, weights = adjacency.indptr, adjacency.indices, adjacency.data
    used = np.zeros(n, bool)
    order = np.lexsort((pool.member, -pool.scores))
    for seed in order:
        if used[seed]:
            continue
        lo, hi = indptr[seed], indptr[seed + 1]
        nbrs, ious = indices[lo:hi], weights[lo:hi]
        free = ~used[nbrs]
        nbrs, ious = nbrs[free], ious[free]
        used[seed] = True
        used[nbrs] = True                       # same-member duplicates are absorbed too
        others = pool.member[nbrs] != pool.member[seed]
        nbrs, ious = nbrs[others], ious[others]
        if len(nbrs):
            best = np.lexsort((-pool.scores[nbrs], -ious))
            nbrs = nbrs[best]
            _, first = np.unique(pool.member[nbrs], return_index=True)
            nbrs = nbrs[np.sort(first)]
        seen = 1 + len(nbrs)
        if seen >= min_members:
            yield seed, np.concatenate([[seed], nbrs]).astype(np.int64), seen


def _union_box(rois: np.ndarray) -> tuple[int, int, int, int]:
    return (int(rois[:, 0].min()), int(rois[:, 1].min()), int(rois[:, 2].max()),
            int(rois[:, 3].max()))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep one blob per nucleus (a thresholded average can leave specks)."""
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask
    return comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _paint(candidates, image_shape, n_members: int, min_area: int, info: dict) -> Merged:
    """Label map from (box, binary crop, score, agreement, class) candidates; best score wins."""
    from scipy import ndimage

    from nucseg.io import label_dtype

    candidates = sorted(candidates, key=lambda c: -c[2])
    labels = np.zeros(image_shape, np.int32)
    for k, ((y1, x1, y2, x2), crop, _, _, _) in enumerate(candidates, start=1):
        region = labels[y1:y2, x1:x2]
        region[crop & (region == 0)] = k
    areas = np.bincount(labels.ravel(), minlength=len(candidates) + 1)
    keep = np.flatnonzero(areas[1:] >= max(int(min_area), 1)) + 1
    remap = np.zeros(len(candidates) + 1, np.int64)
    remap[keep] = np.arange(1, len(keep) + 1)
    labels = remap[labels].astype(np.int32)
    kept = [candidates[k - 1] for k in keep]
    slices = ndimage.find_objects(labels, max_label=len(keep))
    labels = labels.astype(label_dtype(len(keep)))
    rois = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices],
                    np.int32).reshape(-1, 4)
    info = dict(info, candidates=len(candidates), removed_small=len(candidates) - len(keep))
    return Merged(labels=labels,
                  scores=np.array([c[2] for c in kept], np.float32),
                  agreement=np.array([c[3] for c in kept], np.float32),
                  rois=rois, class_ids=np.array([c[4] for c in kept], np.int32),
                  n_members=n_members, info=info)


def _majority_class(class_ids: np.ndarray) -> int:
    values, counts = np.unique(class_ids, return_counts=True)
    return int(values[np.argmax(counts)])


def merge_vote(members: list[Member], iou_threshold: float = 0.7, iou_type: str = "box",
               min_members: int | None = None, mask_threshold: float = 0.7,
               min_area: int = 50) -> Merged:
    """Average voting: group by IoU > `iou_threshold`, keep groups seen by >= `min_members`
    members, average their soft masks and threshold at `mask_threshold` (strictly above)."""
    pool = _pool(members)
    need = _default_min_members(pool.n_members, min_members)
    if iou_type == "box":
        pairs = box_iou_pairs(pool.rois, iou_threshold)
    elif iou_type == "mask":
        pairs = mask_iou_pairs(pool.rois, [m > mask_threshold for m in pool.masks],
                               pool.image_shape, iou_threshold)
    else:
        raise ValueError(f"iou_type must be 'box' or 'mask', got {iou_type!r}")
    candidates = []
    for _, group, seen in _groups(pool, pairs, need):
        y1, x1, y2, x2 = _union_box(pool.rois[group])
        if y2 <= y1 or x2 <= x1:
            continue
        total = np.zeros((y2 - y1, x2 - x1), np.float32)
        for g in group:
            gy1, gx1, gy2, gx2 = pool.rois[g]
            total[gy1 - y1:gy2 - y1, gx1 - x1:gx2 - x1] += pool.masks[g]
        crop = total > np.float32(mask_threshold) * len(group)
        if not crop.any():
            continue
        candidates.append(((y1, x1, y2, x2), _largest_component(crop),
                           float(pool.scores[group].mean()), seen / pool.n_members,
                           _majority_class(pool.class_ids[group])))
    options = dict(method="vote", iou_threshold=iou_threshold, iou_type=iou_type,
                   min_members=need, mask_threshold=mask_threshold, min_area=min_area)
    return _paint(candidates, pool.image_shape, pool.n_members, min_area, options)


def merge_mask_nms(members: list[Member], iou_threshold: float = 0.5,
                   min_members: int | None = None, mask_threshold: float = 0.5,
                   min_area: int = 50) -> Merged:
    """Mask NMS: greedy by score over binary masks (soft mask > `mask_threshold`); candidates
    whose mask IoU with the kept one exceeds `iou_threshold` are suppressed; the kept mask is
    united with each other member's most-overlapping suppressed mask; nuclei seen by fewer than
    `min_members` members are dropped as false positives."""
    pool = _pool(members)
    need = _default_min_members(pool.n_members, min_members)
    binary = [m > mask_threshold for m in pool.masks]
    pairs = mask_iou_pairs(pool.rois, binary, pool.image_shape, iou_threshold)
    candidates = []
    for seed, group, seen in _groups(pool, pairs, need):
        y1, x1, y2, x2 = _union_box(pool.rois[group])
        union = np.zeros((y2 - y1, x2 - x1), bool)
        for g in group:
            gy1, gx1, gy2, gx2 = pool.rois[g]
            union[gy1 - y1:gy2 - y1, gx1 - x1:gx2 - x1] |= binary[g]
        if not union.any():
            continue
        candidates.append(((y1, x1, y2, x2), _largest_component(union),
                           float(pool.scores[seed]), seen / pool.n_members,
                           int(pool.class_ids[seed])))
    options = dict(method="mask-nms", iou_threshold=iou_threshold, min_members=need,
                   mask_threshold=mask_threshold, min_area=min_area)
    return _paint(candidates, pool.image_shape, pool.n_members, min_area, options)


def merge_members(members: list[Member], method: str = "vote", **options) -> Merged:
    """Dispatch on the method name used by the command line ('vote' or 'mask-nms')."""
    if method == "vote":
        return merge_vote(members, **options)
    if method == "mask-nms":
        options.pop("iou_type", None)
        return merge_mask_nms(members, **options)
    raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
