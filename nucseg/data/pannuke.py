"""PanNuke folds -> nucseg training directories (images, label maps, class table, organs).

A PanNuke fold holds images.npy (N x 256 x 256 x 3, RGB 0-255), masks.npy (N x 256 x 256 x 6:
instance ids per class channel, neoplastic, inflammatory, connective, dead, epithelial, then
background) and types.npy (the organ of each image). The files may sit in nested folders, as
in the official archives ("Fold 1/images/fold1/images.npy"). The output trains a Mask R-CNN
with NUM_CLASSES = 1 + 5 (joint detection and classification):

    OUT/images/<fold>_<index>.png    OUT/labels/<fold>_<index>.tif
    OUT/classes.csv  (image, label, class_id, class_name)   -> `nucseg train --classes`
    OUT/metadata.csv (id, organ)

All three arrays are checked before anything is written (shapes, dtypes, counts, values: see
docs/formats.md), so a bad fold leaves no output; they are read without pickle and
memory-mapped, and checked in blocks, so a whole fold (several GB) need not fit in memory.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.io import InputError

CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
TABLES = {"classes.csv": ("image", "label", "class_id", "class_name"),
          "metadata.csv": ("id", "organ")}
_CHUNK_BYTES = 64 << 20  # bytes of an array checked at once


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
        raise InputError(fold_dir, "not a directory" if fold_dir.exists() else
                         "directory not found")
    found = {}
    for name in ("images", "masks", "types"):
        hits = sorted(p for p in fold_dir.rglob(f"{name}.npy") if p.is_file())
        if not hits:
            raise InputError(fold_dir, f"no {name}.npy below this folder (PanNuke fold layout)")
        if len(hits) > 1:
            raise InputError(fold_dir, f"several {name}.npy files ({hits[0]}, {hits[1]}); "
                                       "point at one fold")
        found[name] = hits[0]
    return found


# ---------------------------------------------------------------------------------------------
# reading and checking the arrays
# ---------------------------------------------------------------------------------------------
def _read_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a .npy header, checked against the file size, without loading."""
    from numpy.lib import format as npy_format

    try:
        size = path.stat().st_size
        if size == 0:
            raise InputError(path, "empty file (0 bytes), not a NumPy .npy array")
        with open(path, "rb") as fh:
            try:
                version = npy_format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = npy_format.read_array_header_2_0(fh)
                else:  # 3.0 (utf-8 field names) has no public reader
                    shape, _, dtype = npy_format._read_array_header(fh, version)
            except (ValueError, EOFError, SyntaxError, TypeError) as exc:
                raise InputError(path, f"not a NumPy .npy file ({exc})") from None
            data_start = fh.tell()
    except OSError as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise InputError(path, f"holds Python objects (dtype {dtype}); refused, since reading "
                               "it would need pickle")
    needed = data_start + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size < needed:
        raise InputError(path, f"truncated: {size} bytes, but its {shape} {dtype} array needs "
                               f"{needed}")
    return tuple(shape), dtype


