"""The multi-task U-Net (docs/multitask-unet.md): targets, network, commands, member/merge.

Network tests use tests/tiny_backbone.py in place of the ResNet and decoder width 4, so each
training step takes milliseconds on a CPU; the real ResNet-101 is only built (its layer list
checked against Matterport's), not trained.
"""
import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
import yaml

from nucseg.cli import main
from nucseg.io import read_labels, write_labels, write_rgb
from nucseg.multitask.targets import (TargetOptions, adjacent_boundary, interior,
                                      make_targets)

# Keras' own save_weights converts variables with np.array(x), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def discs(shape, centres, radius):
    """Label map with one disc per centre (ids 1..n; a later disc never overwrites)."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & (labels == 0)] = k
    return labels


def components(mask):
    from scipy import ndimage

    return ndimage.label(mask)[1]


# ---------------------------------------------------------------------------------------------
# 1. targets
# ---------------------------------------------------------------------------------------------
def test_two_touching_discs_boundary_only_where_they_touch():
    labels = discs((40, 60), [(20, 20), (20, 37)], 9)      # overlap -> a straight contact line
    fg, bd, inner = (make_targets(labels)[..., k].astype(bool) for k in range(3))
    assert np.array_equal(fg, labels > 0)
    assert bd.any() and not (bd & (labels == 0)).any()
    # on both nuclei, and every boundary pixel within 2 px of the other nucleus
    assert set(np.unique(labels[bd])) == {1, 2}
    from scipy import ndimage
    for k, other in ((1, 2), (2, 1)):
        near_other = ndimage.distance_transform_edt(labels != other) <= 2
        assert np.array_equal(bd & (labels == k), (labels == k) & near_other)
    # the far sides of the discs (edges towards background) are not boundary
    assert not bd[:, :25].any() and not bd[:, 33:].any()
    # interiors: one per disc, apart, inside their own disc, off the boundary
    assert components(inner & (labels == 1)) == 1 and components(inner & (labels == 2)) == 1
    assert components(inner) == 2 and not (inner & bd).any()
    dist = ndimage.distance_transform_edt(labels == 1)
    assert np.array_equal(inner & (labels == 1), (labels == 1) & (dist > 2)
                          & (ndimage.distance_transform_edt(labels != 2) > 2))


def test_a_strip_keeps_a_connected_centre_line():
    labels = np.zeros((20, 50), np.int32)
    labels[8:11, 5:45] = 1                      # 3 px wide: erosion by 2 px would remove it
    labels[8:11, 45:48] = 2                     # a small nucleus touching its end
    t = make_targets(labels)
    inner = t[..., 2].astype(bool)
    strip = inner & (labels == 1)
    assert strip.any() and components(strip) == 1
    assert np.all(np.flatnonzero(strip.any(axis=1)) == [9])       # the centre row only
    assert strip[9].sum() >= 30                                   # most of its length
    bd = t[..., 1].astype(bool)
    assert bd[8:11, 43:47].all()                 # 2 px on each side of the contact
    assert not bd[:, :43].any() and not bd[:, 47:].any()


def test_a_5px_nucleus_keeps_its_centre():
    labels = np.zeros((15, 15), np.int32)
    labels[5:10, 5:10] = discs((5, 5), [(2, 2)], 2.5)             # 5 px across, 21 px
    labels[12, 12] = 7                                            # a single pixel
    inner = interior(labels, 2.0)
    assert inner[7, 7] and (inner & (labels == 1)).sum() == 1     # its centre only
    assert inner[12, 12]
    # larger radii never lose a nucleus either
    for radius in (0.0, 1.0, 4.0, 10.0):
        got = interior(labels, radius)
        assert {1, 7} <= set(np.unique(labels[got]))


def test_boundary_distance_option_and_validation():
    labels = discs((30, 50), [(15, 15), (15, 32)], 8)
    widths = [adjacent_boundary(labels, d)[15].sum() for d in (1, 2, 3)]
    assert widths[0] < widths[1] < widths[2]
    assert make_targets(np.zeros((4, 4), np.int32)).sum() == 0
    with pytest.raises(ValueError):
        TargetOptions(boundary_distance=0)
    with pytest.raises(ValueError):
        make_targets(np.zeros((4, 4), np.float32))


def test_cli_targets_writes_maps_and_refuses_bad_label_maps(tmp_path):
    labels = discs((40, 60), [(20, 20), (20, 37)], 9)
    write_labels(tmp_path / "in" / "tile_labels.tif", labels)
    result = CliRunner().invoke(main, ["multitask", "targets", str(tmp_path / "in"),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    from PIL import Image
    fg = np.asarray(Image.open(tmp_path / "out" / "tile_foreground.png"))
    assert fg.dtype == np.uint8 and set(np.unique(fg)) == {0, 255}
    assert np.array_equal(fg > 0, labels > 0)
    for name in ("tile_boundary.png", "tile_interior.png", "tile_targets.png",
                 "multitask_targets_record.yaml"):
        assert (tmp_path / "out" / name).is_file()
    # float and negative maps: one error line each, no traceback, nothing written for them
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "frac.npy", np.full((8, 8), 0.5, np.float32))
    np.save(tmp_path / "bad" / "neg.npy", np.full((8, 8), -1, np.int32))
    result = CliRunner().invoke(main, ["multitask", "targets", str(tmp_path / "bad"),
                                       "-o", str(tmp_path / "out2")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "Traceback" not in result.output
    assert any("frac.npy" in e and "integers" in e for e in errors)
    assert any("neg.npy" in e and "negative" in e for e in errors)
    assert not list((tmp_path / "out2").glob("*.png"))


# ---------------------------------------------------------------------------------------------
# 2. network, loss, --init-backbone
# ---------------------------------------------------------------------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_backbone import build_tiny_backbone  # noqa: E402

import nucseg.mrcnn.backbone  # noqa: E402

RESNET = nucseg.mrcnn.backbone.build_resnet_backbone


@pytest.fixture(autouse=True, scope="module")
def tiny_resnet():
    """The tiny pyramid in place of the ResNet (same layer names conv1, res2a_branch2a, ...)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
        yield


