"""Shipped models: packing (float16, sha256 manifest), verification, loading by name, the
predict defaults they bring, and the errors a user sees for a bad copy or an unknown name.

The model packed here has random weights (the real shipped model is tested on its accuracy in
test_shipped_model.py once it ships); what is tested is the machinery every shipped model uses.
"""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import nucseg.models
from nucseg.cli import main
from nucseg.io import InputError, write_rgb

from synthetic import write_random_detector_run
from test_predict import blob_image
from test_unet import saved_model


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A random-weight 5-channel ResNet-50 model with a width-4 U-Net, packed as 'tiny-test'
    into a models folder of its own; returns (models_dir, float32 run dir)."""
    from nucseg.models.pack import pack_model

    root = tmp_path_factory.mktemp("models")
    run = root / "run"
    write_random_detector_run(run, name="tiny", epoch=1, CHANNEL_SCALING="fixed")
    unet = root / "unet"
    unet.mkdir()
    saved_model(unet)
    card = root / "MODEL.md"
    card.write_text("# tiny-test\nrandom weights, for tests\n")
    models_dir = root / "installed"
    pack_model(run / "mask_rcnn_tiny_0001.h5", run / "config.yaml", models_dir / "tiny-test",
               "tiny-test", unet_dir=unet, model_card=card,
               thresholds={"min_confidence": 0.6, "min_members": 1, "mask_threshold": 0.5,
                           "mask_threshold_one_pass": 0.4},
               info={"backbone": "resnet50", "channels": ["R", "G", "B", "distance", "H"],
                     "training_data": "nothing (random)", "license": "MIT",
                     "pixel_size_um": 0.25})
    return models_dir, run


@pytest.fixture
def installed(packed, monkeypatch):
    """The packed folder stands in for the package's models directory."""
    models_dir, _ = packed
    monkeypatch.setattr(nucseg.models, "MODELS_DIR", models_dir)
    monkeypatch.setattr(nucseg.models, "DEFAULT_MODEL", "tiny-test")
    return models_dir


def test_pack_stores_float16_and_every_checksum(packed):
    models_dir, run = packed
    folder = models_dir / "tiny-test"
    manifest = yaml.safe_load((folder / "model.yaml").read_text())
    assert sorted(manifest["files"]) == ["MODEL.md", "config.yaml", "mask_rcnn.h5",
                                         "unet/unet.json", "unet/unet.weights.h5"]
    model = nucseg.models.verify(nucseg.models.find("tiny-test", models_dir))
    assert model.thresholds["min_confidence"] == 0.6 and model.unet_dir == folder / "unet"
    dtypes = set()
    with h5py.File(folder / "mask_rcnn.h5", "r") as fh:
        fh.visititems(lambda n, o: dtypes.add(o.dtype) if isinstance(o, h5py.Dataset) else None)
    assert dtypes == {np.dtype(np.float16)}
    ratio = (folder / "mask_rcnn.h5").stat().st_size / (run / "mask_rcnn_tiny_0001.h5").stat().st_size
    assert 0.45 < ratio < 0.55


def test_float16_file_holds_the_rounded_float32_weights_and_loads_as_float32(packed):
    """Packing changes nothing but the rounding (the detection agreement of the rounded
    weights, boxes within 1 px and counts within 1%, is a property of a trained model: it is
    asserted on the shipped model in test_shipped_model.py)."""
    from nucseg.model_files import ModelSpec, load_model
    from nucseg.mrcnn.weights_h5 import read_weight_file

    models_dir, run = packed
    folder = models_dir / "tiny-test"
    full = read_weight_file(run / "mask_rcnn_tiny_0001.h5")
    half = read_weight_file(folder / "mask_rcnn.h5")
    assert list(full) == list(half)
    for layer in full:
        assert [n for n, _ in full[layer]] == [n for n, _ in half[layer]]
        for (_, a), (_, b) in zip(full[layer], half[layer]):
            np.testing.assert_array_equal(a.astype(np.float16), b)
    model = load_model(ModelSpec(folder / "mask_rcnn.h5", folder / "config.yaml"))
    kernel = model.keras_model.get_layer("mrcnn_mask").get_weights()[0]
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, half["mrcnn_mask"][0][1].astype(np.float32))