def _load(path, mmap=True) -> np.ndarray:
    """An array from a .npy file (memory-mapped when `mmap`), never unpickling anything."""
    path = Path(path)
    shape, dtype = _read_header(path)
    if dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(path, f"structured dtype {dtype}; expected a plain array")
    try:
        return np.load(path, mmap_mode="r" if mmap and int(np.prod(shape)) else None,
                       allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise InputError(path, f"cannot read without pickle ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"not a NumPy file ({exc})") from None


def _blocks(array: np.ndarray):
    """(first index, block in memory) over the first axis, about _CHUNK_BYTES at a time."""
    step = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, array.shape[0], step):
        yield start, np.asarray(array[start:start + step])


def _first(start: int, flags: np.ndarray) -> int:
    """Index in the fold of the first image with a flagged value in a block."""
    return start + int(np.flatnonzero(flags.reshape(flags.shape[0], -1).any(axis=1))[0])


def check_images(path, images: np.ndarray) -> None:
    """N x H x W x 3 numbers, finite and within 0..255 (N >= 1, H and W >= 2)."""
    if images.dtype.kind not in "uif":
        raise InputError(path, f"images must be numbers (uint8 or float), got dtype "
                               f"{images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(path, f"expected N x H x W x 3 RGB images, got shape {images.shape}")
    if images.shape[0] == 0:
        raise InputError(path, "holds no images (N = 0)")
    if min(images.shape[1:3]) < 2:
        raise InputError(path, f"images are {images.shape[1]}x{images.shape[2]} px; at least "
                               "2x2 expected")
    if images.dtype == np.uint8:
        return
    for start, block in _blocks(images):
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                raise InputError(path, f"image {_first(start, bad)} has NaN or infinite pixel "
                                       "values")
        bad = (block < 0) | (block > 255)
        if bad.any():
            index = _first(start, bad)
            raise InputError(path, f"image {index} has pixel values outside 0..255 (min "
                                   f"{np.min(images[index]):g}, max {np.max(images[index]):g})")


def check_masks(path, masks: np.ndarray, images_shape: tuple) -> None:
    """N x H x W x 6 (N, H, W as the images), finite, whole, non-negative instance ids."""
    if masks.dtype.kind not in "uif":
        raise InputError(path, f"masks must hold instance ids (integers or whole floats), got "
                               f"dtype {masks.dtype}")
    if masks.ndim != 4 or masks.shape[-1] != 6:
        raise InputError(path, f"expected N x H x W x 6 masks (5 classes + background), got "
                               f"shape {masks.shape}")
    if masks.shape[0] != images_shape[0]:
        raise InputError(path, f"holds masks of {masks.shape[0]} images but images.npy holds "
                               f"{images_shape[0]} images")
    if masks.shape[1:3] != images_shape[1:3]:
        raise InputError(path, f"masks are {masks.shape[1]}x{masks.shape[2]} px but the images "
                               f"are {images_shape[1]}x{images_shape[2]} px")
    if masks.dtype.kind == "u":
        return
    for start, block in _blocks(masks):
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                raise InputError(path, f"masks of image {_first(start, bad)} hold NaN or "
                                       "infinite values")
            bad = block != np.floor(block)
            if bad.any():
                raise InputError(path, f"masks of image {_first(start, bad)} hold fractional "
                                       "values; instance ids must be whole numbers")
        bad = block < 0
        if bad.any():
            raise InputError(path, f"masks of image {_first(start, bad)} hold negative "
                                   "instance ids")


def check_types(path, types: np.ndarray, count: int) -> list[str]:
    """One organ name per image (1-D strings, length N) -> a list of str."""
    if types.dtype.kind not in "US":
        raise InputError(path, f"expected organ names (strings), got dtype {types.dtype}")
    if types.shape != (count,):
        raise InputError(path, f"expected {count} organ names, one per image in images.npy, "
                               f"got shape {types.shape}")
    if types.dtype.kind == "S":
        try:
            return [t.decode("utf-8") for t in types.tolist()]
        except UnicodeDecodeError:
            raise InputError(path, "organ names are not UTF-8 text") from None
    return [str(t) for t in types.tolist()]


def check_outdir(outdir) -> None:
    """The output directory and its images/ and labels/ are directories (or do not exist yet);
    classes.csv and metadata.csv, where they exist, are tables this importer can merge into."""
    outdir = Path(outdir)
    for path in (outdir / "images", outdir / "labels"):     # outdir itself: nucseg.outdir
        if path.exists() and not path.is_dir():
            raise InputError(path, "exists and is not a directory")
    if outdir.is_dir() and not os.access(outdir, os.W_OK | os.X_OK):
        raise InputError(outdir, "output directory is not writable")
    for name, header in TABLES.items():
        _read_table(outdir / name, header)


def _read_table(path: Path, header: tuple) -> list:
    """The rows of an existing table with `header`; none if there is no table yet."""
    if not path.exists():
        return []
    if not path.is_file():
        raise InputError(path, "exists and is not a file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != header:
                raise InputError(path, f"exists but its header is not {','.join(header)}")
            return [row for row in reader if row]
    except (OSError, UnicodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read this existing table ({type(exc).__name__}: "
                               f"{exc})") from None


# ---------------------------------------------------------------------------------------------
# converting
# ---------------------------------------------------------------------------------------------
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

    kept = [row for row in _read_table(path, header) if row[0] not in stems]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(kept)
            writer.writerows(rows)


def load_fold(fold_dir) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """(files, images, masks, organ names) of a fold, every array checked; InputError else."""
    files = find_fold_files(fold_dir)
    images = _load(files["images"])
    check_images(files["images"], images)
    masks = _load(files["masks"])
    check_masks(files["masks"], masks, images.shape)
    organs = check_types(files["types"], _load(files["types"], mmap=False), images.shape[0])
    return files, images, masks, organs


def import_pannuke(fold_dir, outdir, progress: bool = True) -> PanNukeImport:
    """Convert one PanNuke fold; every output file is written atomically, and only once the
    whole fold and the output directory have passed their checks."""
    from tqdm import tqdm

    from nucseg.io import write_labels, write_rgb

    _, images, masks, organ_names = load_fold(fold_dir)
    check_outdir(outdir)
    outdir = Path(outdir)
    prefix = re.sub(r"[^A-Za-z0-9]+", "", Path(fold_dir).name).lower() or "pannuke"
    rows, organs = [], []
    per_class = {name: 0 for name in CLASS_NAMES}
    for i in tqdm(range(images.shape[0]), desc="pannuke", unit="image", disable=not progress):
        stem = f"{prefix}_{i:05d}"
        # values are checked to lie in 0..255; fractional ones (PanNuke stores floats) round
        rgb = np.rint(np.asarray(images[i], np.float64)).astype(np.uint8)
        labels, classes = masks_to_labels(np.asarray(masks[i]))
        write_rgb(outdir / "images" / f"{stem}.png", rgb)
        write_labels(outdir / "labels" / f"{stem}.tif", labels)
        for label, class_id in enumerate(classes, start=1):
            rows.append((stem, label, class_id, CLASS_NAMES[class_id - 1]))
            per_class[CLASS_NAMES[class_id - 1]] += 1
        organs.append((stem, organ_names[i]))
    stems = {organ_row[0] for organ_row in organs}
    _merge_table(outdir / "classes.csv", TABLES["classes.csv"], rows, stems)
    _merge_table(outdir / "metadata.csv", TABLES["metadata.csv"], organs, stems)
    return PanNukeImport(images.shape[0], len(rows), per_class, outdir)
