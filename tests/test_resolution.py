"""Tiles at another magnification than the model's (nucseg.prediction.resolution): a 20x tile is
resampled to the model's 40x, and its nuclei come back in the tile's own pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
import yaml

from nucseg.io import read_labels, write_float_map, write_rgb
from nucseg.metrics import score_pair
from nucseg.prediction.merge_saved import merge_from_paths
from nucseg.prediction.predict import PredictOptions, predict_images
from nucseg.prediction.resolution import tile_resolution
from nucseg.prediction.slides import SlideOptions

from test_predict import BlobDetector, blob_image


class SizedDetector(BlobDetector):
    """A stand-in 40x model: it sees only blobs of 40x nucleus size (area >= 60 px; the 20x
    tile's are 18-54 px), as a trained model misses nuclei drawn at half their size."""

    def detect(self, images):
        results = super().detect(images)
        for r in results:
            keep = [i for i, m in enumerate(r["masks"]) if (m > 0).sum() >= 60]
            r["rois"], r["scores"] = r["rois"][keep], r["scores"][keep]
            r["class_ids"], r["masks"] = r["class_ids"][keep], [r["masks"][i] for i in keep]
        return results


@pytest.fixture
def tile_20x(tmp_path):
    """A 40x blob image (radii 5-9 px) downsampled 2x, saved as a TIFF tagged 0.5 um/px and
    as an untagged PNG; with its ground truth (the dark blobs of the 20x tile)."""
    at_40x = blob_image((320, 320), 24, seed=7, margin=20)
    at_20x = cv2.resize(at_40x, (160, 160), interpolation=cv2.INTER_AREA)
    tagged = tmp_path / "in" / "tagged.tif"
    tagged.parent.mkdir()
    tifffile.imwrite(tagged, at_20x, resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    plain = write_rgb(tmp_path / "in2" / "plain.png", at_20x)
    count, truth = cv2.connectedComponents((at_20x.mean(-1) < 120).astype(np.uint8), 4)
    return tagged, plain, truth.astype(np.int32), count - 1


def test_pixel_size_sources_in_order(tile_20x):
    tagged, plain, _, _ = tile_20x
    assert tile_resolution(tagged, 0.25).mpp == pytest.approx(0.5)
    assert tile_resolution(tagged, 0.25).source == "TIFF resolution tags"
    assert tile_resolution(tagged, 0.25).factor == pytest.approx(2.0)
    assert tile_resolution(plain, 0.25).mpp is None and tile_resolution(plain, 0.25).factor == 1
    assert tile_resolution(plain, 0.25, magnification=20).mpp == pytest.approx(0.5)
    assert tile_resolution(tagged, 0.25, mpp=0.26).factor == 1.0      # within 10%: as it is


def test_a_20x_tile_is_found_at_the_model_resolution_and_reported_in_its_own(tmp_path,
                                                                             tile_20x):
    tagged, plain, truth, n = tile_20x
    opts = PredictOptions(progress=False, min_area=5, keep_members=True)
    predict_images([plain], [SizedDetector()], tmp_path / "as_is", opts)
    missed = read_labels(tmp_path / "as_is" / "plain_labels.tif")
    assert missed.max() <= n // 4                          # the untagged 20x tile: few found
    predict_images([tagged], [SizedDetector()], tmp_path / "tags", opts)
    predict_images([plain], [SizedDetector()], tmp_path / "mag", opts,
                   slide_opts=SlideOptions(magnification=20))
    for out, stem in ((tmp_path / "tags", "tagged"), (tmp_path / "mag", "plain")):
        found = read_labels(out / f"{stem}_labels.tif")
        assert found.shape == truth.shape                  # the tile's own pixel grid
        scores = score_pair(truth, found)
        assert scores["dq"] >= 0.95 and scores["sq"] >= 0.75, scores
        record = yaml.safe_load((out / f"{stem}_record.yaml").read_text())
        assert record["resolution"]["scale"] == pytest.approx(2.0)
    # kept members are in the tile's grid too: merging them later gives the same nuclei
    merge_from_paths(sorted((tmp_path / "tags").glob("*_member*.npz")), tmp_path / "later",
                     PredictOptions(progress=False, min_area=5))
    np.testing.assert_array_equal(read_labels(tmp_path / "later" / "tagged_labels.tif"),
                                  read_labels(tmp_path / "tags" / "tagged_labels.tif"))


def test_maps_from_files_cannot_be_used_with_resampling(tmp_path, tile_20x):
    from nucseg.prediction.channels import ChannelSources

    tagged, _, _, _ = tile_20x
    write_float_map(tmp_path / "d" / "tagged_dist.tif", np.ones((160, 160), np.float32))
    detector = SizedDetector()
    detector.config.IMAGE_CHANNEL_COUNT = 5
    failures, _ = predict_images([tagged], [detector], tmp_path / "out",
                                 PredictOptions(progress=False),
                                 ChannelSources(distance_dir=tmp_path / "d"))
    assert len(failures) == 1 and "--distance-dir" in failures[0] and "0.5 um/px" in failures[0]
    assert not (tmp_path / "out" / "tagged_labels.tif").exists()
