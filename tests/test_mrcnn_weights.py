"""Matterport weight files: the Keras-2 fixture, the written layout, checked by-name loading."""
from __future__ import annotations

import math
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from nucseg.io import InputError
from nucseg.mrcnn.weights import (COCO_EXCLUDE, WeightMismatchError, file_architecture,
                                  load_weights,
                                  read_weight_file, read_weight_shapes, save_weights,
                                  weight_entries)
from nucseg.mrcnn.weights_h5 import write_weight_file

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "matterport_layout_small.h5"
FIXTURE_LAYERS = ["input_image", "zero_padding2d", "input_roi_features", "conv1",
                  "mrcnn_mask_conv1", "bn_conv1", "mrcnn_mask_bn1", "activation", "activation_1",
                  "time_distributed", "rpn_model", "mrcnn_mask_deconv", "mrcnn_class_logits"]
FIXTURE_WEIGHTED = ["conv1", "mrcnn_mask_conv1", "bn_conv1", "mrcnn_mask_bn1", "rpn_model",
                    "mrcnn_mask_deconv", "mrcnn_class_logits"]


def golden_weight(name, shape):
    """The fixture's value formula (golden README section 3, gain 1.0 for every kernel)."""
    z = np.random.default_rng(zlib.crc32(name.encode("utf-8"))).standard_normal(shape)
    layer, kind = name.split("/")[0], name.split("/")[-1].split(":")[0]
    if kind == "kernel":
        if len(shape) == 2:
            fan_in = shape[0]
        elif layer == "mrcnn_mask_deconv":
            fan_in = shape[0] * shape[1] * shape[3]
        else:
            fan_in = shape[0] * shape[1] * shape[2]
        return (z / math.sqrt(fan_in)).astype(np.float32)
    if kind == "bias":
        return (0.01 * z).astype(np.float32)
    if kind == "gamma":
        return (1.0 + 0.1 * z).astype(np.float32)
    if kind in ("beta", "moving_mean"):
        return (0.1 * z).astype(np.float32)
    if kind == "moving_variance":
        return (1.0 + 0.1 * np.abs(z)).astype(np.float32)
    raise ValueError(name)


def small_model(channels=3, classes=2, extra_layer=False):
    """The fixture's model (README section 7) in Keras 3; PREPROC when channels != 3."""
    import keras
    from keras import layers

    fmap = keras.Input((None, None, 4), name="input_rpn_feature_map")
    shared = layers.Conv2D(8, 3, padding="same", activation="relu", name="rpn_conv_shared")(fmap)
    rpn = keras.Model(fmap, [layers.Conv2D(6, 1, name="rpn_class_raw")(shared),
                             layers.Conv2D(12, 1, name="rpn_bbox_pred")(shared)],
                      name="rpn_model")
    image = keras.Input((16, 16, channels), name="input_image")
    rois = keras.Input((None, 7, 7, 8), name="input_roi_features")
    x = layers.ZeroPadding2D(3, name="zero_padding2d")(image)
    if channels != 3:
        x = layers.Conv2D(3, 1, name="PREPROC")(x)
    x = layers.Conv2D(4, 7, strides=2, name="conv1")(x)
    m = layers.TimeDistributed(layers.Conv2D(4, 3, padding="same"), name="mrcnn_mask_conv1")(rois)
    x = layers.BatchNormalization(name="bn_conv1")(x)
    m = layers.TimeDistributed(layers.BatchNormalization(), name="mrcnn_mask_bn1")(m)
    x = layers.Activation("relu", name="activation")(x)
    m = layers.Activation("relu", name="activation_1")(m)
    pooled = layers.TimeDistributed(layers.GlobalAveragePooling2D(), name="time_distributed")(rois)
    outputs = [*rpn(x),
               layers.TimeDistributed(layers.Conv2DTranspose(6, 2, strides=2),
                                      name="mrcnn_mask_deconv")(m),
               layers.TimeDistributed(layers.Dense(classes), name="mrcnn_class_logits")(pooled)]
    if extra_layer:  # stands for R-101's res4g..res4w, absent from an R-50 model
        outputs.append(layers.Conv2D(2, 1, name="res4g_branch2a")(x))
    return keras.Model([image, rois], outputs)


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for _, entries in weight_entries(model):
        for _, v in entries:
            v.assign(rng.standard_normal(tuple(v.shape)).astype(np.float32))


