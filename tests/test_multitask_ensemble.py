"""The multi-task U-Net with Mask R-CNN: its member merged by MASK-NMS (`nucseg merge`), and
both kinds of model in one `nucseg predict` run (docs/multitask-unet.md, "Ensemble")."""
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from synthetic import write_random_detector_run
from test_multitask import TRAIN_ARGS, data, discs, run_cli, tiny_resnet  # noqa: F401

from nucseg.cli import main
from nucseg.io import read_labels, write_float_map

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_mask_nms_merge_keeps_the_unets_extra_small_nucleus(tmp_path):
    from nucseg.prediction.members import Member, save_member
    from nucseg.multitask.predict import as_member, scored_nuclei

    shape = (64, 96)
    truth = discs(shape, [(16, 16), (16, 40), (44, 70), (46, 20)], 8)
    truth[discs(shape, [(40, 45)], 5) > 0] = 5             # 81 px: small (r < 6 px)
    fg = np.where(truth > 0, 0.8, 0.1).astype(np.float32)
    unet = as_member(scored_nuclei(truth, fg), "multitask:run", "tile.png")
    assert np.allclose(unet.scores, 0.8)
    # the stand-in Mask R-CNN sees the four large nuclei (soft masks, higher scores), not the
    # small one
    rois, masks = [], []
    for k in (1, 2, 3, 4):
        ys, xs = np.nonzero(truth == k)
        y1, x1, y2, x2 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
        rois.append((y1, x1, y2, x2))
        masks.append(np.where(truth[y1:y2, x1:x2] == k, 0.9, 0.2).astype(np.float32))
    mrcnn = Member(rois, [0.99, 0.98, 0.97, 0.96], [1] * 4, masks, shape, "fold0", "identity",
                   image="tile.png")
    save_member(tmp_path / "m" / "tile_member00.npz", mrcnn)
    save_member(tmp_path / "u" / "tile_member99.npz", unet)   # predict's default index
    args = ["merge", tmp_path / "m" / "tile_member00.npz", tmp_path / "u" / "tile_member99.npz",
            "--merge", "mask-nms", "--no-csv"]
    result = CliRunner().invoke(main, [*map(str, args), "-o", str(tmp_path / "merged"),
                                       "--min-members", "1"])
    assert result.exit_code == 0, result.output
    merged = read_labels(tmp_path / "merged" / "tile_labels.tif")
    assert merged.max() == 5                               # four shared nuclei once, + 1
    small = np.unique(merged[truth == 5])
    assert len(small) == 1 and small[0] == 5               # lowest score (0.8) -> last id
    assert (merged == 5).sum() == (truth == 5).sum()
    # by default a nucleus needs a majority (2 of 2 members): the U-Net's extra one is dropped
    result = CliRunner().invoke(main, [*map(str, args), "-o", str(tmp_path / "majority")])
    assert result.exit_code == 0, result.output
    assert read_labels(tmp_path / "majority" / "tile_labels.tif").max() == 4


def test_merge_refuses_a_member_of_another_image_size(tmp_path):
    from nucseg.prediction.members import save_member
    from nucseg.multitask.predict import as_member, scored_nuclei

    for name, shape in (("tile_member00.npz", (64, 96)), ("tile_member99.npz", (64, 64))):
        truth = discs(shape, [(20, 20)], 8)
        save_member(tmp_path / name, as_member(scored_nuclei(truth, (truth > 0) * 0.9),
                                               "multitask:run", "tile.png"))
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "tile_member00.npz"),
                                       str(tmp_path / "tile_member99.npz"), "--merge",
                                       "mask-nms", "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {tmp_path / 'tile_member99.npz'}: member made on a 64x64 image"), result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("tile*"))


