"""The inference graph: Matterport's parameter counts, layer list, PREPROC, heads, BN mode.

Each model is built once per module (a build takes a few seconds; none is run here except
tiny layer checks; the golden test runs the full graph).
"""
import json
from pathlib import Path

import numpy as np
import pytest

LAYER_LIST = Path(__file__).resolve().parent / "fixtures" / "matterport_r101_c2_layers.tsv"


def build(**overrides):
    from nucseg.mrcnn import Config, MaskRCNN

    values = dict(NUM_CLASSES=2, IMAGES_PER_GPU=1)
    values.update(overrides)
    return MaskRCNN(Config(**values))


@pytest.fixture(scope="module")
def r101():
    return build(BACKBONE="resnet101")


def parse_layer_list(path):
    layers = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, weights = line.split("\t")
        entries = []
        for item in weights.split("; "):
            weight, shape = item.split(" ", 1)
            dims = shape.strip("()").split(",")
            entries.append((weight, tuple(int(d) for d in dims if d.strip())))
        layers.append((name, entries))
    return layers


def test_weighted_layers_equal_matterport_layer_list(r101):
    expected = parse_layer_list(LAYER_LIST)
    ours = r101.weighted_layers()
    assert [name for name, _ in ours] == [name for name, _ in expected]
    assert ours == expected
    assert len(ours) == 233 and sum(len(w) for _, w in ours) == 690


def test_resnet101_two_classes_counts(r101):
    assert r101.count_params() == 63_733_406
    assert r101.count_trainable_params() == 63_621_918  # all but the BN moving statistics
    assert "PREPROC" not in [layer.name for layer in r101.keras_model.layers]


def test_graph_structure_matches_matterport(r101):
    import keras

    km = r101.keras_model
    assert km.name == "mask_rcnn"
    assert [t.name for t in km.inputs] == ["input_image", "input_image_meta", "input_anchors"]
    # no TimeDistributed anywhere; the heads are plain layers with Matterport's names
    assert not any(isinstance(layer, keras.layers.TimeDistributed) for layer in km.layers)
    assert isinstance(km.get_layer("mrcnn_class_conv1"), keras.layers.Conv2D)
    assert isinstance(km.get_layer("mrcnn_mask_deconv"), keras.layers.Conv2DTranspose)
    rpn = km.get_layer("rpn_model")
    assert isinstance(rpn, keras.Model)
    assert [layer.name for layer in rpn.layers if layer.weights] == \
        ["rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"]
    # Matterport's output order and shapes (detections padded to DETECTION_MAX_INSTANCES)
    config = r101.config
    shapes = [tuple(t.shape) for t in km.outputs]
    assert shapes[0] == (None, config.DETECTION_MAX_INSTANCES, 6)
    assert shapes[1] == (None, config.POST_NMS_ROIS_INFERENCE, 2)
    assert shapes[2] == (None, config.POST_NMS_ROIS_INFERENCE, 2, 4)
    assert shapes[3] == (None, config.DETECTION_MAX_INSTANCES, 28, 28, 2)
    assert shapes[4] == (None, config.POST_NMS_ROIS_INFERENCE, 4)
    # every BN is frozen (TRAIN_BN False) with Keras' epsilon 1e-3
    from nucseg.mrcnn.backbone import BatchNorm

    bns = [layer for layer in km.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 110  # 104 in the backbone, 6 in the heads
    assert all(isinstance(b, BatchNorm) and b.train_bn is False and b.epsilon == 1e-3
               for b in bns)


def test_resnet50_and_81_class_counts_via_cli():
    """R50 / 2 classes and R101 / 81 classes, through `nucseg model summary --json`."""
    from click.testing import CliRunner

    from nucseg.cli import main

    result = CliRunner().invoke(main, ["model", "summary", "--backbone", "resnet50",
                                       "--classes", "2", "--json"])
    assert result.exit_code == 0, result.output
    r50 = json.loads(result.output)
    assert (r50["total_params"], r50["trainable_params"], r50["non_trainable_params"]) == \
        (44_662_942, 44_603_678, 59_264)
    assert r50["weighted_layers"] == 131 and not r50["preproc"]  # 71 conv + 59 BN + rpn_model
    names = [layer["name"] for layer in r50["layers"]]
    assert "res4f_branch2c" in names and "res4g_branch2a" not in names

    from nucseg.mrcnn import Config
    from nucseg.mrcnn.model import model_summary

    coco = model_summary(Config(NUM_CLASSES=81))
    assert (coco["total_params"], coco["trainable_params"]) == (64_158_584, 64_047_096)
    logits = next(layer for layer in coco["layers"] if layer["name"] == "mrcnn_class_logits")
    assert logits["weights"][0]["shape"] == [1024, 81]


@pytest.fixture(scope="module")
def r50_five_channels():
    """A small-input 5-channel ResNet-50 (128 x 128, batch 2) that detect() can run cheaply."""
    model = build(BACKBONE="resnet50", IMAGE_CHANNEL_COUNT=5, IMAGES_PER_GPU=2,
                  MEAN_PIXEL=[176.3, 115.7, 155.4, 15.2, 123.8], IMAGE_RESIZE_MODE="none",
                  IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, POST_NMS_ROIS_INFERENCE=200,
                  DETECTION_MAX_INSTANCES=40, DETECTION_MIN_CONFIDENCE=0,
                  RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128))
    # Random weights: make every ROI a nucleus (class 1) so that detect() has output.
    logits = model.keras_model.get_layer("mrcnn_class_logits")
    logits.kernel.assign(np.zeros(logits.kernel.shape, np.float32))
    logits.bias.assign(np.array([0.0, 1.0], np.float32))
    return model


