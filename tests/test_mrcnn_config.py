"""Config: Matterport names/defaults/derived values, presets, validation, YAML round trip."""
import numpy as np
import pytest

from nucseg.io import InputError
from nucseg.mrcnn import Config
from nucseg.mrcnn.config import load_config


def test_matterport_defaults_and_derived_values():
    config = Config()
    assert config.IMAGES_PER_GPU == 2 and config.BATCH_SIZE == 2
    assert config.NUM_CLASSES == 1 and config.IMAGE_META_SIZE == 13
    assert list(config.IMAGE_SHAPE) == [1024, 1024, 3]
    assert config.RPN_ANCHOR_SCALES == (32, 64, 128, 256, 512)
    assert config.DETECTION_MIN_CONFIDENCE == 0.7 and config.DETECTION_MASK_THRESHOLD == 0.5
    np.testing.assert_array_equal(config.MEAN_PIXEL, [123.7, 116.8, 103.9])
    assert config.MEAN_PIXEL.dtype == np.float64  # Matterport subtracts a float64 mean


def test_overrides_subclassing_and_derived_follow_edits():
    config = Config(NUM_CLASSES=81, IMAGES_PER_GPU=1, IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=512)
    assert config.IMAGE_META_SIZE == 93 and config.BATCH_SIZE == 1
    assert list(config.IMAGE_SHAPE) == [512, 512, 3]

    class Nucleus(Config):
        NUM_CLASSES = 2
        IMAGES_PER_GPU = 6
    nucleus = Nucleus()
    assert nucleus.BATCH_SIZE == 6 and nucleus.IMAGE_META_SIZE == 14
    nucleus.IMAGES_PER_GPU = 1
    assert nucleus.BATCH_SIZE == 1
    # instances never share mutable defaults
    nucleus.LOSS_WEIGHTS["rpn_class_loss"] = 5.0
    assert Config().LOSS_WEIGHTS["rpn_class_loss"] == 1.0


def test_presets():
    paper = Config.preset("paper")
    assert paper.IMAGE_CHANNEL_COUNT == 5 and len(paper.MEAN_PIXEL) == 5
    assert paper.RPN_ANCHOR_SCALES == (8, 16, 32, 64, 128)
    assert (paper.RPN_NMS_THRESHOLD, paper.TRAIN_ROIS_PER_IMAGE, paper.ROI_POSITIVE_RATIO,
            paper.MAX_GT_INSTANCES, paper.DETECTION_MAX_INSTANCES,
            paper.POST_NMS_ROIS_INFERENCE) == (0.8, 600, 0.4, 400, 400, 2000)
    infer = Config.preset("paper", inference=True)
    assert (infer.IMAGE_RESIZE_MODE, infer.RPN_NMS_THRESHOLD, infer.DETECTION_MAX_INSTANCES,
            infer.BATCH_SIZE) == ("pad64", 0.7, 2000, 1)
    rgb = Config.preset("paper", inference=True, IMAGE_CHANNEL_COUNT=3)
    np.testing.assert_allclose(rgb.MEAN_PIXEL, paper.MEAN_PIXEL[:3])
    ren = Config.preset("ren")
    assert ren.BACKBONE == "resnet101" and ren.DETECTION_MASK_THRESHOLD == 0.35
    assert ren.POST_NMS_ROIS_INFERENCE > Config.POST_NMS_ROIS_INFERENCE
    assert ren.RPN_TRAIN_ANCHORS_PER_IMAGE > Config.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert Config.preset("matterport").to_dict() == Config().to_dict()
    with pytest.raises(ValueError, match="unknown preset"):
        Config.preset("coco")


@pytest.mark.parametrize("overrides, message", [
    (dict(IMAGE_MAX_DIM=1000), "divisible by 64"),
    (dict(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=600), "divisible by 64"),
    (dict(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=250), "pad64"),
    (dict(MEAN_PIXEL=[1.0, 2.0]), "MEAN_PIXEL has 2 values"),
    (dict(IMAGE_CHANNEL_COUNT=5), "IMAGE_CHANNEL_COUNT is 5"),
    (dict(MASK_SHAPE=[14, 14]), "MASK_SHAPE"),
    (dict(BACKBONE="vgg16"), "BACKBONE"),
    (dict(IMAGE_RESIZE_MODE="stretch"), "IMAGE_RESIZE_MODE"),
    (dict(NUM_CLASSES=0), "NUM_CLASSES"),
    (dict(RPN_NMS_THRESHOLD=1.5), "RPN_NMS_THRESHOLD"),
    (dict(RPN_ANCHOR_SCALES=(8, 16, 32)), "RPN_ANCHOR_SCALES"),
    (dict(NUM_CLASSE=2), "unknown config attribute 'NUM_CLASSE'"),
])
def test_invalid_values_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config(**overrides)


def test_yaml_round_trip_and_errors(tmp_path):
    config = Config.preset("paper", inference=True, NAME="fold3", DETECTION_MIN_CONFIDENCE=0.5)
    path = config.to_yaml(tmp_path / "model.yaml")
    loaded = Config.from_yaml(path)
    assert loaded.to_dict() == config.to_dict()
    np.testing.assert_array_equal(loaded.MEAN_PIXEL, config.MEAN_PIXEL)

    (tmp_path / "short.yaml").write_text("preset: paper\ninference: true\nBACKBONE: resnet101\n")
    short = load_config(tmp_path / "short.yaml")
    assert short.BACKBONE == "resnet101" and short.IMAGE_RESIZE_MODE == "pad64"

    (tmp_path / "bad.yaml").write_text("IMAGE_MAX_DIM: 1000\n")
    with pytest.raises(InputError, match="bad.yaml.*divisible by 64"):
        Config.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        Config.from_yaml(tmp_path / "list.yaml")
    with pytest.raises(InputError, match="not found"):
        Config.from_yaml(tmp_path / "missing.yaml")


def test_image_normalization_attribute():
    assert Config().IMAGE_NORMALIZATION == "mean_pixel"
    assert Config(IMAGE_NORMALIZATION="per_image").IMAGE_NORMALIZATION == "per_image"
    with pytest.raises(ValueError, match="IMAGE_NORMALIZATION"):
        Config(IMAGE_NORMALIZATION="zscore")


def test_load_config_names_a_bad_spec():
    assert load_config("paper").IMAGE_CHANNEL_COUNT == 5
    assert load_config(None).NAME is None
    with pytest.raises(ValueError, match="neither a preset"):
        load_config("papr")