def snapshot(model):
    return {name: np.array(v.numpy()) for _, es in weight_entries(model) for name, v in es}


# ---------------------------------------------------------------------------------------------
# the Keras 2 fixture
# ---------------------------------------------------------------------------------------------
def test_reads_fixture_layers_and_weights():
    groups = read_weight_file(FIXTURE)
    assert list(groups) == FIXTURE_LAYERS  # top_level_model_weights is not a layer
    assert [n for n, _ in groups["rpn_model"]] == [
        "rpn_conv_shared/kernel:0", "rpn_conv_shared/bias:0", "rpn_class_raw/kernel:0",
        "rpn_class_raw/bias:0", "rpn_bbox_pred/kernel:0", "rpn_bbox_pred/bias:0"]
    assert [n for n, _ in groups["bn_conv1"]] == [
        "bn_conv1/gamma:0", "bn_conv1/beta:0", "bn_conv1/moving_mean:0",
        "bn_conv1/moving_variance:0"]
    assert groups["activation"] == []
    for layer, weights in groups.items():
        for name, array in weights:
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, golden_weight(name, array.shape), err_msg=name)


def test_weight_entries_use_matterport_names():
    entries = dict(weight_entries(small_model()))
    assert list(entries) == FIXTURE_LAYERS
    assert [n for n, _ in entries["mrcnn_mask_bn1"]] == [
        "mrcnn_mask_bn1/gamma:0", "mrcnn_mask_bn1/beta:0", "mrcnn_mask_bn1/moving_mean:0",
        "mrcnn_mask_bn1/moving_variance:0"]
    assert [n for n, _ in entries["rpn_model"]] == [
        n for n, _ in read_weight_file(FIXTURE)["rpn_model"]]


def test_fixture_loads_into_keras3_model_with_exact_values():
    model = small_model()
    report = load_weights(model, FIXTURE)
    assert sorted(report.loaded) == sorted(FIXTURE_WEIGHTED)
    assert report.missing == [] and report.unused == [] and report.mismatched == []
    assert report.n_weights == 22
    for name, value in snapshot(model).items():
        np.testing.assert_array_equal(value, golden_weight(name, value.shape), err_msg=name)


def _structure(path):
    """Every object's path, kind, attributes (values and HDF5 types), dataset shape/dtype/layout."""
    out = {}

    def attrs(obj):
        result = {}
        for key in obj.attrs:
            tid = obj.attrs.get_id(key)
            value = obj.attrs[key]
            value = [str(v) for v in np.atleast_1d(value)] if np.size(value) else []
            htype = tid.get_type()
            string = htype.get_class() == h5py.h5t.STRING
            result[key] = (value, htype.get_class(),
                           (htype.is_variable_str(), htype.get_cset()) if string else None,
                           tid.get_space().get_simple_extent_dims())
        return result

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = ("dataset", obj.shape, obj.dtype.str, obj.chunks, obj.compression,
                         attrs(obj))
        else:
            out[name] = ("group", attrs(obj))

    with h5py.File(path, "r") as f:
        out["/"] = ("root", {k: v for k, v in attrs(f).items() if k != "keras_version"})
        f.visititems(visit)
    return out


def test_written_file_has_the_fixture_structure(tmp_path):
    model = small_model()
    load_weights(model, FIXTURE)
    written = save_weights(model, tmp_path / "written.h5")
    assert _structure(written) == _structure(FIXTURE)
    for layer, weights in read_weight_file(FIXTURE).items():
        for (name, a), (name2, b) in zip(weights, read_weight_file(written)[layer]):
            assert name == name2
            np.testing.assert_array_equal(a, b)
    with h5py.File(written, "r") as f:
        import keras
        assert f.attrs["keras_version"] == keras.__version__