def test_preproc_five_channels(r50_five_channels):
    """+18 parameters: a 1x1 conv 5->3 with bias after the 3-px zero padding, before conv1."""
    model = r50_five_channels
    assert model.count_params() == 44_662_942 + 18
    layers = model.weighted_layers()
    assert layers[0] == ("PREPROC", [("PREPROC/kernel:0", (1, 1, 5, 3)),
                                     ("PREPROC/bias:0", (3,))])
    assert layers[1][0] == "conv1" and layers[1][1][0][1] == (7, 7, 3, 64)
    km = model.keras_model
    preproc_input = km.get_layer("PREPROC").input
    conv1_input = km.get_layer("conv1").input
    padding = preproc_input._keras_history.operation
    assert type(padding).__name__ == "ZeroPadding2D" and padding.padding == ((3, 3), (3, 3))
    assert conv1_input._keras_history.operation.name == "PREPROC"
    with pytest.raises(ValueError, match="expected \\(H, W, 5\\)"):
        model.detect([np.zeros((64, 64, 3), np.uint8)])


def test_batchnorm_mode_is_fixed_at_build_time():
    """train_bn=False uses the moving statistics even under training=True (Keras 3 passes
    the model-level flag down); train_bn=None follows the caller."""
    from nucseg.mrcnn.backbone import BatchNorm

    x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, 5)).astype(np.float32)
    frozen, following = BatchNorm(False), BatchNorm(None)
    for layer in (frozen, following):
        layer.build(x.shape)
    inference = frozen(x, training=False).numpy()
    np.testing.assert_allclose(frozen(x, training=True).numpy(), inference)
    np.testing.assert_allclose(inference, x / np.sqrt(1 + 1e-3), rtol=1e-6)
    batch_stats = following(x, training=True).numpy()
    assert abs(batch_stats.mean()) < 1e-3  # normalised by the batch's own statistics


def test_fold_and_unfold_rois_keep_per_roi_order():
    from nucseg.mrcnn.heads import FoldROIs, UnfoldROIs

    x = np.arange(2 * 3 * 2 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 2, 4)
    folded = FoldROIs()(x).numpy()
    np.testing.assert_array_equal(folded, x.reshape(6, 2, 2, 4))
    flat = folded.reshape(6, 16)
    back = UnfoldROIs((4, 4))([flat, x]).numpy()
    np.testing.assert_array_equal(back, x.reshape(2, 3, 4, 4))


def test_mode_and_config_errors():
    from nucseg.mrcnn import Config, MaskRCNN

    with pytest.raises(ValueError, match="mode must be"):
        MaskRCNN(Config(NUM_CLASSES=2), mode="train")
    with pytest.raises(ValueError, match="Config"):
        MaskRCNN({"NUM_CLASSES": 2})


def test_detect_contract_batching_and_per_image_normalization(r50_five_channels):
    """detect(): the documented result per image, any number of images (groups of
    BATCH_SIZE), and IMAGE_NORMALIZATION "per_image" equal to standardising by hand."""
    from nucseg.data.loader import standardize

    model = r50_five_channels
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (128, 128, 5)).astype(np.uint8) for _ in range(2))
    results = model.detect([a, b, a])  # batch 2: [a, b] then [a, a(repeat)]
    assert len(results) == 3
    for key in ("rois", "class_ids", "scores"):
        np.testing.assert_array_equal(results[0][key], results[2][key])
    for r in results:
        n = len(r["rois"])
        assert r["rois"].dtype == np.int32 and r["rois"].shape == (n, 4)
        assert r["class_ids"].shape == (n,) and r["scores"].dtype == np.float32
        assert np.all(np.diff(r["scores"]) <= 0)
        assert r["labels"].shape == (128, 128) and r["labels"].dtype == np.uint16
        assert r["labels"].max() <= n and len(r["masks"]) == n
        for (y1, x1, y2, x2), mask in zip(r["rois"], r["masks"]):
            assert mask.shape == (y2 - y1, x2 - x1) and mask.dtype == np.float32
    assert len(results[0]["rois"]) > 0

    original = model.config
    try:
        model.config = original.copy(IMAGE_NORMALIZATION="per_image")
        per_image = model.detect([a, b])
        model.config = original.copy(MEAN_PIXEL=[0.0] * 5)
        by_hand = model.detect([standardize(a), standardize(b)])
    finally:
        model.config = original
    for got, want in zip(per_image, by_hand):
        np.testing.assert_array_equal(got["rois"], want["rois"])
        np.testing.assert_array_equal(got["scores"], want["scores"])
    assert not np.array_equal(per_image[0]["rois"], results[0]["rois"])


def test_training_mode_has_the_same_weights(r101):
    """mode="training" wraps the training graph: the same weighted layers as inference (in
    its own topological order; loading is by name)."""
    from nucseg.mrcnn import Config, MaskRCNN

    config = Config(NUM_CLASSES=2, IMAGES_PER_GPU=1, IMAGE_RESIZE_MODE="crop",
                    IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, TRAIN_ROIS_PER_IMAGE=32,
                    MAX_GT_INSTANCES=10)
    training = MaskRCNN(config, mode="training")
    assert dict(training.weighted_layers()) == dict(r101.weighted_layers())
    assert training.count_params() == r101.count_params()
    with pytest.raises(ValueError, match="mode='inference'"):
        training.detect([np.zeros((128, 128, 3), np.uint8)])
