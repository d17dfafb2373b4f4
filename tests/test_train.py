"""Training: schedules, layer selection, folds, and the learning test on one MoNuSeg crop."""
import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from nucseg import fold_training as F
from nucseg import train as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import write_square_nuclei  # noqa: E402
from tiny_backbone import build_tiny_backbone  # noqa: E402

TILE = "TCGA-18-5592-01Z-00-DX1"
CROP = (620, 248)    # a 256 x 256 window holding 49 nuclei


def test_paper_schedule_rates_layers_and_bounds():
    stages = T.build_schedule("paper", 1e-4)
    assert [s.learning_rate for s in stages] == pytest.approx([2e-4, 1e-4, 5e-5, 1e-5])
    assert [s.layers for s in stages] == ["preproc+heads", "all", "5+", "heads"]
    assert {s.optimizer for s in stages} == {"adam"}
    assert T.stage_bounds(stages) == [(0, 5), (5, 40), (40, 45), (45, 50)]
    assert T.selected_stages(stages, "3") == [2]
    with pytest.raises(ValueError, match="--stage"):
        T.selected_stages(stages, "5")


def test_matterport_schedule():
    stages = T.build_schedule("matterport", 1e-3, epochs=[1, 2, 3])
    assert [(s.layers, s.optimizer) for s in stages] == [("heads", "sgd"), ("4+", "sgd"),
                                                         ("all", "sgd")]
    assert [s.learning_rate for s in stages] == pytest.approx([1e-3, 1e-3, 1e-4])
    with pytest.raises(ValueError, match="3 non-negative"):
        T.build_schedule("matterport", 1e-3, epochs=[1, 2])


def test_layer_presets_select_matterport_layers():
    from nucseg.mrcnn.config import Config
    from nucseg.mrcnn.training import build_training_model, set_trainable

    model = build_training_model(Config.preset("paper", TRAIN_ROIS_PER_IMAGE=8,
                                               POST_NMS_ROIS_TRAINING=16))
    heads = set(set_trainable(model, "heads"))
    assert {"rpn_conv_shared", "fpn_p2", "mrcnn_mask", "mrcnn_class_conv1"} <= heads
    assert not any(n.startswith(("res", "bn", "conv1", "PREPROC")) for n in heads)
    stage1 = set(set_trainable(model, "preproc+heads"))
    assert {"PREPROC", "conv1", "mrcnn_mask_bn1"} <= stage1
    assert not stage1 & {"bn_conv1", "fpn_p2", "rpn_conv_shared", "res2a_branch2a"}
    five = set(set_trainable(model, "5+"))
    assert "res5c_branch2c" in five and "bn5a_branch1" in five and "res4a_branch2a" not in five
    # BN layers stay trainable (gamma/beta) but never update their moving statistics
    n_all = len(set_trainable(model, "all"))
    assert n_all == len([v for v in model.weights if v.path.endswith("kernel")]) + \
        len([v for v in model.weights if v.path.endswith("gamma")])
    trainable = {v.path for v in model.trainable_weights}
    assert not any("moving" in p for p in trainable)


def test_organ_and_k_folds(data_dir):
    import csv as _csv

    meta = data_dir / "metadata.csv"
    with open(meta) as fh:
        names = [r["id"] for r in _csv.DictReader(fh)]
    folds = T.organ_folds(meta, names)
    assert [f[0] for f in folds] == ["without_breast", "without_kidney", "without_liver",
                                     "without_prostate", "without_bladder_colon_stomach"]
    assert all(len(train) == 24 and len(held) == 6 for _, train, held in folds)
    assert sorted(sum((f[2] for f in folds), [])) == sorted(names)
    kf = T.k_folds(names, 5, seed=1)
    assert sorted(sum((f[2] for f in kf), [])) == sorted(names)
    assert all(not set(train) & set(held) for _, train, held in kf)