def tiny_net(seed=0, width=4):
    from nucseg.multitask.network import NetworkConfig, build_network

    config = NetworkConfig(backbone="resnet50", decoder_width=width)
    return build_network(config, seed=seed), config


def test_network_outputs_three_sigmoid_maps_with_matterport_encoder_names():
    from nucseg.multitask.network import TASKS, encoder_layer_names

    model, _ = tiny_net()
    outputs = model(np.random.default_rng(0).normal(0, 50, (1, 64, 96, 3)).astype(np.float32))
    assert [tuple(o.shape) for o in outputs] == [(1, 64, 96, 1)] * 3
    assert all(np.all(np.asarray(o) == 0.5) for o in outputs)      # zero-initialised outputs
    assert model.output_names == list(TASKS)
    assert encoder_layer_names(model) == ["conv1", "res2a_branch2a", "res3a_branch2a",
                                          "res4a_branch2a", "res5a_branch2a"]
    names = {layer.name for layer in model.layers}
    for task in TASKS:          # skips at strides 16, 8, 4, 2 on every decoder
        assert {f"{task}_concat{level}" for level in (1, 2, 3, 4)} <= names


def test_resnet101_encoder_matches_the_matterport_layer_list(fixtures_dir, monkeypatch):
    """Every encoder layer of the real ResNet-101 network is in Matterport's Mask R-CNN layer
    list with the same weight names and shapes, so --init-backbone loads all of it by name."""
    from nucseg.mrcnn.weights import model_weight_shapes, plan_load
    from nucseg.multitask.network import NetworkConfig, build_network, encoder_layer_names

    monkeypatch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", RESNET)
    model = build_network(NetworkConfig("resnet101", decoder_width=1))
    file_shapes = {}
    for line in (fixtures_dir / "matterport_r101_c2_layers.tsv").read_text().splitlines():
        if not line.startswith("#"):
            layer, weights = line.split("\t")
            pairs = [w.split(" ", 1) for w in weights.split("; ")]
            file_shapes[layer] = [(name, ast.literal_eval(shape), "") for name, shape in pairs]
    encoder = encoder_layer_names(model)
    decoders = [layer.name for layer in model.layers if layer.name not in encoder]
    report, _ = plan_load(model_weight_shapes(model), file_shapes, exclude=decoders)
    assert len(encoder) == 208 and sorted(report.loaded) == sorted(encoder)
    assert not report.mismatched and not report.missing


