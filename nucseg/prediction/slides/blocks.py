"""Blocks over the model-resolution frame, and which block a nucleus belongs to.

The frame is cut into a grid of square *cores* (`block_size` px); a block is its core plus a
`margin` on every side (cut at the slide's edge). The margin is at least the largest nucleus
plus the tile overlap (plus the ownership slack below), so a nucleus whose centroid lies in a
core is seen whole by that block, and the block's own tiles never cut it.

A nucleus belongs to the block whose core holds its centroid. Two blocks see a nucleus on their
common core edge in different contexts (other tiles, other neighbours), so its centroid may
move by a pixel or two and fall on the other side in both blocks. Each block therefore keeps
the nuclei within SLACK px outside its core too, and a nucleus whose mask overlaps one already
kept by an earlier block (mask IoU > DUPLICATE_IOU) is dropped: blocks run in row order, so the
earlier block wins. Only nuclei near core edges are remembered, for one row of blocks, so
memory does not grow with the slide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SLACK = 8
DUPLICATE_IOU = 0.3
MAX_NUCLEUS_UM = 20.0     # the largest nucleus diameter the margin makes room for


@dataclass(frozen=True)
class Block:
    """Core and block (with margin) in frame pixels (y1, x1, y2, x2), exclusive ends."""

    row: int
    col: int
    core: tuple
    tile: tuple

    @property
    def name(self) -> str:
        return f"r{self.row:03d}c{self.col:03d}"


def default_margin(model_mpp: float, overlap: int) -> int:
    """Largest nucleus (MAX_NUCLEUS_UM at the model's pixel size) + tile overlap + slack."""
    return int(math.ceil(MAX_NUCLEUS_UM / model_mpp)) + int(overlap) + SLACK


def plan_blocks(width: int, height: int, block_size: int, margin: int) -> list[Block]:
    """The block grid, in row order (the order outputs are written in)."""
    if block_size < 64:
        raise ValueError(f"block size must be at least 64 px, got {block_size}")
    blocks = []
    for row, y in enumerate(range(0, height, block_size)):
        for col, x in enumerate(range(0, width, block_size)):
            core = (y, x, min(y + block_size, height), min(x + block_size, width))
            tile = (max(core[0] - margin, 0), max(core[1] - margin, 0),
                    min(core[2] + margin, height), min(core[3] + margin, width))
            blocks.append(Block(row, col, core, tile))
    return blocks


def grid_shape(blocks: list[Block]) -> tuple[int, int]:
    return (max(b.row for b in blocks) + 1, max(b.col for b in blocks) + 1) if blocks \
        else (0, 0)


class Owner:
    """Decides which of a block's nuclei it keeps (see the module docstring)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.rows = np.zeros(0, np.int64)           # kept nuclei near core edges: block row,
        self.rois = np.zeros((0, 4), np.int64)      # frame box
        self.masks: list = []                       # and mask crop
        self.duplicates = 0
        self.cut = 0

    def _near_edge(self, block: Block, rois: np.ndarray) -> np.ndarray:
        """Boxes within 2 x SLACK of the core's edge: the only ones a neighbour may repeat."""
        y1, x1, y2, x2 = block.core
        return ((rois[:, 0] < y1 + 2 * SLACK) | (rois[:, 1] < x1 + 2 * SLACK)
                | (rois[:, 2] > y2 - 2 * SLACK) | (rois[:, 3] > x2 - 2 * SLACK))

    def remember(self, block: Block, rois, masks) -> None:
        """Take note of nuclei `block` kept (also those of a finished block read back on
        --resume); only those near its core's edge, and only for one row of blocks."""
        recent = np.flatnonzero(self.rows >= block.row - 1)
        self.rows, self.rois = self.rows[recent], self.rois[recent]
        self.masks = [self.masks[k] for k in recent]
        rois = np.asarray(rois, np.int64).reshape(-1, 4)
        store = np.flatnonzero(self._near_edge(block, rois))
        self.rows = np.concatenate([self.rows, np.full(len(store), block.row, np.int64)])
        self.rois = np.concatenate([self.rois, rois[store]])
        self.masks += [masks[i] for i in store]

    def select(self, block: Block, rois: np.ndarray, centroids: np.ndarray, masks) -> list[int]:
        """Indices of the nuclei `block` keeps; `rois`, `centroids` (y, x) in frame pixels,
        `masks` the boolean crops of the rois."""
        recent = np.flatnonzero(self.rows >= block.row - 1)
        self.rows, self.rois = self.rows[recent], self.rois[recent]
        self.masks = [self.masks[k] for k in recent]
        rois = np.asarray(rois, np.int64).reshape(-1, 4)
        y1, x1, y2, x2 = block.core
        cy, cx = centroids[:, 0], centroids[:, 1]
        inside = (cy >= y1 - SLACK) & (cy < y2 + SLACK) & (cx >= x1 - SLACK) & (cx < x2 + SLACK)
        near = self._near_edge(block, rois)
        chosen = []
        for i in np.flatnonzero(inside):
            if near[i] and len(self.rois):
                r = rois[i]
                hit = np.flatnonzero((self.rois[:, 0] < r[2]) & (self.rois[:, 2] > r[0])
                                     & (self.rois[:, 1] < r[3]) & (self.rois[:, 3] > r[1]))
                if any(_mask_iou(r, masks[i], self.rois[k], self.masks[k]) > DUPLICATE_IOU
                       for k in hit):
                    self.duplicates += 1
                    continue
            chosen.append(int(i))
            if self._touches_block_edge(block, rois[i]):
                self.cut += 1
        self.remember(block, rois[chosen], [masks[i] for i in chosen])
        return chosen

    def _touches_block_edge(self, block: Block, roi) -> bool:
        """A kept nucleus reaching the block's edge (not the slide's) may have been cut."""
        ty1, tx1, ty2, tx2 = block.tile
        return bool((roi[0] <= ty1 and ty1 > 0) or (roi[1] <= tx1 and tx1 > 0)
                    or (roi[2] >= ty2 and ty2 < self.height)
                    or (roi[3] >= tx2 and tx2 < self.width))


def _mask_iou(roi_a, mask_a, roi_b, mask_b) -> float:
    y1, x1 = max(roi_a[0], roi_b[0]), max(roi_a[1], roi_b[1])
    y2, x2 = min(roi_a[2], roi_b[2]), min(roi_a[3], roi_b[3])
    if y2 <= y1 or x2 <= x1:
        return 0.0
    a = mask_a[y1 - roi_a[0]:y2 - roi_a[0], x1 - roi_a[1]:x2 - roi_a[1]]
    b = mask_b[y1 - roi_b[0]:y2 - roi_b[0], x1 - roi_b[1]:x2 - roi_b[1]]
    inter = int(np.count_nonzero(a & b))
    union = int(np.count_nonzero(mask_a)) + int(np.count_nonzero(mask_b)) - inter
    return inter / union if union else 0.0
