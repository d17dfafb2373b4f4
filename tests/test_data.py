"""Data side: PanNuke import, data sets and pre-processing, aligned augmentation, the loader."""
import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nucseg.cli import main
from nucseg.data.augment import AugmentOptions, augment
from nucseg.data.dataset import Dataset, fill_holes, split_components
from nucseg.io import read_labels, read_rgb, write_labels, write_rgb
from synthetic import write_square_nuclei

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---------------------------------------------------------------------------------------------
# PanNuke
# ---------------------------------------------------------------------------------------------
def _pannuke_fold(root):
    """Two 256 x 256 images in the official nested layout, instances in several channels."""
    images = np.zeros((2, 256, 256, 3), np.float64)
    images[..., 0] = 200.0
    images[1, ..., 1] = 17.4                    # PanNuke stores floats
    masks = np.zeros((2, 256, 256, 6), np.float64)
    masks[..., 5] = 1
    masks[0, 10:20, 10:20, 0] = 3               # neoplastic id 3
    masks[0, 50:60, 50:70, 0] = 8               # neoplastic id 8
    masks[0, 100:130, 100:110, 2] = 3           # connective, same id 3 in another channel
    masks[1, 0:5, 0:5, 4] = 11                  # epithelial
    types = np.array(["Breast", "Colon"])
    (root / "images" / "fold1").mkdir(parents=True)
    (root / "masks" / "fold1").mkdir(parents=True)
    np.save(root / "images" / "fold1" / "images.npy", images)
    np.save(root / "images" / "fold1" / "types.npy", types)
    np.save(root / "masks" / "fold1" / "masks.npy", masks)
    return images, masks