def test_organ_folds_say_which_groups_have_no_images(tmp_path, monkeypatch):
    """Only breast and liver tiles: two fold models, and the run says the others are missing."""
    for k, name in enumerate(["b1", "l1", "l2"]):
        write_square_nuclei(tmp_path, name, size=64, count=2, side=8, seed=k)
    meta = tmp_path / "meta.csv"
    meta.write_text("id,organ\nb1,Breast\nl1,Liver\nl2,liver\n")
    planned, lines = [], []
    monkeypatch.setattr(F, "train_folds", lambda config, data, run, opts, folds, log, dask:
                        planned.extend(f[0] for f in folds) or [])
    T.train_command(tmp_path / "run", tmp_path / "im", tmp_path / "lab", folds="organ",
                    metadata=meta, log=lines.append)
    assert planned == ["without_breast", "without_liver"]
    assert any("kidney, prostate, bladder+colon+stomach: 2 fold models instead of 5" in line
               for line in lines), lines


# ---------------------------------------------------------------------------------------------
# the learning test
# ---------------------------------------------------------------------------------------------
TINY = dict(TRAIN_ROIS_PER_IMAGE=24, ROI_POSITIVE_RATIO=0.5, MASK_POOL_SIZE=7, MASK_SHAPE=[14, 14], TOP_DOWN_PYRAMID_SIZE=64,
            FPN_CLASSIF_FC_LAYERS_SIZE=128, POST_NMS_ROIS_TRAINING=300, PRE_NMS_LIMIT=1000,
            MAX_GT_INSTANCES=100, NAME="tiny")


@pytest.fixture
def crop_dataset(data_dir, tmp_path):
    from nucseg.io import read_labels, read_rgb, write_labels, write_rgb

    y, x = CROP  # tests/data holds just this window of the tile
    crop = f"{TILE}_r{y}-{y + 255}_c{x}-{x + 255}"
    rgb = read_rgb(data_dir / "images" / f"{crop}.tif")
    labels = read_labels(data_dir / "labels" / f"{crop}.png")
    write_rgb(tmp_path / "images" / "crop.png", rgb)
    write_labels(tmp_path / "labels" / "crop.tif", labels)
    return tmp_path


def _recall(gt: np.ndarray, pred: np.ndarray, threshold=0.5) -> float:
    hits = 0
    ids = [i for i in np.unique(gt) if i]
    for i in ids:
        inside = gt == i
        cand, counts = np.unique(pred[inside], return_counts=True)
        best = 0.0
        for c, inter in zip(cand, counts):
            if c:
                best = max(best, inter / np.sum(inside | (pred == c)))
        hits += best >= threshold
    return hits / len(ids)


