"""PanNuke folds -> nucseg training directories (images, label maps, class table, organs).

A PanNuke fold holds images.npy (N x 256 x 256 x 3, RGB 0-255), masks.npy (N x 256 x 256 x 6:
instance ids per class channel, neoplastic, inflammatory, connective, dead, epithelial, then
background) and types.npy (the organ of each image). The files may sit in nested folders, as
in the official archives ("Fold 1/images/fold1/images.npy"). The output trains a Mask R-CNN
with NUM_CLASSES = 1 + 5 (joint detection and classification):

    OUT/images/<fold>_<index>.png    OUT/labels/<fold>_<index>.tif
    OUT/classes.csv  (image, label, class_id, class_name)   -> `nucseg train --classes`
    OUT/metadata.csv (id, organ)
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.io import InputError

CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


@dataclass
class PanNukeImport:
    images: int
    instances: int
    per_class: dict
    outdir: Path


def find_fold_files(fold_dir) -> dict:
    """Paths of images.npy, masks.npy and types.npy anywhere under fold_dir."""
    fold_dir = Path(fold_dir)
    if not fold_dir.is_dir():
        raise InputError(fold_dir, "not a directory")
    found = {}
    for name in ("images", "masks", "types"):
        hits = sorted(fold_dir.rglob(f"{name}.npy"))
        if not hits:
            raise InputError(fold_dir, f"no {name}.npy below this folder (PanNuke fold layout)")
        if len(hits) > 1:
            raise InputError(fold_dir, f"several {name}.npy files ({hits[0]}, {hits[1]}); "
                                       "point at one fold")
        found[name] = hits[0]
    return found


def _load(path, mmap=True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise InputError(path, f"cannot read without pickle ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"not a NumPy file ({exc})") from None


def masks_to_labels(masks: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One image's H x W x 6 PanNuke masks -> (label map int32, class id per label 1..N).

    Ids are renumbered 1..N in channel order; a pixel claimed by two channels keeps the first.
    """
    labels = np.zeros(masks.shape[:2], np.int32)
    classes = []
    for channel in range(len(CLASS_NAMES)):
        plane = np.asarray(masks[..., channel])
        for instance in np.unique(plane):
            if instance == 0:
                continue
            free = (plane == instance) & (labels == 0)
            if not free.any():
                continue
            classes.append(channel + 1)
            labels[free] = len(classes)
    return labels, classes


def _merge_table(path: Path, header: tuple, rows: list, stems: set) -> None:
    """Write rows into a CSV table, keeping the rows of other images already there, so several
    folds can be imported into one directory (re-importing a fold replaces its rows)."""
    from nucseg.io import atomic_path

    kept = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != header:
                raise InputError(path, f"exists but its header is not {','.join(header)}")
            kept = [row for row in reader if row and row[0] not in stems]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(kept)
            writer.writerows(rows)


def import_pannuke(fold_dir, outdir, progress: bool = True) -> PanNukeImport:
    """Convert one PanNuke fold; every output file is written atomically."""
    from tqdm import tqdm

    from nucseg.io import write_labels, write_rgb

    files = find_fold_files(fold_dir)
    images = _load(files["images"])
    masks = _load(files["masks"])
    types = _load(files["types"], mmap=False)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(files["images"], f"expected N x H x W x 3, got {images.shape}")
    if masks.shape[:3] != images.shape[:3] or masks.ndim != 4 or masks.shape[-1] != 6:
        raise InputError(files["masks"], f"expected {images.shape[:3] + (6,)}, got {masks.shape}")
    if types.shape != (images.shape[0],):
        raise InputError(files["types"], f"expected {images.shape[0]} organ names, got shape "
                                         f"{types.shape}")
    outdir = Path(outdir)
    prefix = re.sub(r"[^A-Za-z0-9]+", "", Path(fold_dir).name).lower() or "pannuke"
    rows, organs = [], []
    per_class = {name: 0 for name in CLASS_NAMES}
    for i in tqdm(range(images.shape[0]), desc="pannuke", unit="image", disable=not progress):
        stem = f"{prefix}_{i:05d}"
        rgb = np.clip(np.rint(np.asarray(images[i], np.float64)), 0, 255).astype(np.uint8)
        labels, classes = masks_to_labels(np.asarray(masks[i]))
        write_rgb(outdir / "images" / f"{stem}.png", rgb)
        write_labels(outdir / "labels" / f"{stem}.tif", labels)
        for label, class_id in enumerate(classes, start=1):
            rows.append((stem, label, class_id, CLASS_NAMES[class_id - 1]))
            per_class[CLASS_NAMES[class_id - 1]] += 1
        organs.append((stem, str(types[i])))
    stems = {organ_row[0] for organ_row in organs}
    _merge_table(outdir / "classes.csv", ("image", "label", "class_id", "class_name"), rows,
                 stems)
    _merge_table(outdir / "metadata.csv", ("id", "organ"), organs, stems)
    return PanNukeImport(images.shape[0], len(rows), per_class, outdir)
