"""Dask (`--dask`): slide blocks, tiles and fold trainings as tasks give the same files.

A LocalCluster of 2 worker processes runs here. The workers import this module to build their
models (`blob_models`: the stand-in detector of test_slides), so each worker's model loads are
counted where they happen.
"""
from __future__ import annotations

import gzip
import os

import cv2
import dask
import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from distributed.diagnostics.plugin import WorkerPlugin
from synthetic import write_random_detector_run
from test_predict import blob_image
from test_slides import SlideDetector, he_colours, write_pyramid

from nucseg.cli import main
from nucseg.io import InputError, write_float_map
from nucseg.prediction import distributed
from nucseg.prediction.distributed import DaskWork, ModelSet, dask_client, parse_dask
from nucseg.prediction.predict import PredictOptions, predict_images
from nucseg.prediction.slides import SlideOptions, predict_slide

SLIDE_FILES = ("s.geojson.gz", "s_nuclei.csv", "s_labels.tif", "s_thumbnail.png")


def blob_models(mpp=0.25, die_on_block=None):
    """On a worker: the stand-in detector (and no U-Net). With `die_on_block`, the worker
    process dies (as from the kernel's OOM killer) when it sees a dark square there."""
    detector = SlideDetector(mpp=mpp)
    if die_on_block:
        detect = detector.detect

        def dying(images):
            if any((img[..., :3] < 5).all(-1).sum() > 400 for img in images):
                os._exit(9)
            return detect(images)
        detector.detect = dying
    return [detector], None


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with dask_client("local:2") as c:
            yield c


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    tiles = [he_colours(blob_image((500, 500), 40, seed=70 + s)) for s in range(4)]
    image = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    return write_pyramid(tmp_path_factory.mktemp("d") / "s.tif", image, 0.25)


def test_dask_values_are_parsed_or_refused():
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local", "10.0.0.5:8786", "4"):
        with pytest.raises(ValueError, match="--dask"):
            parse_dask(bad)


def test_a_scheduler_that_cannot_be_reached_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", "2s")
    with pytest.raises(ValueError, match="tcp://127.0.0.1:9: cannot reach the Dask scheduler"):
        with dask_client("tcp://127.0.0.1:9"):
            pass
    run = tmp_path / "run"                       # a model that loads as the stand-in
    run.mkdir()
    (run / "mask_rcnn_x_0001.h5").write_bytes(b"")
    (run / "config.yaml").write_text("NAME: x\n")
    monkeypatch.setattr("nucseg.model_files.load_model", lambda *a, **k: SlideDetector())
    image = tmp_path / "t.png"
    cv2.imwrite(str(image), blob_image((64, 64), 2, seed=1))
    result = CliRunner().invoke(main, ["predict", str(image), "-m", str(run), "-o",
                                       str(tmp_path / "out"), "--dask", "tcp://127.0.0.1:9"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: --dask tcp://127.0.0.1:9: cannot reach"), lines
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_slide_blocks_on_two_workers_give_the_single_process_files(client, slide, tmp_path):
    opts = PredictOptions(progress=False, tile_size=1024)
    slide_opts = SlideOptions(block_size=320)
    alone = tmp_path / "alone"
    single = predict_slide(slide, [SlideDetector()], alone, opts, slide_opts=slide_opts)
    assert single["blocks"]["with_tissue"] >= 9 and single["nuclei"] > 100
    work = DaskWork(client, ModelSet((0.25,), loader=blob_models))
    out = tmp_path / "dask"
    record = predict_slide(slide, [SlideDetector()], out, opts, slide_opts=slide_opts,
                           dask=work)
    for name in SLIDE_FILES:
        assert (out / name).read_bytes() == (alone / name).read_bytes(), name
    assert record["blocks"] == single["blocks"] and record["nuclei"] == single["nuclei"]
    assert {"read", "detect", "merge"} <= set(record["timings_seconds"])
    loads = client.run(lambda: distributed.MODEL_LOADS)
    assert len(loads) == 2 and set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1
    with gzip.open(out / "s.geojson.gz", "rt") as f:
        assert f.read(1) in "{["


def test_a_worker_that_dies_fails_the_slide_with_one_line(client, slide, tmp_path):
    image = tifffile.imread(slide)
    image[100:140, 100:140] = 0                              # a block the worker dies on
    bad = write_pyramid(tmp_path / "dies.tif", image, 0.25)
    work = DaskWork(client, ModelSet((0.25, True), loader=blob_models))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"dies.tif: block r000c000: a Dask worker died"):
        predict_slide(bad, [SlideDetector()], out, PredictOptions(progress=False),
                      slide_opts=SlideOptions(block_size=320), dask=work)
    assert not list(out.glob("dies*.*"))                     # nothing under a final name
    client.wait_for_workers(2, timeout=60)                   # the nanny restarted it


def test_tiles_as_tasks_write_the_same_files_and_report_a_bad_one(client, tmp_path):
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"t{k}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(he_colours(blob_image((160, 160), 6, seed=k)),
                                                 cv2.COLOR_RGB2BGR))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    paths.append(tmp_path / "broken.png")
    opts = PredictOptions(progress=False)
    alone, out = tmp_path / "alone", tmp_path / "dask"
    expected, _ = predict_images(paths, [SlideDetector()], alone, opts)
    work = DaskWork(client, ModelSet((0.25,), loader=blob_models))
    failures, _ = predict_images(paths, [SlideDetector()], out, opts, dask=work)
    assert failures == expected and len(failures) == 1 and "broken.png" in failures[0]
    for k in range(3):
        for name in (f"t{k}_labels.tif", f"t{k}.geojson", f"t{k}_nuclei.csv"):
            assert (out / name).read_bytes() == (alone / name).read_bytes(), name
    assert not list(out.glob("broken*"))


