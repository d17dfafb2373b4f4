"""Distance U-Net: documented architecture, learning, sizes, tiling, model files, CLI, resume."""
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from nucseg.cli import main
from nucseg.distance import label_distance_map
from nucseg.io import InputError, read_float_map, write_labels, write_rgb
from nucseg.unet import load_unet, predict_distance
from nucseg.unet.files import UNetConfig, save_weights, write_config
from nucseg.unet.model import build_unet, expected_param_count
from nucseg.unet.predict import _tile_spans, model_input, predict_array
from nucseg.unet.train import TrainOptions, evaluate, make_batch, Sample, train_unet, \
    training_pairs, _make_train_step

RGB = ["R", "G", "B"]


def synthetic_tile(seed, height=64, width=64, n=6):
    """Dark purple discs (nuclei) on a pink background with noise, and their label map."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int32)
    yy, xx = np.mgrid[:height, :width]
    for i in range(1, n + 1):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    image = np.where(labels[..., None] > 0, [90, 50, 150], [230, 180, 210])
    image = image + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def documented_layers(width, channels):
    """(kernel side, in channels, out channels) of every weighted layer in docs/unet.md order."""
    f = [width * 2 ** i for i in range(6)]
    layers, c_in = [], channels
    for fi in f:                                   # encoder: two 3x3 convs per level
        layers += [(3, c_in, fi), (3, fi, fi)]
        c_in = fi
    for i in range(4, -1, -1):                     # decoder: 2x2 up-conv, concat, two 3x3
        layers += [(2, f[i + 1], f[i]), (3, 2 * f[i], f[i]), (3, f[i], f[i])]
    return layers + [(1, f[0], 1)]                 # linear 1x1 output


@pytest.mark.parametrize("width,channels", [(4, 3), (4, 4), (32, 3)])
def test_parameter_count_matches_documented_layer_list(width, channels):
    count = sum(k * k * cin * cout + cout for k, cin, cout in documented_layers(width, channels))
    assert expected_param_count(width, channels) == count
    if width == 4:
        assert build_unet(width, channels).count_params() == count


def test_architecture_shapes_activations_and_dropout():
    import keras

    model = build_unet(4, 3, seed=1)
    assert model(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 64, 96, 1)
    for i in range(6):
        assert model.get_layer(f"enc{i}_conv2").output.shape[-1] == 4 * 2 ** i
    for i in range(5):
        assert model.get_layer(f"dec{i}_up").output.shape[-1] == 4 * 2 ** i
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("MaxPooling2D") == 5 and kinds.count("Conv2DTranspose") == 5
    convs = [layer for layer in model.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    assert len(convs) == len(documented_layers(4, 3))
    assert convs[-1].name == "distance" and convs[-1].activation.__name__ == "linear"
    for layer in convs[:-1]:
        assert layer.activation.__name__ == "relu"
        assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
        following = model.layers[model.layers.index(layer) + 1]
        assert isinstance(following, keras.layers.Dropout) and following.rate == 0.1


def test_tiny_model_overfits_one_crop():
    import keras

    rgb, labels = synthetic_tile(0)
    sample = Sample("crop", model_input(rgb, RGB), label_distance_map(labels))
    keras.utils.set_random_seed(0)
    model = build_unet(4, 3, seed=0)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    step = _make_train_step(model, optimizer)
    before = evaluate(model, [sample])
    x, y, mask = make_batch([(sample.x, sample.y)])
    for _ in range(120):
        step(x, y, mask)
    after = evaluate(model, [sample])
    assert after <= 0.5 * before, (before, after)


def test_padding_is_excluded_from_the_loss():
    x = np.ones((40, 50, 3), np.float32)
    y = np.full((40, 50), 2.0, np.float32)
    xb, yb, mask = make_batch([(x, y), (x[:20], y[:20])])
    assert xb.shape == (2, 64, 64, 3) and mask.shape == (2, 64, 64, 1)
    assert mask[0].sum() == 40 * 50 and mask[1].sum() == 20 * 50
    assert np.all(yb[mask == 0] == 0)


def saved_model(tmp_path, width=4, channels=RGB, seed=2):
    model = build_unet(width, len(channels), seed=seed)
    write_config(tmp_path, UNetConfig(width=width, channels=channels))
    save_weights(model, tmp_path / "unet.weights.h5")
    return model


def test_predict_keeps_size_and_roundtrips_through_files(tmp_path):
    model = saved_model(tmp_path)
    loaded = load_unet(tmp_path)
    rgb, _ = synthetic_tile(1, 45, 70)
    dist = predict_distance(loaded, rgb)
    assert dist.shape == (45, 70) and dist.dtype == np.float32
    assert dist.min() >= 0
    direct = predict_array(model, model_input(rgb, RGB))
    np.testing.assert_allclose(dist, np.maximum(direct, 0), atol=1e-5)


def test_hematoxylin_model_takes_four_normalised_channels(tmp_path):
    saved_model(tmp_path, channels=RGB + ["H"])
    rgb, _ = synthetic_tile(2, 33, 40)
    x = model_input(rgb, RGB + ["H"])
    assert x.shape == (33, 40, 4)
    np.testing.assert_allclose(x.reshape(-1, 4).mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.reshape(-1, 4).std(axis=0), 1, atol=1e-3)
    assert predict_distance(load_unet(tmp_path), rgb).shape == (33, 40)


def test_tiled_prediction_matches_single_pass(tmp_path):
    model = build_unet(4, 3, seed=0)
    rgb, _ = synthetic_tile(1, 200, 230, 40)
    x = model_input(rgb, RGB)
    single = predict_array(model, x, tile_size=256)
    assert len(_tile_spans(224, 192, 64)) > 1 and len(_tile_spans(256, 192, 64)) > 1
    tiled = predict_array(model, x, tile_size=192, margin=64)
    diff = np.abs(tiled - single)
    assert tiled.shape == single.shape
    assert diff.mean() < 0.05 * single.std() and diff.max() < 0.5 * single.std()


def test_loading_reports_config_mismatch(tmp_path):
    saved_model(tmp_path, width=4)
    config_path = tmp_path / "unet.json"
    good = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**good, "width": 8}))
    with pytest.raises(InputError, match="width 4, unet.json says 8"):
        load_unet(tmp_path)
    config_path.write_text(json.dumps({**good, "channels": RGB + ["H"], "in_channels": 4}))
    with pytest.raises(InputError, match="3 input channels, unet.json says 4"):
        load_unet(tmp_path)
    config_path.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(InputError, match="format_version 99"):
        load_unet(tmp_path)
    config_path.write_text(json.dumps(good))
    (tmp_path / "unet.weights.h5").unlink()
    with pytest.raises(InputError, match="unet.weights.h5: missing"):
        load_unet(tmp_path)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("unet_data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for k in range(4):
        rgb, labels = synthetic_tile(10 + k, 64, 80)
        write_rgb(root / "images" / f"tile{k}.png", rgb)
        write_labels(root / "labels" / f"tile{k}_labels.tif", labels)
    return root


TRAIN_ARGS = ["--epochs", "2", "--width", "4", "--batch-size", "2", "--seed", "3",
              "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def cli_model(tiny_dataset):
    model_dir = tiny_dataset / "model"
    result = CliRunner().invoke(main, ["distance", "train", "--images",
                                       str(tiny_dataset / "images"), "--labels",
                                       str(tiny_dataset / "labels"), "-o", str(model_dir)]
                                + TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    return model_dir


def test_cli_train_writes_model_log_checkpoints_and_record(cli_model):
    config = json.loads((cli_model / "unet.json").read_text())
    assert config["width"] == 4 and config["channels"] == RGB
    assert config["training"]["epochs_done"] == 2
    log = (cli_model / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 3
    for name in ("checkpoints/epoch_001.weights.h5", "checkpoints/epoch_002.weights.h5",
                 "checkpoints/state.npz", "distance_train_record.yaml"):
        assert (cli_model / name).is_file(), name


def test_cli_predict_writes_float_maps_and_goes_past_a_bad_image(tiny_dataset, cli_model,
                                                                tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["distance", "predict", str(tiny_dataset / "images"),
                                       str(bad), "-m", str(cli_model), "-o", str(out)])
    assert result.exit_code == 1
    assert "broken.png" in result.output
    for k in range(4):
        dist = read_float_map(out / f"tile{k}_dist.tif")
        assert dist.shape == (64, 80) and dist.dtype == np.float32
    assert not (out / "broken_dist.tif").exists()
    assert (out / "distance_predict_record.yaml").is_file()


def weight_arrays(path):
    with h5py.File(path, "r") as fh:
        arrays = {}
        fh.visititems(lambda n, o: arrays.__setitem__(n, o[()])
                      if isinstance(o, h5py.Dataset) else None)
    return arrays


def test_resumed_training_equals_uninterrupted_and_checks_options(tiny_dataset, cli_model,
                                                                  tmp_path):
    pairs = training_pairs(tiny_dataset / "images", tiny_dataset / "labels")
    opts = dict(width=4, batch_size=2, seed=3)
    train_unet(pairs, tmp_path, TrainOptions(epochs=1, **opts), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_unet(pairs, tmp_path, TrainOptions(epochs=2, **opts), progress=False)
    with pytest.raises(ValueError, match="width 4 vs 8"):
        train_unet(pairs, tmp_path, TrainOptions(epochs=2, **{**opts, "width": 8}),
                   resume=True, progress=False)
    summary = train_unet(pairs, tmp_path, TrainOptions(epochs=2, **opts), resume=True,
                         progress=False)
    assert summary["epochs_done"] == 2 and len(summary["log"]) == 2
    resumed = weight_arrays(tmp_path / "unet.weights.h5")
    straight = weight_arrays(cli_model / "unet.weights.h5")
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_time_budget_stop_keeps_a_loadable_resumable_model(tiny_dataset, tmp_path):
    pairs = training_pairs(tiny_dataset / "images", tiny_dataset / "labels")
    opts = dict(width=4, batch_size=2, seed=3, epochs=3)
    summary = train_unet(pairs, tmp_path, TrainOptions(max_seconds=0, **opts), progress=False)
    assert summary["stopped_early"] and summary["epochs_done"] == 0
    assert load_unet(tmp_path).config.width == 4
    with np.load(tmp_path / "checkpoints" / "state.npz", allow_pickle=False) as state:
        assert int(state["epochs_done"]) == 0  # --resume starts the interrupted epoch again