def test_loss_is_bce_plus_dice_over_valid_pixels():
    import tensorflow as tf

    from nucseg.multitask.network import LossWeights, task_losses

    y = np.zeros((1, 8, 8, 3), np.float32)
    y[0, 2:6, 2:6] = 1
    mask = np.ones((1, 8, 8, 1), np.float32)
    logit = np.log(0.99 / 0.01)                              # p = 0.99 right, 0.01 wrong
    good = [tf.constant(np.where(y[..., k:k + 1] > 0, logit, -logit)) for k in range(3)]
    bad = [-g for g in good]
    total_good, parts = task_losses(y, good, mask, LossWeights())
    total_bad, _ = task_losses(y, bad, mask, LossWeights())
    assert float(total_good) < 0.1 < float(total_bad)
    bce_only, _ = task_losses(y, good, mask, LossWeights(bce=1, dice=0))
    assert np.isclose(float(bce_only), 3 * -np.log(0.99), rtol=1e-4)
    # a saturated wrong logit still has a gradient (BCE from logits, not clipped probabilities)
    z = tf.Variable(np.full((1, 8, 8, 1), -40.0, np.float32))
    with tf.GradientTape() as tape:
        total, _ = task_losses(y, [z, good[1], good[2]], mask, LossWeights())
    assert float(tf.reduce_min(tape.gradient(total, z))) < -0.01
    # pixels outside the mask do not count, and the task weights weigh the tasks
    wrong_outside = [tf.constant(np.where(np.arange(8)[None, None, :, None] < 7, g, -g))
                     for g in (p.numpy() for p in good)]
    mask[..., 7:, :] = 0
    a, _ = task_losses(y, good, mask, LossWeights())
    b, _ = task_losses(y, wrong_outside, mask, LossWeights())
    assert np.isclose(float(a), float(b))
    only_fg, _ = task_losses(y, bad, mask, LossWeights(tasks=(1, 0, 0)))
    _, parts_bad = task_losses(y, bad, mask, LossWeights())
    assert np.isclose(float(only_fg), float(parts_bad[0]))
    with pytest.raises(ValueError):
        LossWeights(bce=0, dice=0)


def test_init_backbone_loads_the_encoder_by_name_and_refuses_bad_files(tmp_path):
    from nucseg.io import InputError
    from nucseg.mrcnn.weights import save_weights
    from nucseg.mrcnn.weights_h5 import read_weight_file, write_weight_file
    from nucseg.multitask.network import encoder_layer_names, load_backbone

    source, _ = tiny_net(seed=1)
    save_weights(source, tmp_path / "maskrcnn.h5")          # Matterport layout, by name
    target, config = tiny_net(seed=2)
    decoder_before = target.get_layer("interior_conv0a").get_weights()[0].copy()
    assert not np.array_equal(source.get_layer("interior_conv0a").get_weights()[0],
                              decoder_before)
    report = load_backbone(target, tmp_path / "maskrcnn.h5", config)
    assert report["layers_loaded"] == 5
    for name in encoder_layer_names(target):
        for a, b in zip(source.get_layer(name).get_weights(), target.get_layer(name).get_weights()):
            assert np.array_equal(a, b)
    assert np.array_equal(target.get_layer("interior_conv0a").get_weights()[0], decoder_before)

    groups = list(read_weight_file(tmp_path / "maskrcnn.h5").items())
    heads = [(n, ws) for n, ws in groups if n.startswith(("foreground", "interior"))]
    write_weight_file(tmp_path / "heads_only.h5", heads, keras_version="2.2.4")
    with pytest.raises(InputError, match="holds no ResNet backbone"):
        load_backbone(target, tmp_path / "heads_only.h5", config)
    wider = [(n, [(w, np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), a.dtype)
                   if n == "res3a_branch2a" else a) for w, a in ws]) for n, ws in groups]
    write_weight_file(tmp_path / "mismatch.h5", wider, keras_version="2.2.4")
    with pytest.raises(InputError, match="res3a_branch2a") as caught:
        load_backbone(target, tmp_path / "mismatch.h5", config)
    assert "\n" not in str(caught.value) and "nothing was loaded" in str(caught.value)
    partial = [(n, ws) for n, ws in groups if n != "res4a_branch2a"]
    write_weight_file(tmp_path / "partial.h5", partial, keras_version="2.2.4")
    with pytest.raises(InputError, match="1 of the 5 layers .* missing .res4a_branch2a"):
        load_backbone(target, tmp_path / "partial.h5", config)
    nan = [(n, [(w, np.full(a.shape, np.nan, a.dtype) if n == "conv1" else a) for w, a in ws])
           for n, ws in groups]
    write_weight_file(tmp_path / "nan.h5", nan, keras_version="2.2.4")
    with pytest.raises(InputError, match="NaN"):
        load_backbone(target, tmp_path / "nan.h5", config)