def test_predict_cli_with_a_real_model_on_a_local_cluster(tmp_path):
    """`nucseg predict --dask local:2` loads the model files on the workers (the default
    loader) and writes what the single-process run writes."""
    import keras

    keras.utils.set_random_seed(3)
    run = tmp_path / "run"
    write_random_detector_run(run, name="tiny", epoch=1, CHANNEL_SCALING="fixed",
                              DETECTION_MIN_CONFIDENCE=0.0)
    tiles, maps = tmp_path / "tiles", tmp_path / "maps"
    tiles.mkdir()
    maps.mkdir()
    for k in range(2):
        cv2.imwrite(str(tiles / f"t{k}.png"), cv2.cvtColor(
            he_colours(blob_image((128, 128), 5, seed=k)), cv2.COLOR_RGB2BGR))
        write_float_map(maps / f"t{k}_dist.tif", np.full((128, 128), 3.0, np.float32))
    base = ["predict", str(tiles), "-m", str(run), "--distance-dir", str(maps),
            "--tile-size", "128", "--overlap", "0", "--min-area", "1"]
    one = CliRunner().invoke(main, base + ["-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = CliRunner().invoke(main, base + ["-o", str(tmp_path / "two"), "--dask", "local:2"])
    assert two.exit_code == 0, two.output
    assert "dask: 2 worker(s)" in two.output
    for k in range(2):
        first = tifffile.imread(tmp_path / "one" / f"t{k}_labels.tif")
        assert first.max() > 0
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "two" / f"t{k}_labels.tif"),
                                      first)
        record = yaml.safe_load((tmp_path / "two" / f"t{k}_record.yaml").read_text())
        assert record["nuclei"] == int(first.max())


class TinyBackbone(WorkerPlugin):
    """A worker plugin: every worker, also one restarted later, builds the tiny backbone of
    the training tests instead of ResNet."""

    name = "nucseg-tiny-backbone"

    def setup(self, worker=None):
        import nucseg.mrcnn.backbone
        from tiny_backbone import build_tiny_backbone

        nucseg.mrcnn.backbone.build_resnet_backbone = build_tiny_backbone

    def teardown(self, worker=None):
        pass


def test_fold_models_train_as_parallel_tasks(client, tmp_path):
    """`train --folds 2 --dask`: each fold trains on a worker, the ensemble run is complete."""
    from synthetic import write_square_nuclei
    from test_train import TINY

    from nucseg.train import TrainOptions, parse_epochs, train_command

    client.wait_for_workers(2, timeout=60)
    client.register_plugin(TinyBackbone())
    for k, name in enumerate("ab"):
        write_square_nuclei(tmp_path, name, size=128, count=8, side=12, seed=k)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(dict(
        TINY, preset="paper", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, NAME="f",
        POST_NMS_ROIS_TRAINING=64, PRE_NMS_LIMIT=300)))
    log = []
    results = train_command(tmp_path / "ens", tmp_path / "im", tmp_path / "lab",
                            config_spec=str(tmp_path / "tiny.yaml"), folds="2",
                            options=TrainOptions(epochs=parse_epochs("0,1,0,0"),
                                                 steps_per_epoch=2, progress=False,
                                                 learning_rate=1e-4,   # no NaN from a
                                                 loader={"workers": 1,  # random start
                                                         "normalize": True}),
                            dataset_options={"channel_scaling": "fixed"}, log=log.append,
                            dask=DaskWork(client))
    assert "2 folds as Dask tasks on 2 worker(s)" in log
    assert [r["fold"] for r in results] == ["fold1", "fold2"]
    for fold, held_out in (("fold1", results[0]["held_out"]), ("fold2", results[1]["held_out"])):
        assert (tmp_path / "ens" / fold / "mask_rcnn_f_0001.h5").is_file()
        saved = yaml.safe_load((tmp_path / "ens" / fold / "train.yaml").read_text())
        assert saved["dataset"]["names"] == [n for n in "ab" if n not in held_out]
    record = yaml.safe_load((tmp_path / "ens" / "folds.yaml").read_text())
    assert [f["fold"] for f in record["folds"]] == ["fold1", "fold2"]