def test_learning_on_one_monuseg_crop(crop_dataset, tmp_path, monkeypatch):
    """Loss halves and detection then finds most nuclei (recall >= 0.5 at IoU 0.5)."""
    import nucseg.mrcnn.backbone
    import nucseg.mrcnn.model
    from nucseg.data.dataset import Dataset
    from nucseg.mrcnn import MaskRCNN
    from nucseg.mrcnn.config import Config

    monkeypatch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
    monkeypatch.setattr(nucseg.mrcnn.model, "build_resnet_backbone", build_tiny_backbone)
    dataset = Dataset(crop_dataset / "images", crop_dataset / "labels", channels=5)
    config = Config.preset("paper", **TINY, IMAGE_NORMALIZATION="per_image")
    options = T.TrainOptions(
        schedule="paper", stage="all", epochs=[0, 2, 1, 0], steps_per_epoch=12,
        learning_rate=1e-3, progress=False,
        augment=dict(crop_size=256, flips=False, rotate=False, brightness_contrast=False),
        loader=dict(seed=3, workers=1))
    run = tmp_path / "run"
    T.train_run(config, dataset, run, options, log=lambda *a: None)
    assert sorted(p.name for p in run.glob("*.h5")) == [
        "mask_rcnn_tiny_0001.h5", "mask_rcnn_tiny_0002.h5", "mask_rcnn_tiny_0003.h5"]

    # resume inside stage 2 after losing the last checkpoint (as after a crash)
    (run / "mask_rcnn_tiny_0003.h5").unlink()
    summary = T.train_run(None, dataset, run, T.TrainOptions(progress=False), resume=True,
                          log=lambda *a: None)
    assert summary["epoch"] == 3 and summary["steps"] == 12
    with open(run / "losses.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 37))     # redone steps not doubled
    assert [r["stage"] for r in rows[::12]] == ["2", "2", "3"]
    total = np.array([float(r["loss"]) for r in rows])
    assert total[-6:].mean() <= 0.5 * total[:3].mean(), total
    positives = np.array([int(r["positive_rois"]) for r in rows])
    cap = int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO) * config.BATCH_SIZE
    assert positives.max() > 0 and positives.min() >= 0 and positives.max() <= cap

    # what predict does with a run directory: its config (per-image normalisation included)
    infer = Config.from_yaml(run / "config.yaml").copy(
        IMAGES_PER_GPU=1, IMAGE_RESIZE_MODE="pad64", POST_NMS_ROIS_INFERENCE=300,
        DETECTION_MIN_CONFIDENCE=0.5)
    assert infer.IMAGE_NORMALIZATION == "per_image"
    model = MaskRCNN(infer)
    model.load_weights(run / "mask_rcnn_tiny_0003.h5")
    sample = dataset.load(0)
    result = model.detect([sample.image])[0]
    recall = _recall(sample.labels, result["labels"].astype(np.int64))
    print(f"learning test: loss {total[:3].mean():.3f} -> {total[-6:].mean():.3f}, recall {recall:.2f}")
    assert recall >= 0.5, f"recall {recall:.2f}, {len(result['scores'])} detections"


