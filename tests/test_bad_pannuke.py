"""Bad input to `nucseg import pannuke` (arrays, files, folds, tables) is refused cleanly.

The project's rule: one line `error: <file>: <problem>` on stderr, a non-zero exit (1 when a
batch went on past the bad file, 2 for an error before any work), no traceback, and no output
file under a final or temporary (`.<name>.*.part*`) name for the bad input; in a batch the good
inputs are still written. Every case here was a fault-injection finding or belongs to the same
class (non-finite or out-of-range values, wrong shapes and types, truncated or foreign files).
"""
from pathlib import Path

import numpy as np
import pytest

from import_checks import assert_refused, error_lines, files_under, invoke


# ---------------------------------------------------------------------------------------------
# PanNuke
# ---------------------------------------------------------------------------------------------
N, H, W = 2, 8, 8


def good_arrays() -> dict:
    images = np.full((N, H, W, 3), 120.0)               # PanNuke stores floats
    masks = np.zeros((N, H, W, 6))
    masks[..., 5] = 1
    masks[0, 1:4, 1:4, 0] = 3
    masks[1, 4:7, 4:7, 2] = 9
    return {"images": images, "masks": masks, "types": np.array(["Breast", "Colon"])}


def write_fold(fold: Path, **replace) -> dict:
    """The three arrays in a fold folder; a bytes value is written as the file's content, None
    leaves the file out. Returns the paths."""
    arrays = good_arrays() | replace
    fold.mkdir(parents=True)
    paths = {}
    for name, value in arrays.items():
        paths[name] = fold / f"{name}.npy"
        if value is None:
            continue
        if isinstance(value, bytes):
            paths[name].write_bytes(value)
        else:
            np.save(paths[name], value, allow_pickle=True)
    return paths


def with_value(name: str, index, value, dtype=None) -> np.ndarray:
    array = good_arrays()[name].astype(dtype or np.float64)
    array[index] = value
    return array


def npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Unpickled:
    """Creates a file when unpickled: proves the importer never unpickles."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return Path.touch, (Path(self.sentinel),)


BAD_FOLDS = {
    # values (the fault-injection findings and their class)
    "images_nan": ("images", with_value("images", (1, 2, 3, 0), np.nan),
                   "image 1 has NaN or infinite pixel values"),
    "images_inf": ("images", with_value("images", (0, 0, 0, 2), -np.inf),
                   "image 0 has NaN or infinite pixel values"),
    "images_above_255": ("images", with_value("images", (1, 0, 0, 0), 256.0),
                         "image 1 has pixel values outside 0..255 (min 120, max 256)"),
    "images_negative": ("images", with_value("images", (0, 0, 0, 0), -1, np.int16),
                        "image 0 has pixel values outside 0..255"),
    "images_uint16": ("images", with_value("images", (1, 0, 0, 0), 4000, np.uint16),
                      "image 1 has pixel values outside 0..255"),
    "masks_fractional": ("masks", good_arrays()["masks"] + 0.5,
                         "masks of image 0 hold fractional values"),
    "masks_nan": ("masks", with_value("masks", (1, 0, 0, 0), np.nan),
                  "masks of image 1 hold NaN or infinite values"),
    "masks_negative": ("masks", with_value("masks", (1, 0, 0, 1), -4),
                       "masks of image 1 hold negative instance ids"),
    "masks_negative_int": ("masks", with_value("masks", (0, 0, 0, 1), -4, np.int32),
                           "masks of image 0 hold negative instance ids"),
    # shapes, counts, dtypes
    "images_3d": ("images", np.zeros((N, H, W)), "expected N x H x W x 3 RGB images"),
    "images_rgba": ("images", np.zeros((N, H, W, 4)), "got shape (2, 8, 8, 4)"),
    "images_none": ("images", np.zeros((0, H, W, 3)), "holds no images"),
    "images_text": ("images", np.full((N, H, W, 3), "1"), "images must be numbers"),
    "masks_5_channels": ("masks", np.zeros((N, H, W, 5)), "expected N x H x W x 6 masks"),
    "masks_3d": ("masks", np.zeros((N, H, W)), "expected N x H x W x 6 masks"),
    "masks_count": ("masks", np.zeros((N + 1, H, W, 6)),
                    "holds masks of 3 images but images.npy holds 2 images"),
    "masks_size": ("masks", np.zeros((N, H, W + 1, 6)), "masks are 8x9 px but the images"),
    "masks_bool": ("masks", np.zeros((N, H, W, 6), bool), "masks must hold instance ids"),
    "masks_complex": ("masks", np.zeros((N, H, W, 6), complex), "masks must hold instance"),
    "types_count": ("types", np.array(["Breast"]), "expected 2 organ names"),
    "types_2d": ("types", np.array([["Breast"], ["Colon"]]), "got shape (2, 1)"),
    "types_numbers": ("types", np.array([1, 2]), "expected organ names (strings)"),
    "types_object": ("types", np.array(["Breast", None], dtype=object),
                     "holds Python objects (dtype object); refused"),
    "images_object": ("images", np.empty((N, H, W, 3), dtype=object),
                      "holds Python objects"),
    "images_structured": ("images", np.zeros((N, H, W, 3), dtype=[("a", "f8")]),
                          "structured dtype"),
    # broken files
    "masks_empty_file": ("masks", b"", "empty file (0 bytes)"),
    "masks_truncated": ("masks", npy_bytes(good_arrays()["masks"])[:1000],
                        "truncated: 1000 bytes, but its (2, 8, 8, 6) float64 array needs"),
    "images_header_cut": ("images", npy_bytes(good_arrays()["images"])[:30],
                          "not a NumPy .npy file"),
    "types_garbage": ("types", b"Breast\nColon\n", "not a NumPy .npy file"),
    "images_npz": ("images", b"PK\x03\x04" + bytes(100), "not a NumPy .npy file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FOLDS))
def test_bad_pannuke_fold_is_one_line_and_writes_nothing(tmp_path, name):
    which, value, problem = BAD_FOLDS[name]
    paths = write_fold(tmp_path / "Fold 1", **{which: value})
    out = tmp_path / "out"
    result = invoke("import", "pannuke", tmp_path / "Fold 1", "-o", out, "--no-progress")
    assert_refused(result, paths[which], problem, exit_code=2)
    assert len(error_lines(result)) == 1
    assert not out.exists()


def test_object_arrays_are_never_unpickled(tmp_path):
    sentinel = tmp_path / "unpickled"
    types = np.array([Unpickled(sentinel), "Colon"], dtype=object)
    paths = write_fold(tmp_path / "fold", types=types)
    assert not sentinel.exists()
    result = invoke("import", "pannuke", tmp_path / "fold", "-o", tmp_path / "out")
    assert_refused(result, paths["types"], "holds Python objects", exit_code=2)
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_bad_fold_leaves_an_earlier_import_untouched(tmp_path):
    """A bad fold imported into a directory holding a good one changes nothing there."""
    write_fold(tmp_path / "Fold 1")
    out = tmp_path / "out"
    first = invoke("import", "pannuke", tmp_path / "Fold 1", "-o", out, "--no-progress")
    assert first.exit_code == 0, first.output
    before = {name: (out / name).read_bytes() for name in files_under(out)}
    assert "images/fold1_00001.png" in before and "classes.csv" in before
    paths = write_fold(tmp_path / "Fold 2", masks=good_arrays()["masks"] + 0.5)
    result = invoke("import", "pannuke", tmp_path / "Fold 2", "-o", out, "--no-progress")
    assert_refused(result, paths["masks"], "fractional values", exit_code=2)
    assert {name: (out / name).read_bytes() for name in files_under(out)} == before


@pytest.mark.parametrize("layout, problem", [
    ("missing", "directory not found"),
    ("file", "not a directory"),
    ("empty", "no images.npy below this folder"),
    ("no_masks", "no masks.npy below this folder"),
    ("dir_named_npy", "no types.npy below this folder"),
    ("two_images", "several images.npy files"),
])
def test_fold_without_the_files_is_one_line(tmp_path, layout, problem):
    fold = tmp_path / "fold"
    if layout == "file":
        fold.write_text("x")
    elif layout == "empty":
        fold.mkdir()
    elif layout == "no_masks":
        write_fold(fold, masks=None)
    elif layout == "dir_named_npy":
        write_fold(fold, types=None)
        (fold / "sub" / "types.npy").mkdir(parents=True)
    elif layout == "two_images":
        write_fold(fold)
        (fold / "copy").mkdir()
        np.save(fold / "copy" / "images.npy", good_arrays()["images"])
    out = tmp_path / "out"
    result = invoke("import", "pannuke", fold, "-o", out, "--no-progress")
    assert_refused(result, fold, problem, exit_code=2)
    assert not out.exists()


@pytest.mark.parametrize("case", ["outdir_is_file", "under_a_file", "images_is_file",
                                  "bad_table_header", "table_is_dir", "table_not_text"])
def test_pannuke_output_directory_problems_write_nothing(tmp_path, case):
    write_fold(tmp_path / "fold")
    out = tmp_path / "out"
    bad = out
    if case == "outdir_is_file":
        out.write_text("x")
    elif case == "under_a_file":
        out.write_text("x")
        out = out / "sub"
    else:
        out.mkdir()
        if case == "images_is_file":
            bad = out / "images"
            bad.write_text("x")
        elif case == "bad_table_header":
            bad = out / "classes.csv"
            bad.write_text("a,b\n1,2\n")
        elif case == "table_is_dir":
            bad = out / "metadata.csv"
            bad.mkdir()
        else:
            bad = out / "classes.csv"
            bad.write_bytes(b"\xff\xfe\x00\x81 binary")
    problems = {"outdir_is_file": "exists and is not a directory",
                "under_a_file": "exists and is not a directory",
                "images_is_file": "exists and is not a directory",
                "bad_table_header": "exists but its header is not image,label,class_id",
                "table_is_dir": "exists and is not a file",
                "table_not_text": "cannot read this existing table"}
    before = files_under(tmp_path)
    result = invoke("import", "pannuke", tmp_path / "fold", "-o", out, "--no-progress")
    assert_refused(result, bad, problems[case], exit_code=2)
    assert files_under(tmp_path) == before


def test_good_fold_still_imports_in_the_nested_layout(tmp_path):
    """The checks accept what PanNuke ships: float64 images and masks, unicode organ names,
    nested folders; uint8 images and integer masks too."""
    arrays = good_arrays()
    fold = tmp_path / "Fold 3"
    (fold / "images" / "fold3").mkdir(parents=True)
    (fold / "masks" / "fold3").mkdir(parents=True)
    np.save(fold / "images" / "fold3" / "images.npy", arrays["images"].astype(np.uint8))
    np.save(fold / "images" / "fold3" / "types.npy", arrays["types"].astype("S"))
    np.save(fold / "masks" / "fold3" / "masks.npy", arrays["masks"].astype(np.int32))
    out = tmp_path / "out"
    result = invoke("import", "pannuke", fold, "-o", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "wrote 2 images with 2 nuclei" in result.output
    assert {"images/fold3_00000.png", "labels/fold3_00001.tif", "classes.csv",
            "metadata.csv", "import_pannuke_record.yaml"} <= files_under(out)
    assert "Colon" in (out / "metadata.csv").read_text()
