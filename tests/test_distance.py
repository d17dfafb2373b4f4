"""distance labels: per-instance EDT, model scaling, speed, CLI."""
import time

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from nucseg.cli import main
from nucseg.distance import label_distance_map, scale_to_uint8_range

LABELS = "data/monuseg2018/labels/TCGA-HE-7130-01Z-00-DX1.png"  # in ../shared
LABELS_CROP = "labels/TCGA-HE-7130-01Z-00-DX1_r300-811_c300-811.png"  # in tests/data/monuseg2018


def brute_force(labels):
    """Whole-image EDT of each nucleus alone: the definition, slowly."""
    out = np.zeros(labels.shape, np.float64)
    for label_id in np.unique(labels[labels > 0]):
        inside = labels == label_id
        out[inside] = ndimage.distance_transform_edt(inside)[inside]
    return out


@pytest.fixture(scope="module")
def real_labels(data_dir):
    """Rows and columns 300-811 of the tile's published label map."""
    return np.asarray(Image.open(data_dir / LABELS_CROP)).astype(np.int32)


@pytest.fixture(scope="module")
def whole_labels(shared_dir):
    return np.asarray(Image.open(shared_dir / LABELS)).astype(np.int32)


def test_equals_per_nucleus_edt_on_real_labels(real_labels):
    crop = real_labels[0:300, 0:300]  # tile 300:600: ~100 nuclei, touching and border-cut ones
    dist = label_distance_map(crop)
    assert dist.dtype == np.float32
    np.testing.assert_allclose(dist, brute_force(crop), rtol=0, atol=1e-5)


def test_touching_nuclei_are_separated():
    labels = np.zeros((9, 12), np.int32)
    labels[2:7, 1:6] = 1
    labels[2:7, 6:11] = 2  # shares an edge with nucleus 1
    dist = label_distance_map(labels)
    np.testing.assert_array_equal(dist[4, 1:11], [1, 2, 3, 2, 1, 1, 2, 3, 2, 1])
    assert dist[labels == 0].max() == 0


def test_image_border_is_not_an_edge():
    labels = np.zeros((6, 6), np.int32)
    labels[0:3, 0:3] = 7
    dist = label_distance_map(labels)
    np.testing.assert_array_equal(dist[0, 0:3], [3, 2, 1])  # would be 1, 1, 1 at an edge
    np.testing.assert_array_equal(dist[0:3, 0], [3, 2, 1])


def test_sparse_and_huge_ids():
    labels = np.zeros((20, 20), np.uint32)
    labels[2:6, 2:6] = 70_000
    labels[10:15, 10:15] = 2**31 + 5
    labels[10:15, 15:18] = 3
    np.testing.assert_allclose(label_distance_map(labels), brute_force(labels), atol=1e-6)
    # an int32 id near the limit must not make find_objects allocate 2e9 slots
    sparse = np.zeros((20, 20), np.int32)
    sparse[2:6, 2:6] = 2_000_000_000
    sparse[6:9, 2:6] = 5  # touching it
    np.testing.assert_allclose(label_distance_map(sparse), brute_force(sparse), atol=1e-6)


def test_empty_map_and_bad_input():
    assert not label_distance_map(np.zeros((5, 5), np.int32)).any()
    with pytest.raises(ValueError, match="2-D"):
        label_distance_map(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="integers"):
        label_distance_map(np.zeros((2, 2), np.float32))


def test_fast_on_a_1000x1000_map(whole_labels):
    n = len(np.unique(whole_labels)) - 1
    assert whole_labels.shape == (1000, 1000) and n > 700
    start = time.perf_counter()
    label_distance_map(whole_labels)
    assert time.perf_counter() - start < 1.0


def test_scale_to_uint8_range_is_the_mask_rcnn_plus_scaling(real_labels):
    dist = label_distance_map(real_labels)
    channel = scale_to_uint8_range(dist)
    assert channel.dtype == np.uint8 and channel.max() == 255
    np.testing.assert_array_equal(channel, (dist / dist.max() * 255).astype(np.uint8))
    assert not scale_to_uint8_range(np.zeros((4, 4), np.float32)).any()


def test_cli_names_output_after_the_image_stem(tmp_path, real_labels):
    src = tmp_path / "tile_labels.tif"
    tifffile.imwrite(src, real_labels[:200, :200].astype(np.uint16))
    other = tmp_path / "other.npy"
    np.save(other, real_labels[200:300, 200:300])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["distance", "labels", str(src), str(other),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(tifffile.imread(out / "tile_dist.tif"),
                               brute_force(real_labels[:200, :200]), atol=1e-5)
    assert tifffile.imread(out / "other_dist.tif").dtype == np.float32
    record = yaml.safe_load((out / "distance_labels_record.yaml").read_text())
    assert record["command"] == "distance labels" and len(record["outputs"]) == 2


def test_cli_reports_bad_label_maps_and_goes_on(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((4, 4), 0.5, np.float32))
    good = tmp_path / "good.npy"
    np.save(good, np.eye(4, dtype=np.int32))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["distance", "labels", str(bad), str(good),
                                       "-o", str(out)])
    assert result.exit_code == 1
    assert f"{bad}: label map must hold integers" in result.output
    assert (out / "good_dist.tif").is_file() and not (out / "bad_dist.tif").exists()