def test_mixed_bfloat16_keeps_weights_box_logic_and_losses_in_float32(crop_dataset,
                                                                      monkeypatch):
    """--precision mixed_bfloat16: convolutions run in bfloat16; weights, the weightless graph
    layers (boxes, anchors, sampling, ROI pooling), the mask probabilities and the losses stay
    float32; one batch's RPN losses agree with float32; models built afterwards are float32."""
    import keras
    import tensorflow as tf

    import nucseg.mrcnn.backbone
    from nucseg.data.dataset import Dataset
    from nucseg.data.loader import LoaderOptions, TrainingLoader
    from nucseg.mrcnn.config import Config
    from nucseg.mrcnn.graph_layer import GraphLayer
    from nucseg.mrcnn.training import Trainer, build_training_model, compute_losses, \
        make_optimizer, set_trainable

    monkeypatch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
    config = Config.preset("paper", **TINY)
    dataset = Dataset(crop_dataset / "images", crop_dataset / "labels", channels=5)
    batch = TrainingLoader(dataset, config, options=LoaderOptions(seed=0)).batch(0, 0)
    tensors = {k: tf.convert_to_tensor(v) for k, v in batch.items()}
    reference = build_training_model(config)
    mixed = build_training_model(config, "mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"          # restored after the build
    mixed.set_weights(reference.get_weights())

    assert mixed.get_layer("fpn_p2").compute_dtype == "bfloat16"
    graph_layers = [layer for layer in mixed.layers if isinstance(layer, GraphLayer)]
    assert {"ROI", "proposal_targets", "anchors"} <= {layer.name for layer in graph_layers}
    assert all(layer.compute_dtype == "float32" for layer in graph_layers)
    assert {v.dtype for v in mixed.weights} == {"float32"}
    outputs = mixed(tensors, training=True)
    for name in ("rpn_rois", "rois", "target_bbox", "mrcnn_mask"):
        assert outputs[name].dtype == tf.float32, name

    expected = compute_losses(reference(tensors, training=True), tensors, config)
    got = compute_losses(outputs, tensors, config)
    for name in ("rpn_class_loss", "rpn_bbox_loss"):
        assert float(got[name]) == pytest.approx(float(expected[name]), rel=0.03), name
    set_trainable(mixed, "all")
    losses = Trainer(mixed, config, make_optimizer("adam", 1e-4, config)).step(batch)
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert {v.dtype for v in mixed.weights} == {"float32"}


def test_cli_train_and_resume(tmp_path, monkeypatch):
    """`nucseg train` end to end (tiny graph, bfloat16); --resume finds nothing left, or trains on with
    longer --epochs; a finished run is not overwritten."""
    import yaml
    from click.testing import CliRunner

    import nucseg.mrcnn.backbone
    from nucseg.cli import main

    monkeypatch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
    write_square_nuclei(tmp_path, "a", size=160, count=11, side=12, seed=0)
    config = dict(TINY, preset="paper", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, NAME="cli",
                  POST_NMS_ROIS_TRAINING=64, PRE_NMS_LIMIT=300)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    args = ["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"),
            "-o", str(run), "--config", str(tmp_path / "tiny.yaml"), "--epochs", "0,1,0,0",
            "--steps-per-epoch", "2", "--seed", "1", "--no-progress", "--normalize",
            "--workers", "1", "--precision", "mixed_bfloat16", "--channel-scaling", "fixed"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (run / "mask_rcnn_cli_0001.h5").is_file()
    saved = yaml.safe_load((run / "train.yaml").read_text())
    assert saved["loader"]["normalize"] is True and saved["loader"]["seed"] == 1
    assert saved["dataset"]["names"] == ["a"] and saved["precision"] == "mixed_bfloat16"
    assert saved["dataset"]["channel_scaling"]["mode"] == "fixed"
    assert yaml.safe_load((run / "config.yaml").read_text())["CHANNEL_SCALING"] == "fixed"
    assert yaml.safe_load((run / "run.yaml").read_text())["status"] == "finished"
    with open(run / "losses.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(float(r["loss"]) > 0 for r in rows)
    again = CliRunner().invoke(main, ["train", "-o", str(run), "--resume", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in run.glob("*.h5")) == ["mask_rcnn_cli_0001.h5"]
    longer = CliRunner().invoke(main, ["train", "-o", str(run), "--resume", "--no-progress",
                                       "--epochs", "0,2,0,0"])
    assert longer.exit_code == 0, longer.output + repr(longer.exception)
    assert "epochs [0, 1, 0, 0] -> [0, 2, 0, 0]" in longer.output
    assert sorted(p.name for p in run.glob("*.h5")) == ["mask_rcnn_cli_0001.h5",
                                                         "mask_rcnn_cli_0002.h5"]
    saved = yaml.safe_load((run / "train.yaml").read_text())
    assert saved["epochs"] == [0, 2, 0, 0] and saved["loader"]["normalize"] is True
    assert saved["precision"] == "mixed_bfloat16"
    assert saved["dataset"]["channel_scaling"]["mode"] == "fixed"      # kept by --resume
    with open(run / "losses.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 1, 2, 2]
    ignored = CliRunner().invoke(main, ["train", "-o", str(run), "--resume", "--learning-rate",
                                        "1e-5", "--images", str(tmp_path / "im")])
    assert ignored.exit_code == 2 and "Remove: --images, --learning-rate" in ignored.output
    clash = CliRunner().invoke(main, args)          # a finished run is not overwritten
    assert clash.exit_code == 2 and "--resume" in clash.output


class _FakeFoldData:
    names = ["a", "b", "c", "d"]

    def __init__(self, names=None):
        self.names = list(names or _FakeFoldData.names)

    def subset(self, names):
        return _FakeFoldData(names)

    def describe(self):
        return {"names": self.names}


@pytest.fixture
def fake_fold_data(monkeypatch):
    """Fold data sets rebuild from their description (as on a Dask worker) as fakes."""
    import nucseg.data.dataset

    monkeypatch.setattr(nucseg.data.dataset.Dataset, "from_description",
                        classmethod(lambda cls, d: _FakeFoldData(d.get("names"))))


def test_train_folds_one_subdirectory_per_fold(tmp_path, monkeypatch, fake_fold_data):
    from nucseg.mrcnn.config import Config

    calls = []

    def fake_run(config, dataset, run_dir, options, resume=False, log=print, extend=None):
        calls.append((Path(run_dir).name, list(dataset.names)))
        return {"run_dir": str(run_dir)}

    monkeypatch.setattr(T, "train_run", fake_run)
    folds = T.k_folds(_FakeFoldData.names, 2, seed=0)
    F.train_folds(Config.preset("paper"), _FakeFoldData(), tmp_path, T.TrainOptions(), folds,
                  log=lambda *a: None)
    assert [c[0] for c in calls] == ["fold1", "fold2"]
    assert sorted(calls[0][1] + calls[1][1]) == _FakeFoldData.names
    import yaml

    record = yaml.safe_load((tmp_path / "folds.yaml").read_text())
    assert [sorted(f["held_out"]) for f in record["folds"]] == [sorted(c[1]) for c in
                                                               reversed(calls)]


def test_resume_folds_finishes_folds_an_interruption_left_unstarted(tmp_path, monkeypatch,
                                                                    fake_fold_data):
    """A crash in fold 2 of 3: --resume continues folds 1 and 2, then starts fold 3."""
    from nucseg.mrcnn.config import Config

    calls, crash_in = [], ["fold2"]

    def fake_run(config, dataset, run_dir, options, resume=False, log=print, extend=None):
        calls.append((Path(run_dir).name, resume, options.epochs, config.NAME))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "config.yaml").write_text("{}")
        if Path(run_dir).name in crash_in:
            crash_in.clear()
            raise RuntimeError("crash")
        return {"run_dir": str(run_dir)}

    monkeypatch.setattr(T, "train_run", fake_run)
    folds = T.k_folds(_FakeFoldData.names, 3, seed=0)
    options = T.TrainOptions(epochs=[1, 2, 1, 1])
    with pytest.raises(RuntimeError, match="crash"):
        F.train_folds(Config.preset("paper", NAME="ens"), _FakeFoldData(), tmp_path, options,
                      folds, log=lambda *a: None)
    calls.clear()
    T.train_command(tmp_path, resume=True, log=lambda *a: None, extend={"epochs": [1, 3, 1, 1]})
    assert [(name, resume) for name, resume, _, _ in calls] == [
        ("fold1", True), ("fold2", True), ("fold3", False)]
    assert calls[-1][2] == [1, 3, 1, 1] and calls[-1][3] == "ens"   # longer, same config


def test_init_from_other_class_count_excludes_the_heads(tmp_path, monkeypatch):
    """A PanNuke (1 + 5 classes) checkpoint initialises a 2-class model minus its heads."""
    import nucseg.mrcnn.backbone
    from nucseg.mrcnn.config import Config
    from nucseg.mrcnn.training import build_training_model
    from nucseg.mrcnn.weights import save_weights

    monkeypatch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
    six = build_training_model(Config.preset("paper", **dict(TINY, NUM_CLASSES=6)))
    two = build_training_model(Config.preset("paper", **TINY))
    save_weights(six, tmp_path / "run" / "mask_rcnn_pannuke_0003.h5")
    info = T.init_weights(two, Config.preset("paper", **TINY), tmp_path / "run")
    assert info["excluded"] == sorted(T.HEAD_LAYERS)
    for name in ("fpn_p2", "mrcnn_mask_conv1", "PREPROC", "mrcnn_class_conv1"):
        np.testing.assert_array_equal(two.get_layer(name).weights[0].numpy(),
                                      six.get_layer(name).weights[0].numpy())
    assert two.get_layer("mrcnn_class_logits").weights[0].shape[-1] == 2
