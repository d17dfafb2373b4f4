"""Files on disk: images, label maps, float maps, run records, atomic writes, batches.

Every pipeline stage reads and writes through this module, so that the formats documented in
docs/formats.md hold everywhere and bad input always fails the same way: one `InputError`
naming the file and the problem.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from nucseg._version import __version__

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_EXTENSIONS = (".tif", ".tiff", ".png", ".npy")


class InputError(Exception):
    """A user-facing problem with an input file; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):                   # pickled by path and problem (Dask tasks)
        return type(self), (self.path, self.problem)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read_array(path: Path) -> np.ndarray:
    """Decode any supported raster; TIFFs via tifffile (exact dtypes), the rest via Pillow."""
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    tiff_problem = None
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.ndarray):      # an .npz archive under a .npy name
                data.close()
                raise InputError(path, "not a .npy array (an .npz archive?)")
        else:
            data = None
            if suffix in (".tif", ".tiff"):
                import tifffile

                try:
                    data = tifffile.imread(path)
                except Exception as exc:  # e.g. a codec tifffile lacks: Pillow may read it
                    tiff_problem = str(exc).split("\n")[0][:120]
            if data is None:
                from PIL import Image

                with Image.open(path) as im:
                    data = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's problem
        if tiff_problem and ("corrupt" in tiff_problem or "strip" in tiff_problem
                             or "tile" in tiff_problem):
            raise InputError(path, f"truncated or corrupted TIFF ({tiff_problem})") from None
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    if data.size == 0:
        raise InputError(path, "no pixel data (truncated or empty file?)")
    if data.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported data type {data.dtype}")
    return data


def _read_plane(path: Path, problem: str) -> np.ndarray:
    """A 2-D raster; a trailing channel axis of 1 is dropped, anything else is the file's
    `problem` (reported with its shape)."""
    data = _read_array(path)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise InputError(path, f"{problem}, got shape {data.shape}")
    return data


def read_rgb(path) -> np.ndarray:
    """An H&E tile as HxWx3 uint8; RGBA loses alpha with a warning, anything else is an error."""
    path = Path(path)
    image = _read_array(path)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        raise InputError(path, "grayscale image; an RGB H&E image is required")
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise InputError(path, f"unsupported image shape {image.shape}; expected HxWx3 RGB")
    if image.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {image.dtype}; expected 8-bit RGB")
    if min(image.shape[:2]) < 2:
        raise InputError(path, f"image is too small ({image.shape[0]}x{image.shape[1]} px)")
    if image.shape[-1] == 4:
        warnings.warn(f"{path}: RGBA image, alpha channel dropped", stacklevel=2)
        image = image[..., :3]
    return np.ascontiguousarray(image)


MAX_LABEL_ID = int(np.iinfo(np.int32).max)


def read_labels(path) -> np.ndarray:
    """A 2-D instance label map (0 = background) as int32.

    Ids must be whole numbers in 0 .. 2^31 - 1: larger ids would wrap onto small ones in any
    int32 or float32 step and silently merge two nuclei, so they are refused, never cast.
    """
    path = Path(path)
    labels = _read_plane(path, "label map must be 2-D")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.isfinite(labels).all():
            raise InputError(path, "label map holds NaN or infinite values")
        if np.any(np.mod(labels, 1) != 0):
            raise InputError(path, f"label map must hold integers (whole-number ids), got "
                                   f"fractional {labels.dtype} values")
    if labels.min() < 0:
        raise InputError(path, f"label map has negative ids (min {labels.min():.0f})")
    if float(labels.max()) > MAX_LABEL_ID:
        raise InputError(path, f"label id {labels.max():.0f} is above the supported maximum "
                               f"{MAX_LABEL_ID} (2^31 - 1); renumber the nuclei 1..N")
    return labels.astype(np.int32, copy=False)


def read_image_and_labels(image_path, label_path) -> tuple[np.ndarray, np.ndarray]:
    """A training pair: the RGB tile and its label map, which must have the tile's size."""
    rgb = read_rgb(image_path)
    labels = read_labels(label_path)
    if labels.shape != rgb.shape[:2]:
        raise InputError(label_path, f"label map is {labels.shape[0]}x{labels.shape[1]} but its "
                                     f"image {Path(image_path).name} is "
                                     f"{rgb.shape[0]}x{rgb.shape[1]}")
    return rgb, labels