def test_a_failed_pack_leaves_no_folder_and_info_cannot_overwrite_the_manifest(packed,
                                                                              tmp_path):
    from nucseg.models.pack import pack_model

    _, run = packed
    weights, config = run / "mask_rcnn_tiny_0001.h5", run / "config.yaml"
    no_unet = tmp_path / "empty_unet"
    no_unet.mkdir()
    with pytest.raises(OSError):
        pack_model(weights, config, tmp_path / "models" / "m", "m", unet_dir=no_unet)
    assert list((tmp_path / "models").iterdir()) == []            # nor a temp folder
    with pytest.raises(ValueError, match="may not set files, weights"):
        pack_model(weights, config, tmp_path / "models" / "m", "m",
                   info={"weights": "x.h5", "files": {}})
    assert list((tmp_path / "models").iterdir()) == []


def test_corrupted_or_truncated_file_is_one_clear_error(packed, tmp_path, monkeypatch):
    models_dir, _ = packed
    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    weights = copy / "tiny-test" / "mask_rcnn.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(nucseg.models, "MODELS_DIR", copy)
    image = tmp_path / "tile.png"
    write_rgb(image, blob_image((96, 96), 3, seed=2))
    result = CliRunner().invoke(main, ["predict", str(image), "-m", "tiny-test",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {weights}: ")
    assert "corrupted or truncated" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    weights.write_bytes(bytes(data[: len(data) // 3]))                   # truncated
    with pytest.raises(InputError, match="corrupted or truncated"):
        nucseg.models.load("tiny-test")


def test_unknown_name_lists_the_shipped_names(installed, tmp_path):
    image = tmp_path / "tile.png"
    write_rgb(image, blob_image((96, 96), 3, seed=2))
    result = CliRunner().invoke(main, ["predict", str(image), "-m", "no-such-model",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "error: no-such-model: no shipped model of that name" in result.output
    assert "tiny-test" in result.output


def test_predict_without_model_runs_the_default_with_its_unet_and_thresholds(installed,
                                                                              tmp_path):
    image = tmp_path / "tile.png"
    write_rgb(image, blob_image((96, 96), 3, seed=2))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", str(image), "-o", str(out)])
    assert result.exit_code == 0, result.output
    record = yaml.safe_load((out / "tile_record.yaml").read_text())
    entry = record["models"][0]
    assert entry["shipped_model"] == "tiny-test" and entry["min_confidence"] == 0.6
    assert entry["channel_scaling"] == "fixed"
    assert entry["distance_model"] == str(installed / "tiny-test" / "unet")
    assert record["options"]["mask_threshold"] == 0.4            # the one-pass setting
    typed = CliRunner().invoke(main, ["predict", str(image), "-m", "tiny-test", "--tta",
                                      "--min-confidence", "0.9", "--mask-threshold", "0.7",
                                      "-o", str(tmp_path / "typed")])
    assert typed.exit_code == 0, typed.output
    record = yaml.safe_load((tmp_path / "typed" / "tile_record.yaml").read_text())
    assert record["models"][0]["min_confidence"] == 0.9          # typed options win
    assert record["options"]["mask_threshold"] == 0.7
    assert record["options"]["min_members"] == 1                 # the shipped TTA setting


def test_models_list_and_show(installed):
    listed = CliRunner().invoke(main, ["models", "list"])
    assert listed.exit_code == 0 and "tiny-test (default)" in listed.output
    assert "license: MIT" in listed.output
    shown = CliRunner().invoke(main, ["models", "show", "tiny-test"])
    info = yaml.safe_load(shown.output)
    assert info["thresholds"]["min_confidence"] == 0.6 and info["size_bytes"] > 0
    detector, unet, thresholds = nucseg.models.load("tiny-test")
    assert detector.config.DETECTION_MIN_CONFIDENCE == 0.6 and unet.config.width == 4


def test_weights_with_nan_are_refused_before_anything_is_assigned(packed, tmp_path):
    from nucseg.model_files import ModelSpec, load_model
    from nucseg.mrcnn.weights_h5 import read_weight_file, write_weight_file

    _, run = packed
    groups = list(read_weight_file(run / "mask_rcnn_tiny_0001.h5").items())
    layer, weights = next((g, w) for g, w in groups if g == "mrcnn_mask")
    bad = weights[0][1].copy()
    bad.flat[3] = np.nan
    groups = [(g, [(weights[0][0], bad)] + weights[1:]) if g == layer else (g, w)
              for g, w in groups]
    path = write_weight_file(tmp_path / "nan.h5", groups, keras_version="2.1.6")
    shutil.copyfile(run / "config.yaml", tmp_path / "nan.yaml")
    with pytest.raises(InputError, match="NaN or infinite"):
        load_model(ModelSpec(path, tmp_path / "nan.yaml"))


def test_init_by_name_fine_tunes_from_the_shipped_weights_and_scaling(installed):
    """`nucseg train --init NAME`: the shipped weights are the start, and the run inherits the
    shipped model's channel scaling (else the same nucleus would look different)."""
    from nucseg.mrcnn import Config, MaskRCNN
    from nucseg.mrcnn.weights_h5 import read_weight_file
    from nucseg.train import init_channel_scaling, init_weights

    assert init_channel_scaling("tiny-test")["mode"] == "fixed"
    assert init_channel_scaling("none") == "per_image"
    folder = installed / "tiny-test"
    config = Config.from_yaml(folder / "config.yaml")
    model = MaskRCNN(config.copy(GPU_COUNT=1, IMAGES_PER_GPU=1)).keras_model
    info = init_weights(model, config, "tiny-test")
    assert info["path"] == str(folder / "mask_rcnn.h5") and info["loaded_layers"] > 100
    shipped = read_weight_file(folder / "mask_rcnn.h5")["mrcnn_mask"][0][1]
    np.testing.assert_array_equal(model.get_layer("mrcnn_mask").get_weights()[0],
                                  shipped.astype(np.float32))
    with pytest.raises(InputError, match="tiny-test"):
        init_weights(model, config, "no-such-model")


def test_weights_that_do_not_fit_the_config_are_refused_for_prediction(packed, tmp_path):
    """5-channel weights under a 3-channel config used to run on RGB only (PREPROC ignored)."""
    from nucseg.mrcnn import Config

    _, run = packed
    shutil.copyfile(run / "mask_rcnn_tiny_0001.h5", tmp_path / "m.h5")
    config = Config.from_yaml(run / "config.yaml")
    config.copy(IMAGE_CHANNEL_COUNT=3, MEAN_PIXEL=list(config.MEAN_PIXEL[:3])).to_yaml(
        tmp_path / "m.yaml")
    image = tmp_path / "tile.png"
    write_rgb(image, blob_image((96, 96), 3, seed=2))
    result = CliRunner().invoke(main, ["predict", str(image), "-m", str(tmp_path / "m.h5"),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'm.h5'}: does not fit")
    assert "PREPROC" in lines[0] and not (tmp_path / "out").exists()


def test_predict_resume_refuses_other_options(installed, tmp_path):
    image = tmp_path / "tile.png"
    write_rgb(image, blob_image((96, 96), 3, seed=2))
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["predict", str(image), "-o", str(out)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["predict", str(image), "-o", str(out), "--resume"])
    assert again.exit_code == 0 and "already done" in again.output
    other = CliRunner().invoke(main, ["predict", str(image), "-o", str(out), "--resume",
                                      "--min-area", "5"])
    assert other.exit_code == 2 and "min_area" in other.output and "50" in other.output
    assert "--resume with other settings" in other.output
