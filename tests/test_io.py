"""nucseg.io: bad inputs fail with one clear error, writes are atomic, label dtypes."""
import os
import stat

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucseg import io
from nucseg.io import InputError, read_labels, read_rgb, write_float_map, write_labels


def test_rgba_drops_alpha_with_a_warning(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with pytest.warns(UserWarning, match="rgba.png: RGBA image, alpha channel dropped"):
        rgb = read_rgb(path)
    np.testing.assert_array_equal(rgb, rgba[..., :3])


def write_png(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("name, make, problem", [
    ("gray.png", lambda p: write_png(p, np.zeros((8, 8), np.uint8)), "grayscale image"),
    ("gray16.png", lambda p: write_png(p, np.zeros((8, 8), np.uint16)), "grayscale image"),
    ("rgb16.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8, 3), np.uint16)),
     "unsupported pixel type uint16"),
    ("one.png", lambda p: write_png(p, np.zeros((1, 1, 3), np.uint8)), "too small (1x1 px)"),
    ("junk.png", lambda p: p.write_bytes(b"not an image at all"), "cannot read image"),
    ("empty.tif", lambda p: p.write_bytes(b""), "cannot read image"),
    ("missing.png", lambda p: None, "file not found"),
])
def test_bad_images_name_the_file_and_the_problem(tmp_path, name, make, problem):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError) as info:
        read_rgb(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_labels_round_trip_uint16_and_uint32_above_65535(tmp_path):
    small = np.array([[0, 1], [65535, 2]], np.int64)
    write_labels(tmp_path / "small.tif", small)
    assert tifffile.imread(tmp_path / "small.tif").dtype == np.uint16
    np.testing.assert_array_equal(read_labels(tmp_path / "small.tif"), small)

    big = np.array([[0, 1], [65536, 70_000]], np.int64)
    write_labels(tmp_path / "big.tif", big)
    stored = tifffile.imread(tmp_path / "big.tif")
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored, big)
    np.testing.assert_array_equal(read_labels(tmp_path / "big.tif"), big)


def test_labels_read_png_and_npy_and_reject_bad_maps(tmp_path):
    labels = np.array([[0, 3], [7, 300]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "l.png"), labels)
    np.save(tmp_path / "l.npy", labels.astype(np.int64))
    np.testing.assert_array_equal(read_labels(tmp_path / "l.npy"), labels)
    np.save(tmp_path / "neg.npy", np.array([[0, -1]]))
    with pytest.raises(InputError, match="negative ids"):
        read_labels(tmp_path / "neg.npy")
    np.save(tmp_path / "rgb.npy", np.zeros((2, 2, 3), np.int32))
    with pytest.raises(InputError, match="must be 2-D"):
        read_labels(tmp_path / "rgb.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="cannot read image"):  # no pickles are loaded
        read_labels(tmp_path / "obj.npy")


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def half_write(path, data, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_float_map(tmp_path / "map.tif", np.zeros((4, 4)))
    with pytest.raises(OSError, match="disk full"):
        write_labels(tmp_path / "labels.tif", np.zeros((4, 4), np.int32))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "map.tif"
    write_float_map(target, np.ones((3, 3)))
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    np.testing.assert_array_equal(tifffile.imread(target), np.ones((3, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["map.tif"]


def test_outputs_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_float_map(tmp_path / "m.tif", np.zeros((2, 2)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
