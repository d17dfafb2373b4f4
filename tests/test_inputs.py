"""The paper's input ablation (Figure 5): models on RGB + one extra channel (4 channels), from
`nucseg train --inputs` to `nucseg predict`, with the channel built the same way in both."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from nucseg.prediction.channels import ChannelScaling, ChannelSources, extra_channels, model_input
from nucseg.data.dataset import compose_channels
from nucseg.mrcnn import Config
from nucseg.train import with_inputs

from synthetic import write_square_nuclei
from test_train import TINY
from tiny_backbone import build_tiny_backbone


@pytest.mark.parametrize("inputs, extras, means", [
    ("rgb+h", ("hematoxylin",), [0, 1, 2, 4]),
    ("rgb+distance", ("distance",), [0, 1, 2, 3]),
    ("rgb+distance+h", ("distance", "hematoxylin"), [0, 1, 2, 3, 4]),
    ("rgb", (), [0, 1, 2]),
])
def test_inputs_choose_channels_and_their_means(inputs, extras, means, tmp_path):
    paper = Config.preset("paper")
    config = with_inputs(paper, inputs)
    assert extra_channels(config) == extras and config.IMAGE_CHANNEL_COUNT == 3 + len(extras)
    np.testing.assert_array_equal(config.MEAN_PIXEL, np.asarray(paper.MEAN_PIXEL)[means])
    config.to_yaml(tmp_path / "c.yaml")
    assert extra_channels(Config.from_yaml(tmp_path / "c.yaml")) == extras    # saved and read


def test_training_and_prediction_build_the_same_four_channel_input():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)
    labels = np.zeros((40, 48), np.int32)
    labels[5:15, 5:15] = 1
    for extras in (("hematoxylin",), ("distance",)):
        trained = compose_channels(rgb, labels, 4, scaling=ChannelScaling("fixed"),
                                   extras=extras)
        assert trained.shape == (40, 48, 4)
        np.testing.assert_array_equal(trained[..., :3], rgb)
    from nucseg.stain import hematoxylin

    h_only = compose_channels(rgb, labels, 4, extras=("hematoxylin",))
    stack, _ = model_input(rgb, 4, "x", ChannelSources(), ChannelScaling(), ("hematoxylin",))
    np.testing.assert_array_equal(stack, h_only)          # no distance map was needed
    np.testing.assert_array_equal(stack[..., 3], ChannelScaling().hstain(hematoxylin(rgb)))
    with pytest.raises(ValueError, match="distance"):      # a distance model needs a source
        model_input(rgb, 4, "x", ChannelSources(), ChannelScaling(), ("distance",))
    with pytest.raises(ValueError, match="EXTRA_CHANNELS"):
        Config.preset("paper").copy(IMAGE_CHANNEL_COUNT=4)


def test_cli_trains_an_rgb_h_model_that_predict_runs_without_a_distance_source(tmp_path,
                                                                             monkeypatch):
    import nucseg.mrcnn.backbone
    import nucseg.mrcnn.model
    from nucseg.cli import main

    monkeypatch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
    monkeypatch.setattr(nucseg.mrcnn.model, "build_resnet_backbone", build_tiny_backbone)
    write_square_nuclei(tmp_path, "a", size=128, count=8, side=12, seed=0)
    config = dict(TINY, preset="paper", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, NAME="inp",
                  POST_NMS_ROIS_TRAINING=64, PRE_NMS_LIMIT=300)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"), "-o",
        str(run), "--config", str(tmp_path / "tiny.yaml"), "--epochs", "0,1,0,0",
        "--steps-per-epoch", "1", "--no-progress", "--workers", "1", "--inputs", "rgb+h"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["IMAGE_CHANNEL_COUNT"] == 4 and saved["EXTRA_CHANNELS"] == ["hematoxylin"]
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "im"), "-m", str(run),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "a_labels.tif").is_file()