def read_float_map(path) -> np.ndarray:
    """A single-channel float map (hematoxylin density, distance in px) as float32 HxW.

    Both kinds are finite and non-negative by definition; one NaN would zero the whole channel
    once scaled, so NaN, infinite and negative values are refused.
    """
    path = Path(path)
    data = _read_plane(path, "expected a single-channel map")
    data = data.astype(np.float32, copy=False)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(path, f"map holds {int(bad.sum())} NaN or infinite value(s); values "
                               "must be finite")
    if data.min() < 0:
        raise InputError(path, f"map holds negative values (min {float(data.min()):.3g}); "
                               "distance and hematoxylin maps are >= 0")
    return data


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; rename onto `path` only if the block succeeds.

    A crash or an error never leaves a partial output under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes files 0600; give outputs the usual umask-based mode
            os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_file_mode() -> int:
    """The mode open() would give a new file: 0666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def label_dtype(max_id: int) -> np.dtype:
    """uint16 while ids fit (what most viewers expect), uint32 beyond 65535."""
    return np.dtype(np.uint16) if max_id <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def write_labels(path, labels: np.ndarray) -> Path:
    """Write an instance label map as a uint16 (or uint32) TIFF, atomically."""
    import tifffile

    labels = np.asarray(labels)
    max_id = int(labels.max()) if labels.size else 0
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(label_dtype(max_id)), compression="zlib")
    return Path(path)


def write_float_map(path, data: np.ndarray) -> Path:
    """Write a single-channel float32 TIFF, atomically."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(data, dtype=np.float32), compression="zlib")
    return Path(path)


def write_rgb(path, image: np.ndarray) -> Path:
    """Write an RGB uint8 image (PNG/TIFF/JPEG by suffix), atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
            tmp, format=Image.registered_extensions()[path.suffix.lower()])
    return path


# ---------------------------------------------------------------------------------------------
# names, records, batches
# ---------------------------------------------------------------------------------------------
def output_path(outdir, input_path, suffix: str) -> Path:
    """`<outdir>/<input stem><suffix>`, e.g. suffix '_hstain.tif'."""
    return Path(outdir) / f"{Path(input_path).stem}{suffix}"


def label_stem(path) -> str:
    """A label map's stem without a trailing `_labels`: the name its outputs (distance map,
    targets) take, so that they pair with the image."""
    stem = Path(path).stem
    return stem.removesuffix("_labels") or stem


def expand_inputs(paths: Iterable, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                  unique_stems: bool = True, name: Callable[[Path], str] | None = None
                  ) -> list[Path]:
    """Files as given, directories expanded to their files with a known extension (sorted).

    A path that does not exist is an error before any work. Outputs are named by input stem
    (or by `name`, e.g. label_stem), so two inputs with one name (a/x.tif, b/x.png; x.tif and
    x_labels.tif under label_stem) are refused rather than written over each other
    (`unique_stems`).
    """
    name = name or (lambda f: f.stem)
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir()
                                if f.is_file() and f.suffix.lower() in extensions))
        elif not p.exists():
            raise InputError(p, "no such file or directory")
        else:
            found.append(p)
    if unique_stems:
        seen: dict[str, Path] = {}
        for f in found:
            key = name(f)
            if key in seen and seen[key].resolve() != f.resolve():
                raise InputError(f, f"has the same stem as {seen[key]} (outputs named "
                                    f"'{key}'), so one would overwrite the other")
            seen.setdefault(key, f)
        found = [f for f in found if seen[name(f)] is f or seen[name(f)].resolve() != f.resolve()]
    return found


def pair_by_stem(a_files: Sequence[Path], b_files: Sequence[Path],
                 b_suffixes: Sequence[str] = ("",)) -> tuple[list[tuple[Path, Path]], list[Path],
                                                             list[Path]]:
    """Pair files whose stems match (a B stem may carry one of `b_suffixes`, e.g. '_labels').

    Returns (pairs, unpaired a files, unpaired b files).
    """
    def key(f: Path) -> str:
        stem = f.stem
        for s in sorted(b_suffixes, key=len, reverse=True):
            if s and stem.endswith(s):
                return stem[: -len(s)]
        return stem

    b_by_stem = {key(f): f for f in b_files}
    pairs, lonely_a = [], []
    for f in a_files:
        if f.stem in b_by_stem:
            pairs.append((f, b_by_stem.pop(f.stem)))
        else:
            lonely_a.append(f)
    return pairs, lonely_a, sorted(b_by_stem.values())


def read_epoch_log(path, keep_epochs: int) -> list[dict]:
    """The rows of a training log CSV (column `epoch`) up to `keep_epochs`: what a resumed
    run keeps of its log."""
    import csv

    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if int(row["epoch"]) <= keep_epochs]


def read_csv_table(path, required: Sequence[str], what: str,
                   may_be_empty: Sequence[str] = ()) -> list[tuple[int, dict]]:
    """(line number, row) of a user's CSV file with a header, keys and values stripped.

    The one reader of user CSV tables (metadata, class tables, nuclei tables): a missing
    file, undecodable text, a missing column or a row without a value in a required column
    (other than `may_be_empty`) is one InputError naming the file (and the line).
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or [] if f]
            missing = [c for c in required if c not in fields]
            if missing:
                raise InputError(path, f"{what} needs the column(s) {', '.join(missing)}; "
                                       f"found {', '.join(fields) or 'none'}")
            rows = []
            for row in reader:
                row = {k.strip(): (v or "").strip() for k, v in row.items()
                       if isinstance(k, str)}          # key None: the surplus fields
                if not any(row.values()):
                    continue                        # a blank line
                empty = [c for c in required if not row.get(c) and c not in may_be_empty]
                if empty:
                    raise InputError(path, f"line {reader.line_num}: no value for "
                                           f"{', '.join(empty)}")
                rows.append((reader.line_num, row))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read {what} ({exc})") from None
    return rows


