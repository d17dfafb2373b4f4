"""Detection on images larger than the model input: overlapping tiles, one owner per nucleus.

Full-size tiles are spread evenly over the image, neighbours overlapping by at least `overlap`;
each tile owns a *core*, the cores meeting in the middle of each overlap, so the cores partition
the image and every core keeps at least overlap/2 from its tile's inner edges. A detection is
kept only by the tile whose core contains its box centre, so a nucleus smaller than overlap/2
is always seen whole by its owner and never twice. Two tiles that both see a nucleus lying on the core boundary may
each place its centre on their own side by a fraction of a pixel: such cross-tile pairs (box
IoU > 0.5) keep the higher score.

A tile whose detector returns exactly `max_instances` detections has probably been cut off by
DETECTION_MAX_INSTANCES; its core is split in four and the parts run again (recursively, down to
a minimum core size and at most `max_split_depth` times), and the number of splits and of
tiles still saturated is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nucseg.prediction.overlap import box_iou_pairs

DUPLICATE_IOU = 0.5


@dataclass(frozen=True)
class Region:
    """A tile [y1:y2, x1:x2] and the core it owns (both in image pixels, exclusive ends)."""

    tile: tuple
    core: tuple
    depth: int = 0

    @property
    def shape(self) -> tuple:
        return (self.tile[2] - self.tile[0], self.tile[3] - self.tile[1])


def _axis_plan(length: int, tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(tile start, tile end, core start, core end) along one axis: full-size tiles spread
    evenly with at least `overlap` between neighbours; cores meet mid-overlap."""
    if length <= tile_size:
        return [(0, length, 0, length)]
    n = math.ceil((length - overlap) / (tile_size - overlap))
    starts = [round(k * (length - tile_size) / (n - 1)) for k in range(n)]
    bounds = [0] + [(starts[k] + tile_size + starts[k + 1]) // 2 for k in range(n - 1)] + [length]
    return [(starts[k], starts[k] + tile_size, bounds[k], bounds[k + 1]) for k in range(n)]


def _region(core, shape, margin, depth=0) -> Region:
    y1, x1, y2, x2 = core
    tile = (max(y1 - margin, 0), max(x1 - margin, 0), min(y2 + margin, shape[0]),
            min(x2 + margin, shape[1]))
    return Region(tile, tuple(core), depth)


def plan_tiles(shape, tile_size: int, overlap: int = 128) -> list[Region]:
    """Regions covering an image of `shape` (H, W) with tiles no larger than `tile_size`."""
    height, width = int(shape[0]), int(shape[1])
    if height <= tile_size and width <= tile_size:
        return [Region((0, 0, height, width), (0, 0, height, width))]
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, tile size {tile_size}), got {overlap}")
    rows = _axis_plan(height, tile_size, overlap)
    cols = _axis_plan(width, tile_size, overlap)
    return [Region((ty1, tx1, ty2, tx2), (cy1, cx1, cy2, cx2))
            for ty1, ty2, cy1, cy2 in rows for tx1, tx2, cx1, cx2 in cols]


def split_region(region: Region, shape, margin: int, min_core: int = 32) -> list[Region]:
    """The region's core cut in halves along each axis longer than 2 x `min_core`."""
    y1, x1, y2, x2 = region.core
    ys = [y1, (y1 + y2) // 2, y2] if y2 - y1 >= 2 * min_core else [y1, y2]
    xs = [x1, (x1 + x2) // 2, x2] if x2 - x1 >= 2 * min_core else [x1, x2]
    return [_region((ys[i], xs[j], ys[i + 1], xs[j + 1]), shape, margin, region.depth + 1)
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def _batches(regions: list[Region], batch_size: int):
    """Regions grouped by tile shape (a model batch needs one shape), in chunks."""
    by_shape: dict = {}
    for r in regions:
        by_shape.setdefault(r.shape, []).append(r)
    for group in by_shape.values():
        for k in range(0, len(group), batch_size):
            yield group[k:k + batch_size]


def detect_tiled(detector, image: np.ndarray, tile_size: int, overlap: int = 128,
                 max_instances: int | None = None, batch_size: int = 1,
                 on_tile=None, max_split_depth: int = 3) -> tuple[dict, dict]:
    """Run `detector.detect` over tiles; returns (detections in image pixels, info).

    The detections dict has rois, scores, class_ids, masks (as a detect() result, without the
    label map), ordered by descending score.
    """
    shape = image.shape[:2]
    margin = overlap // 2
    queue = plan_tiles(shape, tile_size, overlap)
    info = {"tiles": len(queue), "splits": 0, "saturated_tiles": 0, "seam_duplicates": 0}
    rois, scores, class_ids, masks, owner = [], [], [], [], []
    tile_index = 0
    while queue:
        todo, queue = queue, []
        for batch in _batches(todo, batch_size):
            outputs = detector.detect([image[r.tile[0]:r.tile[2], r.tile[1]:r.tile[3]]
                                       for r in batch])
            for region, out in zip(batch, outputs):
                found = len(out["scores"])
                if max_instances and found >= max_instances:
                    parts = (split_region(region, shape, margin)
                             if region.depth < max_split_depth else [region])
                    if len(parts) > 1:
                        queue.extend(parts)
                        info["splits"] += 1
                        continue
                    info["saturated_tiles"] += 1
                r = np.asarray(out["rois"], np.int64).reshape(-1, 4)
                r = r + [region.tile[0], region.tile[1], region.tile[0], region.tile[1]]
                cy, cx = (r[:, 0] + r[:, 2]) / 2.0, (r[:, 1] + r[:, 3]) / 2.0
                y1, x1, y2, x2 = region.core
                own = np.flatnonzero((cy >= y1) & (cy < y2) & (cx >= x1) & (cx < x2))
                rois.append(r[own])
                scores.append(np.asarray(out["scores"], np.float32)[own])
                class_ids.append(np.asarray(out["class_ids"], np.int32)[own])
                masks.extend(out["masks"][i] for i in own)
                owner.append(np.full(len(own), tile_index))
                tile_index += 1
                if on_tile is not None:
                    on_tile()
    rois = np.concatenate(rois).astype(np.int32) if rois else np.zeros((0, 4), np.int32)
    scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    class_ids = np.concatenate(class_ids) if class_ids else np.zeros(0, np.int32)
    owner = np.concatenate(owner) if owner else np.zeros(0, np.int64)
    keep = np.ones(len(scores), bool)
    if tile_index > 1 and len(scores):
        i, j, _ = box_iou_pairs(rois, DUPLICATE_IOU)
        cross = owner[i] != owner[j]
        i, j = i[cross], j[cross]
        loser = np.where(scores[i] >= scores[j], j, i)
        keep[loser] = False
        info["seam_duplicates"] = int((~keep).sum())
    order = np.flatnonzero(keep)
    order = order[np.lexsort((rois[order, 1], rois[order, 0], -scores[order]))]
    info["tiles_run"] = tile_index
    return ({"rois": rois[order], "scores": scores[order], "class_ids": class_ids[order],
             "masks": [masks[k] for k in order]}, info)