@pytest.fixture(scope="module")
def detecting(data, tmp_path_factory):
    """A tiny run trained long enough (8 epochs of 4 crops per tile, lr 1e-2) to find nuclei."""
    run = tmp_path_factory.mktemp("mt_runs") / "eight"
    result = run_cli("train", "--images", data / "images", "--labels", data / "labels",
                     "-o", run, "--epochs", 8, "--lr", 1e-2, "--crops-per-tile", 4, *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    return run


def test_predict_runs_the_unet_and_mask_rcnn_in_one_call(data, detecting, tmp_path):
    """`nucseg predict -m MRCNN -m MULTITASK`: two members per image, merged by MASK-NMS; the
    U-Net alone gives the nuclei `nucseg multitask predict` gives."""
    trained = detecting
    images = data / "images"
    alone = run_cli("predict", images / "tile0.png", "-m", trained, "-o", tmp_path / "mt",
                    "--no-maps")                     # the watershed's default --min-area 20
    assert alone.exit_code == 0, alone.output
    same = CliRunner().invoke(main, ["predict", str(images / "tile0.png"), "-m", str(trained),
                                     "-o", str(tmp_path / "one"), "--min-area", "20"])
    assert same.exit_code == 0, same.output
    unet = read_labels(tmp_path / "mt" / "tile0_labels.tif")
    assert unet.max() > 0
    one = read_labels(tmp_path / "one" / "tile0_labels.tif")    # the same nuclei; predict's
    assert one.max() == unet.max()                                # merge keeps each one's
    assert (one == unet).mean() > 0.99 and ((one > 0) <= (unet > 0)).all()   # main part
    run = tmp_path / "mrcnn"
    write_random_detector_run(run, name="r", epoch=1, DETECTION_MIN_CONFIDENCE=0.0)
    maps = tmp_path / "maps"
    write_float_map(maps / "tile0_dist.tif", np.ones((64, 96), np.float32))
    both = CliRunner().invoke(main, [
        "predict", str(images / "tile0.png"), "-m", str(run), "-m", str(trained),
        "--distance-dir", str(maps), "--merge", "mask-nms", "--min-members", "1",
        "--min-area", "1", "--keep-members", "-o", str(tmp_path / "both")])
    assert both.exit_code == 0, both.output
    record = yaml.safe_load((tmp_path / "both" / "tile0_record.yaml").read_text())
    assert [m["model"].split(":")[0] for m in record["members"]] == ["mrcnn/mask_rcnn_r_0001.h5",
                                                                     "multitask"]
    assert record["merge"]["method"] == "mask-nms" and record["members"][1]["detections"] > 0
    merged = read_labels(tmp_path / "both" / "tile0_labels.tif")
    assert merged.max() >= 1 and (merged > 0).sum() >= (unet > 0).sum() * 0.9


def test_multitask_predict_reads_a_slide_in_blocks_like_its_tile(data, detecting, tmp_path):
    """A pyramidal TIFF goes through the slide block path: the slide outputs of `nucseg
    predict`, with the nuclei the tile path finds on the same pixels; --resume skips it;
    --mpp on a tile is one error line (tiles are not resampled here)."""
    import gzip
    import json

    import cv2
    import tifffile
    from test_slides import write_pyramid

    from nucseg.io import read_rgb, write_rgb

    mosaic = np.concatenate([read_rgb(data / "images" / f"tile{k}.png") for k in range(3)], 1)
    slide = write_pyramid(tmp_path / "scan.tif", mosaic, mpp=0.25, levels=2, tile=64)
    write_rgb(tmp_path / "tiles" / "scan.png", mosaic)
    tile = run_cli("predict", tmp_path / "tiles" / "scan.png", "-m", detecting,
                   "-o", tmp_path / "tile_out", "--no-maps")
    assert tile.exit_code == 0, tile.output
    cv2.imwrite(str(tmp_path / "mask.png"), np.full((8, 36), 255, np.uint8))  # all tissue
    result = run_cli("predict", slide, "-m", detecting, "-o", tmp_path / "out",
                     "--tissue-mask", tmp_path / "mask.png")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "scan.geojson.gz", "scan_labels.tif", "scan_nuclei.csv", "scan_record.yaml",
        "scan_thumbnail.png"]
    record = yaml.safe_load((out / "scan_record.yaml").read_text())
    assert record["models"][0]["run_dir"] == str(detecting)
    assert record["models"][0]["watershed"]["min_area"] == 20
    expected = read_labels(tmp_path / "tile_out" / "scan_labels.tif")
    with tifffile.TiffFile(out / "scan_labels.tif") as tif:
        labels = tif.pages[0].asarray()
    assert labels.shape == expected.shape and expected.max() > 0
    assert record["nuclei"] == expected.max() == labels.max()
    assert ((labels > 0) == (expected > 0)).mean() > 0.99
    with gzip.open(out / "scan.geojson.gz", "rt") as fh:
        assert len(json.load(fh)["features"]) == record["nuclei"]
    again = run_cli("predict", slide, "-m", detecting, "-o", out, "--resume")
    assert again.exit_code == 0 and "1 of 1 image(s) already done" in again.output
    bad = run_cli("predict", tmp_path / "tiles" / "scan.png", "-m", detecting,
                  "-o", tmp_path / "bad", "--mpp", "0.5")
    errors = [line for line in bad.output.splitlines() if line.startswith("error: ")]
    assert bad.exit_code != 0 and "Traceback" not in bad.output, bad.output
    assert errors and errors[0].startswith(f"error: {tmp_path / 'tiles' / 'scan.png'}: --mpp")
    assert not list((tmp_path / "bad").glob("scan*"))


def test_min_confidence_keeps_exactly_the_surer_nuclei(data, detecting, tmp_path):
    """`multitask predict --min-confidence S`: the nuclei scoring >= S, ids still by score, in
    the labels, the member and the record (what an ensemble takes from the U-Net)."""
    from nucseg.prediction.members import load_member

    tile = data / "images" / "tile0.png"
    result = run_cli("predict", tile, "-m", detecting, "-o", tmp_path / "all", "--no-maps",
                     "--keep-members")
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "all" / "tile0_labels.tif")
    scores = load_member(tmp_path / "all" / "tile0_member99.npz").scores
    cut = float(np.sort(scores)[len(scores) // 2])
    kept = int((scores >= cut).sum())
    assert 0 < kept < len(scores)
    result = run_cli("predict", tile, "-m", detecting, "-o", tmp_path / "sure", "--no-maps",
                     "--keep-members", "--min-confidence", cut)
    assert result.exit_code == 0, result.output
    sure = read_labels(tmp_path / "sure" / "tile0_labels.tif")
    assert sure.max() == kept and np.array_equal(sure, np.where(labels <= kept, labels, 0))
    member = load_member(tmp_path / "sure" / "tile0_member99.npz")
    assert len(member) == kept and (member.scores >= cut).all()
    record = yaml.safe_load((tmp_path / "sure" / "tile0_record.yaml").read_text())
    assert record["options"]["min_confidence"] == cut