def test_import_pannuke_cli_writes_images_labels_and_class_table(tmp_path):
    fold = tmp_path / "Fold 1"
    images, masks = _pannuke_fold(fold)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["import", "pannuke", str(fold), "-o", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["fold1_00000.png",
                                                                  "fold1_00001.png"]
    rgb = read_rgb(out / "images" / "fold1_00001.png")
    assert rgb[0, 0].tolist() == [200, 17, 0]
    labels = read_labels(out / "labels" / "fold1_00000.tif")
    assert sorted(np.unique(labels)) == [0, 1, 2, 3]
    assert (labels[10:20, 10:20] == labels[10, 10]).all() and labels[10, 10] > 0
    assert np.count_nonzero(labels == labels[100, 100]) == 300
    with open(out / "classes.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_label = {int(r["label"]): r["class_name"] for r in rows if r["image"] == "fold1_00000"}
    assert by_label[int(labels[10, 10])] == "neoplastic"
    assert by_label[int(labels[100, 100])] == "connective"
    assert [r["class_id"] for r in rows if r["image"] == "fold1_00001"] == ["5"]
    with open(out / "metadata.csv") as fh:
        assert [r["organ"] for r in csv.DictReader(fh)] == ["Breast", "Colon"]
    # the imported set trains a 1 + 5 class model
    dataset = Dataset(out / "images", out / "labels", classes=out / "classes.csv", channels=3)
    assert dataset.num_classes == 6
    sample = dataset.load(0)
    assert sample.class_of(int(labels[100, 100])) == 3

    # a second fold into the same directory keeps the first fold's rows; a re-import of a
    # fold replaces its own rows
    _pannuke_fold(tmp_path / "Fold 2")
    for fold_dir in ("Fold 2", "Fold 1"):
        again = CliRunner().invoke(main, ["import", "pannuke", str(tmp_path / fold_dir), "-o",
                                          str(out), "--no-progress"])
        assert again.exit_code == 0, again.output
    with open(out / "classes.csv") as fh:
        merged = list(csv.DictReader(fh))
    assert sorted({r["image"] for r in merged}) == ["fold1_00000", "fold1_00001",
                                                     "fold2_00000", "fold2_00001"]
    assert len(merged) == 2 * len(rows)
    with open(out / "metadata.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4


def test_class_table_must_cover_every_nucleus(tmp_path):
    """A nucleus without a class row is an error naming the table and image, found by
    Dataset.check before training starts, not silently class 1."""
    write_square_nuclei(tmp_path, "a", size=64, count=3, side=8, seed=0)
    write_square_nuclei(tmp_path, "b", size=64, count=3, side=8, seed=1)
    table = tmp_path / "classes.csv"
    table.write_text("image,label,class_id\na,1,2\na,2,1\na,3,1\nb,1,1\n")
    dataset = Dataset(tmp_path / "im", tmp_path / "lab", classes=table, channels=3)
    assert dataset.load(0).class_of(1) == 2
    with pytest.raises(ValueError, match=r"1 of 2 training images are unusable: .*classes.csv"
                                         r": no class for 2 nucleus label\(s\) of image b"):
        dataset.check()


def test_import_pannuke_missing_file_is_one_clear_error(tmp_path):
    (tmp_path / "fold").mkdir()
    np.save(tmp_path / "fold" / "images.npy", np.zeros((1, 4, 4, 3)))
    result = CliRunner().invoke(main, ["import", "pannuke", str(tmp_path / "fold"), "-o",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "masks.npy" in result.output and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# data set and pre-processing
# ---------------------------------------------------------------------------------------------
def test_fill_holes_and_split_components():
    labels = np.zeros((10, 20), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0                    # a hole
    labels[1:3, 10:12] = 2
    labels[6:8, 15:18] = 2              # a second component of instance 2
    filled = fill_holes(labels)
    assert filled[3, 3] == 1 and np.array_equal(filled[labels > 0], labels[labels > 0])
    split, classes = split_components(filled, {2: 4})
    assert len(np.unique(split)) == 4 and split[6, 15] not in (0, 1, 2)
    assert classes[int(split[6, 15])] == 4


def test_dataset_pairs_by_stem_and_builds_five_channels(tmp_path):
    rgb = np.full((64, 64, 3), 120, np.uint8)
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1
    labels[30:50, 30:40] = 2
    write_rgb(tmp_path / "im" / "a.png", rgb)
    write_rgb(tmp_path / "im" / "b.png", rgb)
    write_labels(tmp_path / "lab" / "a_labels.tif", labels)
    with pytest.warns(UserWarning, match="without a label map"):
        dataset = Dataset(tmp_path / "im", tmp_path / "lab")
    assert dataset.names == ["a"] and dataset.num_classes == 2
    image = dataset.load(0).image
    assert image.shape == (64, 64, 5) and image.dtype == np.uint8
    assert image[..., 3].max() == 255 and image[35, 35, 3] == 255   # deepest point of nucleus 2
    assert image[0, 0, 3] == 0


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------
def test_augmentation_moves_channels_and_labels_together():
    rng = np.random.default_rng(0)
    labels = np.zeros((300, 300), np.int32)
    for k in range(1, 30):
        y, x = rng.integers(0, 280, 2)
        labels[y:y + 15, x:x + 12] = k
    image = np.zeros((300, 300, 5), np.uint8)
    image[..., :3] = 80
    image[labels > 0, :3] = 200
    image[..., 3] = np.where(labels > 0, 150, 0)      # distance-like channel
    image[..., 4] = np.where(labels > 0, 90, 0)       # hematoxylin-like channel
    options = AugmentOptions(crop_size=256, brightness_contrast=False)
    seen_rotation = False
    for seed in range(8):
        out, lab = augment(image, labels, options, seed)
        assert out.shape == (256, 256, 5) and lab.shape == (256, 256)
        inside = lab > 0
        assert np.array_equal(out[..., 3] == 150, inside)          # nearest: exact values
        assert np.array_equal(out[..., 4] == 90, inside)
        assert set(np.unique(lab)) <= set(np.unique(labels))       # no new ids
        seen_rotation |= bool(((out[..., 0] == 0) & ~inside).any())  # rotated-in border
    assert seen_rotation
    again, lab_again = augment(image, labels, options, 5)
    assert np.array_equal(again, augment(image, labels, options, 5)[0])


def test_photometric_transforms_leave_extra_channels_alone():
    image = np.random.default_rng(1).integers(0, 255, (256, 256, 5)).astype(np.uint8)
    labels = np.zeros((256, 256), np.int32)
    options = AugmentOptions(crop_size=256, flips=False, rotate=False, blur=True)
    changed = False
    for seed in range(10):
        out, _ = augment(image, labels, options, seed)
        assert np.array_equal(out[..., 3:], image[..., 3:])
        changed |= not np.array_equal(out[..., :3], image[..., :3])
    assert changed


def test_stain_augmentation_recolours_only_the_rgb():
    """HEStain changes the H&E colours of some crops; augment() itself leaves the extra
    channels alone (the loader recomputes hematoxylin, tested below)."""
    image = np.dstack([read_rgb(EXAMPLES / "monuseg_crop.png")[:256, :256],
                       np.full((256, 256, 2), 77, np.uint8)])
    labels = np.zeros((256, 256), np.int32)
    options = AugmentOptions(crop_size=256, flips=False, rotate=False,
                             brightness_contrast=False, stain=True)
    changed = 0
    for seed in range(8):
        out, _ = augment(image, labels, options, seed)
        assert np.array_equal(out[..., 3:], image[..., 3:])
        changed += not np.array_equal(out[..., :3], image[..., :3])
    assert 0 < changed < 8                       # p 0.5
    plain = AugmentOptions(crop_size=256, flips=False, rotate=False, brightness_contrast=False)
    assert all(np.array_equal(augment(image, labels, plain, s)[0], image) for s in range(3))


# ---------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------
def test_loader_batches_are_deterministic_and_consistent(tmp_path):
    from nucseg.data.loader import LoaderOptions, TrainingLoader
    from nucseg.mrcnn.config import Config

    write_square_nuclei(tmp_path, "t", size=300, count=39, side=14, seed=2)
    dataset = Dataset(tmp_path / "im", tmp_path / "lab")
    config = Config.preset("paper", MAX_GT_INSTANCES=50)
    loader = TrainingLoader(dataset, config, options=LoaderOptions(seed=4, workers=2))
    streamed = dict(loader.batches(0, 3))
    again = loader.batch(0, 2)
    assert all(np.array_equal(streamed[2][k], again[k]) for k in again)
    assert not np.array_equal(streamed[1]["input_image"], streamed[2]["input_image"])
    b = streamed[0]
    n = int((b["input_gt_class_ids"][0] > 0).sum())
    boxes = b["input_gt_boxes"][0][:n]
    assert n > 10 and (boxes[:, 2] > boxes[:, 0]).all() and boxes.max() <= 256
    assert b["input_gt_masks"][0][..., :n].any(axis=(0, 1)).all()
    assert not b["input_gt_masks"][0][..., n:].any()
    positives = int((b["input_rpn_match"][0] == 1).sum())
    assert 0 < positives <= 128 and np.abs(b["input_rpn_bbox"][0][:positives]).sum() > 0


def test_per_image_normalisation_uses_the_whole_tile_and_zeroes_the_border(tmp_path):
    """--normalize: a crop is standardised with its tile's statistics (as detect() does on the
    tile) and pixels from outside the tile (rotated-in corners) are 0, as inference padding."""
    from nucseg.data.loader import LoaderOptions, TrainingLoader, channel_stats
    from nucseg.mrcnn.config import Config

    write_square_nuclei(tmp_path, "t", size=300, count=30, side=14, seed=5)
    rgb = np.zeros((300, 300, 3), np.uint8)
    rgb[:, :150] = 40                      # a crop's statistics differ from the tile's
    rgb[:, 150:] = 220
    write_rgb(tmp_path / "im" / "t.png", rgb)
    dataset = Dataset(tmp_path / "im", tmp_path / "lab")
    mean, std = channel_stats(dataset.load(0).image)
    config = Config.preset("paper", MAX_GT_INSTANCES=50, IMAGE_NORMALIZATION="per_image")
    tile_values = (np.array([40, 220]) - mean[0]) / std[0]

    def red_channels(rotate):
        options = AugmentOptions(crop_size=256, flips=False, rotate=rotate,
                                 brightness_contrast=False)
        loader = TrainingLoader(dataset, config, options, LoaderOptions(seed=0, workers=1))
        return [loader.sample(0, step)["input_image"][..., 0] for step in range(6)]

    for red in red_channels(rotate=False):      # exactly the tile's two standardised values
        assert np.abs(red[..., None] - tile_values).min(axis=-1).max() < 1e-4
    corners = 0
    for red in red_channels(rotate=True):
        corners += int((red == 0).sum())
        # only the 1-px interpolation ring at a rotated edge falls below the tile's values
        assert (red < tile_values.min() - 1e-3).mean() < 0.02
    assert corners > 1000                   # some step rotated (p 0.5 over 6 steps)


def test_stain_augmented_crops_carry_the_hematoxylin_of_their_new_colours(tmp_path):
    """With --stain-augment the hematoxylin channel is computed again from the augmented RGB
    (fixed scaling: OD 0.30 -> 255), as prediction computes it from the RGB it is given."""
    from nucseg.data.loader import LoaderOptions, TrainingLoader
    from nucseg.mrcnn.config import Config
    from nucseg.prediction.channels import ChannelScaling
    from nucseg.stain import hematoxylin

    write_rgb(tmp_path / "im" / "t.png", read_rgb(EXAMPLES / "monuseg_crop.png"))
    write_labels(tmp_path / "lab" / "t.png", read_labels(EXAMPLES / "monuseg_crop_labels.png"))
    dataset = Dataset(tmp_path / "im", tmp_path / "lab", channel_scaling="fixed")
    config = Config.preset("paper", MAX_GT_INSTANCES=400,
                           **ChannelScaling("fixed").config_overrides())
    mean = np.asarray(config.MEAN_PIXEL, np.float32)
    options = AugmentOptions(crop_size=256, flips=False, rotate=False,
                             brightness_contrast=False, stain=True)
    loader = TrainingLoader(dataset, config, options, LoaderOptions(seed=0, workers=1))
    for step in range(6):
        image = np.rint(loader.sample(0, step)["input_image"] + mean).astype(np.uint8)
        expected = ChannelScaling("fixed").hstain(hematoxylin(image[..., :3]))
        assert np.abs(image[..., 4].astype(int) - expected).max() <= 1
    plain = TrainingLoader(dataset, config, replace(options, stain=False),
                           LoaderOptions(seed=0, workers=1))
    differs = [not np.array_equal(plain.sample(0, k)["input_image"][..., :3],
                                  loader.sample(0, k)["input_image"][..., :3]) for k in range(6)]
    assert any(differs) and not all(differs)     # HEStain at p 0.5, same crops otherwise


def test_stain_augmentation_with_per_image_scaling_ignores_rotated_in_corners(tmp_path):
    """Per-image scaling of the recomputed hematoxylin takes the crop's maximum over the image
    only: black rotated-in corners (a high optical density) must not set it."""
    from nucseg.data.loader import restain_hematoxylin
    from nucseg.mrcnn.config import Config

    rgb = read_rgb(EXAMPLES / "monuseg_crop.png").copy()
    valid = np.ones(rgb.shape[:2], bool)
    valid[:60, :60] = False
    rgb[~valid] = 0                               # a rotated-in corner
    image = np.dstack([rgb, np.zeros(rgb.shape[:2] + (2,), np.uint8)])
    out = restain_hematoxylin(image, valid, 4, Config.preset("paper"))   # per_image scaling
    assert out[..., 4][valid].max() == 255 and not out[..., 4][~valid].any()
