"""The shipped model itself (nucseg/models/monuseg-r50): its files verify, it fits the size
budget, and it segments the example crop clearly better than the classical baseline.

The crop comes from a training tile of the model, so this is a regression check of the
installed model (a broken file, a wrong channel scaling, a lost threshold would fail it), not
a held-out figure (those are in the model's MODEL.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import nucseg.models
from nucseg.cli import main
from nucseg.io import read_labels
from nucseg.metrics import score_pair

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MARGIN = 0.05          # AJI above the baseline's on the crop, at least


def test_the_default_model_ships_verified_within_the_size_budget():
    model = nucseg.models.named(nucseg.models.DEFAULT_MODEL)       # checks every sha256
    assert model is not None and model.weights.is_file() and model.unet_dir.is_dir()
    size = nucseg.models.show(model.name)["size_bytes"]
    assert size <= 120 * 10 ** 6          # the 120 MB budget (decimal megabytes)
    assert model.manifest["license"].startswith("CC BY-NC-SA 4.0")
    assert model.manifest["pixel_size_um"] == pytest.approx(0.25, abs=0.03)
    assert {"min_confidence"} <= set(model.thresholds)
    assert len(model.manifest["training_images"]) == 30


def test_predict_without_a_model_beats_the_baseline_on_the_example_crop(tmp_path):
    crop, truth = EXAMPLES / "monuseg_crop.png", EXAMPLES / "monuseg_crop_labels.png"
    result = CliRunner().invoke(main, ["predict", str(crop), "-o", str(tmp_path / "pred"),
                                       "--overlay"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "monuseg_crop_overlay.png").is_file()
    base = CliRunner().invoke(main, ["baseline", str(crop), "-o", str(tmp_path / "base")])
    assert base.exit_code == 0, base.output
    gt = read_labels(truth)
    model = score_pair(gt, read_labels(tmp_path / "pred" / "monuseg_crop_labels.tif"))
    classical = score_pair(gt, read_labels(tmp_path / "base" / "monuseg_crop_labels.tif"))
    print(f"example crop: model AJI {model['aji']:.3f} PQ {model['pq']:.3f}, "
          f"baseline AJI {classical['aji']:.3f} PQ {classical['pq']:.3f}")
    assert model["aji"] >= classical["aji"] + MARGIN
    assert model["pq"] > classical["pq"]