# ---------------------------------------------------------------------------------------------
# 3. commands: train (resume, record), predict (maps, nuclei, outputs like `nucseg predict`)
# ---------------------------------------------------------------------------------------------
TRAIN_ARGS = ["--decoder-width", "4", "--crop-size", "64", "--batch-size", "2",
              "--no-progress", "--checkpoint-every", "1", "--seed", "3"]


def write_tile(root, name, seed):
    """A 64 x 96 pink tile with dark purple discs (some touching) and its label map."""
    rng = np.random.default_rng(seed)
    centres = [(16, 16), (16, 31), (46, 60), (40, 84), (50, 20)]
    labels = discs((64, 96), [(y + rng.integers(-2, 3), x + rng.integers(-2, 3))
                              for y, x in centres], 7)
    rgb = np.where(labels[..., None] > 0, [90, 40, 140], [235, 170, 210]).astype(np.float64)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    write_rgb(root / "images" / f"{name}.png", rgb)
    write_labels(root / "labels" / f"{name}_labels.tif", labels)
    return labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_data")
    for k in range(3):
        write_tile(root, f"tile{k}", k)
    return root


def run_cli(*args):
    result = CliRunner().invoke(main, ["multitask", *map(str, args)])
    return result


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("mt_runs") / "two"
    result = run_cli("train", "--images", data / "images", "--labels", data / "labels",
                     "-o", run, "--epochs", 2, *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    return run


def test_train_writes_config_checkpoints_log_and_record(trained):
    import yaml

    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["format"] == "nucseg-multitask-unet"
    assert config["network"]["decoder_width"] == 4 and config["training"]["epochs_done"] == 2
    assert config["network"]["train_bn"] is True              # no --init-backbone
    assert config["targets"] == {"boundary_distance": 2.0, "interior_radius": 2.0}
    for name in ("multitask.weights.h5", "checkpoints/epoch_001.weights.h5",
                 "checkpoints/epoch_002.weights.h5", "checkpoints/state.npz",
                 "multitask_train_record.yaml"):
        assert (trained / name).is_file(), name
    log = (trained / "training_log.csv").read_text().splitlines()
    assert log[0] == "epoch,learning_rate,loss,foreground,boundary,interior,seconds"
    assert len(log) == 3
    record = yaml.safe_load((trained / "multitask_train_record.yaml").read_text())
    assert record["command"] == "multitask train" and record["epochs_done"] == 2


def test_resume_continues_with_the_saved_state_and_refuses_other_settings(data, trained,
                                                                         tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(trained, run)
    result = run_cli("train", "-o", run, "--resume", "--epochs", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    log = (run / "training_log.csv").read_text().splitlines()
    assert log[:3] == (trained / "training_log.csv").read_text().splitlines() and len(log) == 4
    with np.load(run / "checkpoints" / "state.npz") as state:    # Adam went on counting
        assert int(state["epochs_done"]) == 3 and int(state["v0000"]) == 3 * 2
    result = run_cli("train", "-o", run, "--resume", "--lr", "0.1")
    assert result.exit_code == 2 and "--lr" in result.output
    # without --epochs a resume keeps the run's own target (3, reached): a clear line, not a
    # silent "trained 50 epochs" with the target reset to the default
    result = run_cli("train", "-o", run, "--resume", "--no-progress")
    assert result.exit_code != 0 and "done 3 of 3 epoch(s)" in result.output
    assert "Traceback" not in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["options"]["epochs"] == 3
    result = run_cli("train", "--images", data / "images", "--labels", data / "labels",
                     "-o", run, "--epochs", 1, *TRAIN_ARGS)     # a run is there already
    assert result.exit_code == 2 and "--resume" in result.output


def test_init_backbone_bad_file_is_one_line_and_leaves_nothing(data, tmp_path):
    from nucseg.mrcnn.weights_h5 import write_weight_file

    write_weight_file(tmp_path / "no_resnet.h5",
                      [("mrcnn_mask", [("mrcnn_mask/kernel:0", np.zeros((1, 1, 4, 2)))])],
                      keras_version="2.2.4")
    (tmp_path / "not_hdf5.h5").write_text("hello")
    for bad in ("no_resnet.h5", "not_hdf5.h5"):
        run = tmp_path / f"run_{bad}"
        result = run_cli("train", "--images", data / "images", "--labels", data / "labels",
                         "-o", run, "--epochs", 1, "--init-backbone", tmp_path / bad,
                         *TRAIN_ARGS)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: {tmp_path / bad}: ") and "Traceback" not in lines[0]
        assert not run.exists() or not any(run.iterdir())
    # a label map that cannot make targets stops training before anything is written
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_rgb(tmp_path / "images" / "t.png", np.zeros((64, 64, 3), np.uint8))
    np.save(tmp_path / "labels" / "t.npy", np.full((64, 64), -3, np.int32))
    result = run_cli("train", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
                     "-o", tmp_path / "run_neg", "--epochs", 1, *TRAIN_ARGS)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {tmp_path / 'labels' / 't.npy'}: ")
    assert "negative" in result.output and not (tmp_path / "run_neg").exists()


def test_watershed_separates_touching_nuclei_and_keeps_small_ones():
    from nucseg.multitask.predict import WatershedOptions, instances

    labels = discs((60, 80), [(20, 20), (20, 36), (45, 60)], 9)
    labels[50, 10:13] = 9                                   # 3 px: under --min-area
    labels[40:44, 20:24] = 5                                # 16 px, no interior marker
    maps = make_targets(labels).astype(np.float32) * 0.9 + 0.05
    maps[40:44, 20:24, 2] = 0.05
    found = instances(maps, WatershedOptions(min_area=10))
    # the two touching discs come out as two nuclei, each >= 95% of its own disc
    for k in (1, 2, 3, 5):
        ids, counts = np.unique(found[labels == k], return_counts=True)
        assert ids[0] > 0 and counts.max() >= 0.95 * (labels == k).sum(), k
    assert len(np.unique(found[(labels == 1) | (labels == 2)])) == 2
    assert not found[labels == 9].any()                     # removed as too small
    assert len(np.unique(found)) == 5                       # background + 4 nuclei


def test_predict_writes_maps_nuclei_member_and_record(data, trained, tmp_path):
    import yaml

    from nucseg.prediction.export import read_geojson
    from nucseg.io import read_float_map
    from nucseg.prediction.members import load_member

    out = tmp_path / "pred"
    result = run_cli("predict", data / "images" / "tile0.png", data / "images" / "tile1.png",
                     "-m", trained, "-o", out, "--keep-members", "--member-index", 7,
                     "--min-area", 1, "--tile-size", 64, "--margin", 0)   # 2 tiles per image
    assert result.exit_code == 0, result.output
    for task in ("foreground", "boundary", "interior"):
        p = read_float_map(out / f"tile0_{task}.tif")
        assert p.shape == (64, 96) and 0 <= p.min() and p.max() <= 1
    labels = read_labels(out / "tile0_labels.tif")
    assert labels.shape == (64, 96)
    member = load_member(out / "tile0_member07.npz")
    assert member.image_shape == (64, 96) and member.model.startswith("multitask:")
    assert len(member) == labels.max() == len(read_geojson(out / "tile0.geojson")["features"])
    fg = read_float_map(out / "tile0_foreground.tif")
    for k, (y1, x1, y2, x2) in enumerate(member.rois, start=1):   # score = mean P(foreground)
        assert np.isclose(member.scores[k - 1], fg[labels == k].mean(), atol=1e-5)
        assert np.array_equal(member.masks[k - 1] > 0.5, labels[y1:y2, x1:x2] == k)
    assert (out / "tile0_nuclei.csv").read_text().startswith("id,centroid_x")
    record = yaml.safe_load((out / "tile0_record.yaml").read_text())
    assert record["command"] == "multitask predict" and "tile0_member07.npz" in record["outputs"]
    result = run_cli("predict", data / "images", "-m", trained, "-o", out, "--resume",
                     "--keep-members", "--member-index", 7, "--min-area", 1,
                     "--tile-size", 64, "--margin", 0)
    assert result.exit_code == 0 and "2 of 3 image(s) already done" in result.output
    # a directory that is not a run, weights that do not fit: one line, status 2
    result = run_cli("predict", data / "images", "-m", tmp_path, "-o", tmp_path / "x")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "config.yaml: missing" in result.output
    result = run_cli("predict", data / "images", "-m", trained, "-o", tmp_path / "y",
                     "--weights", data / "labels" / "tile0_labels.tif")
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert result.output.count("\n") == 1 and "does not fit" in result.output


def test_tune_writes_the_best_thresholds_and_predict_takes_them_unless_typed(data, trained,
                                                                            tmp_path):
    """`multitask tune` scores every (foreground, interior) pair on labelled tiles and keeps
    the best in <run>/watershed.yaml; predict (and `nucseg predict -m RUN`) use it, a typed
    threshold wins, and a bad file is one error line."""
    import shutil

    import yaml

    from nucseg.model_files import load_model, resolve_model

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    result = run_cli("tune", "-m", run, "--images", data / "images", "--labels",
                     data / "labels", "--values", "0.3,0.6", "--tile-size", 64, "--margin", 0,
                     "--no-progress")
    assert result.exit_code == 0, result.output
    tuned = yaml.safe_load((run / "watershed.yaml").read_text())
    assert [(r["t_foreground"], r["t_interior"]) for r in tuned["grid"]] == [
        (0.3, 0.3), (0.3, 0.6), (0.6, 0.3), (0.6, 0.6)]
    best = max(tuned["grid"], key=lambda r: r["aji"])
    assert (tuned["t_foreground"], tuned["t_interior"]) == (best["t_foreground"],
                                                           best["t_interior"])
    assert tuned["mean_aji"] == best["aji"] and tuned["tiles"] == ["tile0", "tile1", "tile2"]
    # predict's defaults come from the file (written here by hand: values no default has)
    tuned.update(t_foreground=0.35, t_interior=0.65)
    (run / "watershed.yaml").write_text(yaml.safe_dump(tuned))
    args = ["predict", data / "images" / "tile0.png", "-m", run, "--min-area", 1,
            "--tile-size", 64, "--margin", 0]
    for extra, expected in (([], (0.35, 0.65)), (["--interior-threshold", 0.4], (0.35, 0.4))):
        out = tmp_path / f"out{len(extra)}"
        result = run_cli(*args, "-o", out, *extra)
        assert result.exit_code == 0, result.output
        used = yaml.safe_load((out / "tile0_record.yaml").read_text())["options"]["watershed"]
        assert (used["t_foreground"], used["t_interior"]) == expected
    detector = load_model(resolve_model(run))             # `nucseg predict -m RUN`
    assert (detector.watershed.t_foreground, detector.watershed.t_interior) == (0.35, 0.65)
    tuned["t_interior"] = 1.5
    (run / "watershed.yaml").write_text(yaml.safe_dump(tuned))
    result = run_cli(*args, "-o", tmp_path / "bad")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "watershed.yaml" in result.output and "t_interior" in result.output
    assert not (tmp_path / "bad" / "tile0_labels.tif").exists()
