"""Per-block results on disk, so that `--resume` re-runs only the blocks a killed run left.

Each finished block's own nuclei (after the ownership rule, in level-0 coordinates, with their
frame masks) go to `<outdir>/<stem>_blocks/<block>.npz`, written atomically, so a block file
is complete or absent even after kill -9. The slide's outputs are assembled from these files in
block order once every block is done, and the folder is removed when the record is written. A
`manifest.yaml` holds what the results depend on (the slide's size and modification time, the
frame, the block grid, the options); on --resume a folder with another manifest is discarded,
without --resume any folder is. Reloaded blocks also refill the ownership memory (blocks.Owner)
that later blocks consult, so a resumed slide gets exactly the nuclei of an uninterrupted run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from nucseg.io import atomic_path

MANIFEST = "manifest.yaml"


def work_dir(outdir, stem: str) -> Path:
    return Path(outdir) / f"{stem}_blocks"


def open_work_dir(folder: Path, manifest: dict, resume: bool) -> tuple[set, bool]:
    """(names of the finished blocks to reuse, whether an older folder was discarded)."""
    import yaml

    manifest = yaml.safe_load(yaml.safe_dump(manifest, sort_keys=True))
    discarded = False
    if folder.is_dir():
        try:
            before = yaml.safe_load((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            before = None
        if resume and before == manifest:
            return {p.stem for p in folder.glob("r*c*.npz")}, False
        shutil.rmtree(folder)
        discarded = resume
    folder.mkdir(parents=True)
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(yaml.safe_dump(manifest, sort_keys=True), encoding="utf-8")
    return set(), discarded


def save_block(path: Path, nuclei: list[dict], stats: dict) -> None:
    """Write one block's kept nuclei (dicts from predict._own_nuclei) and counters."""
    n = len(nuclei)
    rings = [np.asarray(r, np.float64).reshape(-1, 2) for d in nuclei for r in d["rings"]]
    bits = [np.packbits(d["mask"], axis=None) for d in nuclei]
    arrays = {
        "scores": np.array([d["score"] for d in nuclei], np.float32),
        "agreement": np.array([d["agreement"] for d in nuclei], np.float32),
        "centroid": np.array([d["centroid"] for d in nuclei], np.float64).reshape(n, 2),
        "area": np.array([d["area"] for d in nuclei], np.float64),
        "bbox": np.array([d["bbox"] for d in nuclei], np.float64).reshape(n, 4),
        "frame_box": np.array([d["frame_box"] for d in nuclei], np.int64).reshape(n, 4),
        "ring_count": np.array([len(d["rings"]) for d in nuclei], np.int64),
        "ring_ends": np.cumsum([len(r) for r in rings], dtype=np.int64),
        "ring_xy": np.concatenate(rings) if rings else np.zeros((0, 2)),
        "mask_ends": np.cumsum([len(b) for b in bits], dtype=np.int64),
        "mask_bits": np.concatenate(bits) if bits else np.zeros(0, np.uint8),
        "stats": np.array(json.dumps(stats, sort_keys=True,
                                     default=lambda v: v.item())),       # numpy scalars
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_block(path: Path) -> tuple[list[dict], dict]:
    """Read back what save_block wrote: (nuclei, counters)."""
    with np.load(path, allow_pickle=False) as data:
        d = {k: data[k] for k in data.files}
    ring_starts = np.concatenate([[0], d["ring_ends"][:-1]]).astype(np.int64)
    mask_starts = np.concatenate([[0], d["mask_ends"][:-1]]).astype(np.int64)
    nuclei, ring = [], 0
    for i in range(len(d["scores"])):
        rings = []
        for _ in range(int(d["ring_count"][i])):
            rings.append(d["ring_xy"][ring_starts[ring]:d["ring_ends"][ring]].tolist())
            ring += 1
        y1, x1, y2, x2 = (int(v) for v in d["frame_box"][i])
        mask = np.unpackbits(d["mask_bits"][mask_starts[i]:d["mask_ends"][i]],
                             count=(y2 - y1) * (x2 - x1)).reshape(y2 - y1, x2 - x1)
        nuclei.append({"rings": rings, "score": float(d["scores"][i]),
                       "agreement": float(d["agreement"][i]),
                       "centroid": tuple(d["centroid"][i]), "area": float(d["area"][i]),
                       "bbox": tuple(d["bbox"][i]), "frame_box": (y1, x1, y2, x2),
                       "mask": mask.astype(bool)})
    return nuclei, json.loads(str(d["stats"]))
