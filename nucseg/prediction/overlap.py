"""Which detections overlap, and by how much: box IoU and mask IoU as sparse pair lists.

Ensembles pool tens of thousands of detections per image (20 members x 700 nuclei), so a dense
N x N IoU matrix (or a Python loop over pairs) is out of the question. Nuclei are small and
local: boxes are binned on a grid whose cell is as large as (almost) every box, so two boxes can
only intersect when their top-left corners fall in the same or a neighbouring cell. The rare
boxes larger than a cell are paired with everything by broadcasting.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Half of the 3x3 neighbourhood (the other half is covered from the neighbouring cell).
_FORWARD_CELLS = ((0, 1), (1, -1), (1, 0), (1, 1))


def _expand_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [starts[k], ends[k]) return (k repeated, every position in the range)."""
    counts = np.maximum(ends - starts, 0)
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(starts)), counts)
    if total == 0:
        return owner, np.zeros(0, np.int64)
    first = np.cumsum(counts) - counts
    pos = np.arange(total) - np.repeat(first, counts) + np.repeat(starts, counts)
    return owner, pos


def intersecting_pairs(rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of boxes [y1, x1, y2, x2] (exclusive ends) with a positive intersection."""
    rois = np.asarray(rois, dtype=np.int64).reshape(-1, 4)
    n = len(rois)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    extent = np.maximum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1])
    cell = max(1, int(np.percentile(extent, 99)))
    big = extent > cell
    small = np.flatnonzero(~big)
    cy = rois[small, 0] // cell
    cx = rois[small, 1] // cell
    cy -= cy.min() if len(cy) else 0
    cx -= cx.min() - 1 if len(cx) else 0          # column 0 stays free for the (1, -1) offset
    ncols = int(cx.max()) + 2 if len(cx) else 1
    keys = cy * ncols + cx
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    sorted_ids = small[order]
    parts_i, parts_j = [], []
    # same cell: every later box in the cell
    cell_end = np.searchsorted(sorted_keys, sorted_keys, side="right")
    owner, pos = _expand_ranges(np.arange(len(order)) + 1, cell_end)
    parts_i.append(sorted_ids[owner])
    parts_j.append(sorted_ids[pos])
    for dy, dx in _FORWARD_CELLS:
        target = sorted_keys + dy * ncols + dx
        owner, pos = _expand_ranges(np.searchsorted(sorted_keys, target, side="left"),
                                    np.searchsorted(sorted_keys, target, side="right"))
        parts_i.append(sorted_ids[owner])
        parts_j.append(sorted_ids[pos])
    everyone = np.arange(n)
    for b in np.flatnonzero(big):                 # few: test against all others directly
        y1, x1, y2, x2 = rois[b]
        hit = ((rois[:, 0] < y2) & (rois[:, 2] > y1) & (rois[:, 1] < x2) & (rois[:, 3] > x1)
               & (everyone != b) & (~big | (everyone > b)))
        others = everyone[hit]
        parts_i.append(np.full(len(others), b))
        parts_j.append(others)
    i = np.concatenate(parts_i)
    j = np.concatenate(parts_j)
    a, b = np.minimum(i, j), np.maximum(i, j)
    inter_h = np.minimum(rois[a, 2], rois[b, 2]) - np.maximum(rois[a, 0], rois[b, 0])
    inter_w = np.minimum(rois[a, 3], rois[b, 3]) - np.maximum(rois[a, 1], rois[b, 1])
    keep = (inter_h > 0) & (inter_w > 0)
    return a[keep], b[keep]


def _similar_box_candidates(rois: np.ndarray, threshold: float
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) that may have box IoU > threshold (> 0), a superset, found cheaply.

    IoU > t needs, per axis, a 1-D IoU > t: sizes within a factor t of each other and start
    coordinates closer than (1 - t) / t times the smaller size. Boxes are binned by size
    (bins a factor 1/t wide, so partners sit in the same or the next bin) and, per bin, on a
    grid of that start distance, so many large overlapping boxes (an untrained model) do not
    make every box a candidate of every other.
    """
    extent = np.maximum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1])
    valid = np.flatnonzero(np.minimum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]) > 0)
    if len(valid) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    size_bin = np.floor(np.log(extent[valid]) / np.log(1.0 / threshold)).astype(np.int64)
    parts_i, parts_j = [], []
    for b in np.unique(size_bin):
        here = valid[size_bin == b]
        near = valid[(size_bin == b) | (size_bin == b + 1)]
        cell = max(1, int(np.ceil((1.0 - threshold) / threshold * extent[near].max())))
        cy, cx = rois[near, 0] // cell, rois[near, 1] // cell
        ncols = int(cx.max() - cx.min()) + 3
        keys = (cy - cy.min() + 1) * ncols + (cx - cx.min() + 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_ids = keys[order], near[order]
        key_of = dict(zip(near.tolist(), keys.tolist()))
        own = np.array([key_of[k] for k in here.tolist()], np.int64)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                target = own + dy * ncols + dx
                owner, pos = _expand_ranges(np.searchsorted(sorted_keys, target, "left"),
                                            np.searchsorted(sorted_keys, target, "right"))
                a, c = here[owner], sorted_ids[pos]
                other_bin = size_bin[np.searchsorted(valid, c)] != b
                keep = other_bin | (a < c)
                parts_i.append(a[keep])
                parts_j.append(c[keep])
    i, j = np.concatenate(parts_i), np.concatenate(parts_j)
    return np.minimum(i, j), np.maximum(i, j)


def box_iou_pairs(rois: np.ndarray, threshold: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) whose box IoU exceeds `threshold`, with the IoU (integer boxes, no +1)."""
    rois = np.asarray(rois, dtype=np.int64).reshape(-1, 4)
    if 0 < threshold < 1:
        i, j = _similar_box_candidates(rois, threshold)
    else:
        i, j = intersecting_pairs(rois)
    inter_h = np.minimum(rois[i, 2], rois[j, 2]) - np.maximum(rois[i, 0], rois[j, 0])
    inter_w = np.minimum(rois[i, 3], rois[j, 3]) - np.maximum(rois[i, 1], rois[j, 1])
    inter = np.maximum(inter_h, 0) * np.maximum(inter_w, 0)
    area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
    union = area[i] + area[j] - inter
    iou = np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)
    keep = iou > threshold
    return i[keep], j[keep], iou[keep]


def mask_pixel_matrix(rois: np.ndarray, binary_masks: list, image_shape) -> sp.csr_matrix:
    """Sparse (N, H*W) 0/1 matrix: row k holds the pixels of binary box mask k."""
    height, width = image_shape
    rows, cols = [], []
    for k, (mask, (y1, x1, _, _)) in enumerate(zip(binary_masks, rois)):
        r, c = np.nonzero(mask)
        cols.append((r + y1).astype(np.int64) * width + (c + x1))
        rows.append(np.full(len(r), k, np.int64))
    if rows:
        rows, cols = np.concatenate(rows), np.concatenate(cols)
    else:
        rows = cols = np.zeros(0, np.int64)
    data = np.ones(len(rows), np.int32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(binary_masks), height * width))


def mask_iou_pairs(rois: np.ndarray, binary_masks: list, image_shape, threshold: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) whose binary-mask IoU exceeds `threshold`, with the IoU.

    Intersections of all pairs at once as one sparse product P @ P.T (pixels x masks).
    """
    pixels = mask_pixel_matrix(rois, binary_masks, image_shape)
    area = np.asarray(pixels.sum(axis=1)).ravel().astype(np.float64)
    inter = sp.triu(pixels @ pixels.T, k=1).tocoo()
    i, j, both = inter.row.astype(np.int64), inter.col.astype(np.int64), inter.data
    iou = both / (area[i] + area[j] - both)
    keep = iou > threshold
    return i[keep], j[keep], iou[keep]


def symmetric_csr(i: np.ndarray, j: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    """An n x n sparse matrix holding each pair both ways (neighbour lists by row)."""
    return sp.csr_matrix((np.concatenate([values, values]),
                          (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n))