def test_round_trip_into_fresh_model(tmp_path):
    source = small_model()
    randomize(source, seed=1)
    path = save_weights(source, tmp_path / "w.h5")
    target = small_model()
    randomize(target, seed=2)
    report = load_weights(target, path)
    assert len(report.loaded) == len(FIXTURE_WEIGHTED)
    expected, got = snapshot(source), snapshot(target)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_bytes_strings_for_old_keras_readers(tmp_path):
    model = small_model()
    load_weights(model, FIXTURE)
    path = save_weights(model, tmp_path / "old.h5", string_format="bytes")
    with h5py.File(path, "r") as f:
        assert f.attrs["layer_names"].dtype.kind == "S"
        assert isinstance(f.attrs["backend"], (bytes, np.bytes_))
        assert f["conv1"].attrs["weight_names"].dtype.kind == "S"
    fresh = small_model()
    load_weights(fresh, path)
    for name, value in snapshot(fresh).items():
        np.testing.assert_array_equal(value, golden_weight(name, value.shape))


def test_long_layer_list_is_split_like_keras2(tmp_path):
    names = [f"layer_with_a_rather_long_name_{i:04d}" for i in range(600)]
    groups = [(n, [(f"{n}/bias:0", np.full(2, i, np.float32))]) for i, n in enumerate(names)]
    path = write_weight_file(tmp_path / "long.h5", groups, keras_version="3")
    with h5py.File(path, "r") as f:
        assert "layer_names" not in f.attrs
        parts = [f.attrs[f"layer_names{i}"] for i in range(2)]
        assert "layer_names2" not in f.attrs
        assert sum(len(p) for p in parts) == 600
    read = read_weight_file(path)
    assert list(read) == names
    np.testing.assert_array_equal(read[names[599]][0][1], [599, 599])


def test_model_save_file_with_model_weights_group(tmp_path):
    path = tmp_path / "full_model.h5"
    with h5py.File(FIXTURE, "r") as src, h5py.File(path, "w") as dst:
        dst.attrs["model_config"] = "{}"
        weights = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            weights.attrs[key] = value
        for name in src:
            src.copy(name, weights)
    model = small_model()
    load_weights(model, path)
    for name, value in snapshot(model).items():
        np.testing.assert_array_equal(value, golden_weight(name, value.shape))


# ---------------------------------------------------------------------------------------------
# loading policy
# ---------------------------------------------------------------------------------------------
def test_class_count_mismatch_raises_and_assigns_nothing(tmp_path):
    source = small_model(classes=3)
    randomize(source, seed=3)
    path = save_weights(source, tmp_path / "c3.h5")
    target = small_model(classes=2)
    before = snapshot(target)
    with pytest.raises(WeightMismatchError) as err:
        load_weights(target, path)
    message = str(err.value)
    assert "mrcnn_class_logits" in message and "(8, 3)" in message and "exclude" in message
    assert str(path) in message
    after = snapshot(target)
    for name in before:  # conv1 etc. match, yet nothing was assigned
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_exclude_heads_recipe(tmp_path):
    source = small_model(classes=3)
    randomize(source, seed=4)
    path = save_weights(source, tmp_path / "c3.h5")
    target = small_model(classes=2)
    kept = snapshot(target)["mrcnn_class_logits/kernel:0"]
    report = load_weights(target, path, exclude=[*COCO_EXCLUDE, "mrcnn_clas_logits"])
    assert file_architecture(read_weight_shapes(path))["num_classes"] == 3
    assert report.excluded == ["mrcnn_class_logits"]
    assert report.unknown_excludes == ["mrcnn_clas_logits"]  # a typo is reported
    got, expected = snapshot(target), snapshot(source)
    np.testing.assert_array_equal(got["mrcnn_class_logits/kernel:0"], kept)
    np.testing.assert_array_equal(got["conv1/kernel:0"], expected["conv1/kernel:0"])
    np.testing.assert_array_equal(got["rpn_bbox_pred/bias:0"], expected["rpn_bbox_pred/bias:0"])
    assert "excluded (1): mrcnn_class_logits" in report.summary()


