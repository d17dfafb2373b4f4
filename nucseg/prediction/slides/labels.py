"""The slide's label image: a tiled, zlib-compressed, pyramidal uint32 TIFF in level-0 pixels.

Blocks finish in row order but a TIFF's tiles are written in tile order, and a nucleus owned by
one block reaches into its neighbours' cores. So each kept nucleus' mask (frame pixels, bits
packed) is appended to a temporary file as its block finishes; when the slide is done, every
tile of every level is painted from the nuclei whose boxes touch it (read back from that file)
and written in order. Memory holds one tile and four integers per nucleus, never a row of
blocks. Pixel (r, c) of level L is the nucleus covering the frame pixel under its centre
(nearest neighbour), so level 0 has the slide's level-0 size whatever the model's resolution;
where two nuclei of different blocks overlap (a rare seam case), the lower id keeps the pixel.
Ids are those of the GeoJSON and CSV (1..N over the slide); 0 is background.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

TILE = 512


class LabelStore:
    """Nucleus masks kept on disk until the label image is written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.handle = open(self.path, "wb")
        self.boxes: list = []            # (y1, x1, y2, x2) frame px
        self.offsets: list = [0]

    def add(self, box, mask: np.ndarray) -> None:
        data = np.packbits(np.asarray(mask, bool), axis=None).tobytes()
        self.handle.write(data)
        self.boxes.append(tuple(int(v) for v in box))
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()

    def write_tiff(self, path, width: int, height: int, level0_per_px: float,
                   mpp: tuple | None = None) -> None:
        """The pyramid (levels halve until one tile holds the slide) into `path`."""
        import tifffile

        self.close()
        boxes = np.array(self.boxes, np.int64).reshape(-1, 4)
        data = np.memmap(self.path, np.uint8, "r") if self.offsets[-1] else np.zeros(0, np.uint8)
        zero = {}
        with tifffile.TiffWriter(path, bigtiff=width * height * 4 > 2 ** 31) as tw:
            level, (w, h) = 0, (width, height)
            while True:
                scale = 2 ** level
                extra = {}
                if mpp:
                    extra = dict(resolution=(1e4 / (mpp[0] * scale), 1e4 / (mpp[1] * scale)),
                                 resolutionunit="CENTIMETER")
                tw.write(self._tiles(boxes, data, w, h, scale / level0_per_px, zero),
                         shape=(h, w), dtype=np.uint32, tile=(TILE, TILE),
                         compression="zlib", subfiletype=0 if level == 0 else 1, **extra)
                if max(w, h) <= TILE:
                    break
                level, w, h = level + 1, -(-w // 2), -(-h // 2)

    def _tiles(self, boxes, data, width: int, height: int, out_to_frame: float, zero: dict):
        """Compressed tiles of one level in TIFF order; output pixel (r, c) shows frame pixel
        (floor((r + 0.5) * out_to_frame), floor((c + 0.5) * out_to_frame))."""
        edge = TILE * out_to_frame               # frame px per tile
        rows, cols = -(-height // TILE), -(-width // TILE)
        ty1 = np.floor(boxes[:, 0] / edge).astype(np.int64)
        ty2 = np.floor((boxes[:, 2] - 1) / edge).astype(np.int64)
        tx1 = np.floor(boxes[:, 1] / edge).astype(np.int64)
        tx2 = np.floor((boxes[:, 3] - 1) / edge).astype(np.int64)
        pairs_tile, pairs_nucleus = [], []
        for dy in range(int((ty2 - ty1).max(initial=0)) + 1):
            for dx in range(int((tx2 - tx1).max(initial=0)) + 1):
                ok = np.flatnonzero((ty1 + dy <= ty2) & (tx1 + dx <= tx2))
                pairs_tile.append((ty1[ok] + dy) * cols + tx1[ok] + dx)
                pairs_nucleus.append(ok)
        tiles = np.concatenate(pairs_tile) if pairs_tile else np.zeros(0, np.int64)
        nuclei = np.concatenate(pairs_nucleus) if pairs_nucleus else np.zeros(0, np.int64)
        order = np.lexsort((nuclei, tiles))
        tiles, nuclei = tiles[order], nuclei[order]
        bounds = np.searchsorted(tiles, np.arange(rows * cols + 1))
        centres = (np.arange(TILE) + 0.5) * out_to_frame
        for t in range(rows * cols):
            members = nuclei[bounds[t]:bounds[t + 1]]
            if not len(members):
                if "tile" not in zero:
                    zero["tile"] = zlib.compress(np.zeros((TILE, TILE), np.uint32).tobytes())
                yield zero["tile"]
                continue
            r, c = divmod(t, cols)
            fy = np.floor(r * edge + centres).astype(np.int64)    # frame row of each out row
            fx = np.floor(c * edge + centres).astype(np.int64)
            tile = np.zeros((TILE, TILE), np.uint32)
            for n in members[::-1]:                  # lower ids painted last: they win
                y1, x1, y2, x2 = boxes[n]
                iy = np.flatnonzero((fy >= y1) & (fy < y2))
                ix = np.flatnonzero((fx >= x1) & (fx < x2))
                if not len(iy) or not len(ix):
                    continue
                bits = np.unpackbits(data[self.offsets[n]:self.offsets[n + 1]],
                                     count=(y2 - y1) * (x2 - x1)).reshape(y2 - y1, x2 - x1)
                crop = bits[np.ix_(fy[iy] - y1, fx[ix] - x1)].astype(bool)
                view = tile[iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1]
                view[crop] = n + 1
            yield zlib.compress(tile.tobytes())