def write_csv_rows(path, rows: Sequence[dict], fields: Sequence[str]) -> Path:
    """A CSV with a header, atomically."""
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fields))
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_yaml_mapping(path, what: str) -> dict:
    """A YAML file that must hold a mapping (an empty file is {}); unreadable text, bad YAML
    or another kind of document is one InputError naming the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, f"unreadable {what} ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"not a {what}: expected a YAML mapping")
    return data


def read_tagged_yaml(path, fmt: str, what: str) -> dict:
    """A YAML mapping whose `format:` is `fmt` (manifests, threshold files); anything else is
    one InputError naming the file."""
    data = read_yaml_mapping(path, what)
    if data.get("format") != fmt:
        raise InputError(path, f"not a {what} (format: {fmt})")
    return data


def make_record(command: str, inputs: Iterable = (), options: dict | None = None,
                checksums: bool = False, **extra) -> dict:
    """What a run did, to be written beside its outputs: inputs, options, version, time."""
    record = {
        "command": command,
        "nucseg_version": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "argv": sys.argv[1:],
        "inputs": [
            {"path": str(p), "sha256": sha256(p)} if checksums else str(p) for p in inputs
        ],
        "options": _plain(options or {}),
    }
    record.update(_plain(extra))
    return record


def write_record(path, record: dict) -> Path:
    """Write a run record as YAML (or JSON when the name ends in .json), atomically."""
    import json

    import yaml

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            if path.suffix == ".json":
                json.dump(_plain(record), fh, indent=1)
            else:
                yaml.safe_dump(_plain(record), fh, sort_keys=False)
    return path


def _plain(value):
    """Convert numpy scalars, paths and tuples to YAML/JSON-safe builtins."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def os_error_line(exc: OSError) -> str:
    """`<file>: <problem>` for an OSError (a file in the way of a directory, no permission,
    a full disk), without Python's '[Errno N]' decoration."""
    if exc.filename is None:        # raised with a message of its own
        return str(exc)
    where = exc.filename
    if getattr(exc, "filename2", None):
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def run_batch(items: Sequence, work: Callable, desc: str = "", progress: bool = True) -> list[str]:
    """Apply `work` to each item with a progress bar; a bad item is reported, not fatal.

    Returns the error lines of the items that failed (empty when all succeeded).
    """
    from tqdm import tqdm

    failures = []
    for item in tqdm(items, desc=desc, unit="file", disable=not progress or len(items) < 2,
                     file=sys.stderr):
        try:
            work(item)
        except (InputError, OSError) as exc:      # OSError: e.g. a folder where an output goes
            line = str(exc) if isinstance(exc, InputError) else os_error_line(exc)
            failures.append(line)
            tqdm.write(f"error: {line}", file=sys.stderr)
    return failures