def test_skip_mismatch_keeps_mismatched_layers(tmp_path):
    source = small_model(classes=3)
    randomize(source, seed=5)
    path = save_weights(source, tmp_path / "c3.h5")
    target = small_model(classes=2)
    kept = snapshot(target)["mrcnn_class_logits/bias:0"]
    report = load_weights(target, path, skip_mismatch=True)
    assert [layer for layer, _ in report.mismatched] == ["mrcnn_class_logits"]
    assert report.skipped == ["mrcnn_class_logits"]
    assert len(report.loaded) == len(FIXTURE_WEIGHTED) - 1
    np.testing.assert_array_equal(snapshot(target)["mrcnn_class_logits/bias:0"], kept)


def test_three_channel_file_into_five_channel_model():
    model = small_model(channels=5)
    preproc = snapshot(model)["PREPROC/kernel:0"]
    report = load_weights(model, FIXTURE)
    assert report.missing == ["PREPROC"]
    assert sorted(report.loaded) == sorted(FIXTURE_WEIGHTED)
    values = snapshot(model)
    np.testing.assert_array_equal(values["PREPROC/kernel:0"], preproc)
    np.testing.assert_array_equal(values["conv1/kernel:0"],
                                  golden_weight("conv1/kernel:0", (7, 7, 3, 4)))


def test_five_channel_file_tells_its_channels(tmp_path):
    model = small_model(channels=5)
    path = save_weights(model, tmp_path / "five.h5")
    assert file_architecture(read_weight_shapes(path))["image_channels"] == 5
    assert file_architecture(read_weight_shapes(FIXTURE))["image_channels"] == 3


def test_extra_file_layers_are_unused(tmp_path):
    """A ResNet-101 file into a ResNet-50 model: the file's extra blocks are ignored."""
    big = small_model(extra_layer=True)
    randomize(big, seed=6)
    path = save_weights(big, tmp_path / "big.h5")
    small = small_model()
    report = load_weights(small, path)
    assert report.unused == ["res4g_branch2a"]
    assert "unused in file (1): res4g_branch2a" in report.summary()
    np.testing.assert_array_equal(snapshot(small)["conv1/kernel:0"],
                                  snapshot(big)["conv1/kernel:0"])


def test_positional_loading_by_name_false(tmp_path):
    renamed = tmp_path / "renamed.h5"
    groups = [(f"x_{layer}", [(f"x_{n}", a) for n, a in weights])
              for layer, weights in read_weight_file(FIXTURE).items()]
    write_weight_file(renamed, groups, keras_version="2")
    model = small_model()
    for exclude in ((), COCO_EXCLUDE):
        with pytest.raises(InputError, match="shares no weighted layer"):
            load_weights(model, renamed, exclude=exclude)
    load_weights(model, renamed, by_name=False)
    for name, value in snapshot(model).items():
        np.testing.assert_array_equal(value, golden_weight(name, value.shape))


# ---------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------
def test_bad_files_raise_errors_naming_the_file(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=np.zeros(2))
        f.create_group("vars")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(FIXTURE.read_bytes()[: FIXTURE.stat().st_size // 2])
    model = small_model()
    for path, problem in [(text, "not a readable HDF5"), (plain, "layer_names"),
                          (keras3, "Keras 3 .weights.h5"),
                          (truncated, "truncated"), (tmp_path / "absent.h5", "not found")]:
        for reader in (read_weight_shapes, read_weight_file,
                       lambda p: load_weights(model, p)):
            with pytest.raises(InputError, match=problem) as err:
                reader(path)
            assert str(path) in str(err.value)


def test_group_missing_a_listed_dataset(tmp_path):
    broken = tmp_path / "broken.h5"
    shutil.copy(FIXTURE, broken)
    with h5py.File(broken, "a") as f:
        del f["conv1/conv1/bias:0"]
    model = small_model()
    before = snapshot(model)
    with pytest.raises(InputError, match="conv1/bias:0"):
        load_weights(model, broken)
    np.testing.assert_array_equal(snapshot(model)["bn_conv1/gamma:0"],
                                  before["bn_conv1/gamma:0"])


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(TypeError):
        write_weight_file(target, [("a", [("a/k:0", np.array([object()]))])], keras_version="3")
    assert list(tmp_path.iterdir()) == []


def test_maskrcnn_resnet50_round_trip(tmp_path):
    """The real graph (ResNet-50, slim heads): every variable survives save -> load."""
    from nucseg.mrcnn import Config, MaskRCNN

    config = Config.preset("matterport", inference=True, BACKBONE="resnet50", NUM_CLASSES=2,
                           TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64)
    model = MaskRCNN(config)
    randomize_bn = np.random.default_rng(7)
    for _, entries in weight_entries(model.keras_model):
        for name, v in entries:
            if "/moving_" in name or "/gamma" in name or "/beta" in name:
                v.assign(randomize_bn.uniform(0.5, 1.5, tuple(v.shape)).astype(np.float32))
    before = snapshot(model.keras_model)
    path = model.save_weights(tmp_path / "r50.h5")
    shapes = read_weight_shapes(path)
    assert file_architecture(shapes) == {"backbone": "resnet50", "num_classes": 2,
                                         "image_channels": 3}
    assert [(layer, [(n, s) for n, s, _ in ws]) for layer, ws in shapes.items() if ws] == \
        model.weighted_layers()
    for _, entries in weight_entries(model.keras_model):
        for _, v in entries:
            v.assign(np.zeros(tuple(v.shape), np.float32))
    report = model.load_weights(path)
    assert len(report.loaded) == len(model.weighted_layers()) and not report.missing
    after = snapshot(model.keras_model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


# ---------------------------------------------------------------------------------------------
# nucseg weights inspect
# ---------------------------------------------------------------------------------------------
def test_cli_inspect_lists_layers(tmp_path):
    import json

    from click.testing import CliRunner

    from nucseg.cli import main

    result = CliRunner().invoke(main, ["weights", "inspect", str(FIXTURE)])
    assert result.exit_code == 0, result.output
    assert "13 layers, 7 with weights, 22 tensors" in result.output
    assert "mrcnn_mask_deconv" in result.output and "(2, 2, 6, 4)" in result.output
    result = CliRunner().invoke(main, ["weights", "inspect", str(FIXTURE), "--json"])
    info = json.loads(result.output)
    assert [layer["name"] for layer in info["layers"]] == FIXTURE_WEIGHTED
    assert info["keras_version"] == "2.21.0" and info["layout"] == "save_weights"
    bad = tmp_path / "bad.h5"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["weights", "inspect", str(bad)])
    assert result.exit_code == 2 and str(bad) in result.output


def test_cli_inspect_against_a_config():
    import json

    from click.testing import CliRunner

    from nucseg.cli import main

    result = CliRunner().invoke(main, ["weights", "inspect", str(FIXTURE), "--backbone",
                                       "resnet50", "--channels", "5", "--exclude-heads",
                                       "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    status = {layer["name"]: layer["status"] for layer in info["layers"]}
    assert status["mrcnn_class_logits"] == "excluded"
    assert status["conv1"].startswith("mismatch") and "(7, 7, 3, 64)" in status["conv1"]
    missing = [layer["name"] for layer in info["missing"]]
    assert "PREPROC" in missing and "res4f_branch2c" in missing and "res4g_branch2c" not in missing
    assert info["plan"]["loaded"] == []
