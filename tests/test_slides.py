"""Whole slides: readers, resolution, tissue, blocks, streamed outputs, bad input.

The slides are written here: pyramidal tiled TIFFs with resolution tags (which OpenSlide reads
as generic TIFF) holding a 3 x 3 mosaic of synthetic H&E-coloured tiles with an empty (glass)
centre. A stand-in detector (test_predict.BlobDetector) replaces the model, so nothing is
trained and a slide's nuclei can be compared with predicting the mosaic as one image.
"""
from __future__ import annotations

import csv
import gzip
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from test_predict import BlobDetector, blob_image

from nucseg.cli import main
from nucseg.io import InputError
from nucseg.prediction.merge import merge_members
from nucseg.prediction.predict import PredictOptions, image_members, predict_images
from nucseg.prediction.slides import SlideOptions, is_slide, open_slide, predict_slide
from nucseg.prediction.slides.reader import TiffReader

TILE = 700
DATA = Path(__file__).resolve().parent / "data" / "monuseg2018" / "images"


class SlideDetector(BlobDetector):
    """The blob stand-in with what `nucseg predict` reads from a model's config."""

    def __init__(self, mpp=0.25, **kwargs):
        super().__init__(**kwargs)
        self.config.MODEL_MPP = mpp
        self.config.DETECTION_MIN_CONFIDENCE = 0.5


def he_colours(grey: np.ndarray) -> np.ndarray:
    """Grey blob image -> pink background, purple nuclei (saturated, so tissue is found)."""
    t = np.clip((225 - grey[..., 0].astype(np.float32)) / 185, 0, 1)[..., None]
    return (np.array([235, 200, 225]) * (1 - t) + np.array([70, 40, 140]) * t).astype(np.uint8)


def write_pyramid(path, image, mpp=None, levels=3, tile=256) -> Path:
    """A tiled pyramidal TIFF (level k = level 0 / 2^k), resolution tags in centimetres."""
    with tifffile.TiffWriter(path) as tw:
        level = image
        for k in range(levels):
            extra = {}
            if mpp is not None:
                res = 1e4 / (mpp * 2 ** k)
                extra = dict(resolution=(res, res), resolutionunit="CENTIMETER")
            tw.write(level, tile=(tile, tile), photometric="rgb", compression="zlib",
                     subfiletype=0 if k == 0 else 1, **extra)
            level = cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2),
                               interpolation=cv2.INTER_AREA)
    return Path(path)


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    tiles = [he_colours(blob_image((TILE, TILE), 60, seed=40 + s)) for s in range(9)]
    tiles[4][:] = 255                                           # glass in the middle
    return np.concatenate([np.concatenate(tiles[r * 3:r * 3 + 3], 1) for r in range(3)], 0)


@pytest.fixture(scope="module")
def slide40(mosaic, tmp_path_factory) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("s") / "mosaic40.tif", mosaic, 0.25)


def whole_image_labels(image, detector, opts=None):
    """The reference: the mosaic predicted as one image (the tile path)."""
    opts = opts or PredictOptions(progress=False)
    members = image_members([detector], image, "whole", opts)
    return merge_members(members, opts.merge, **opts.merge_kwargs(len(members))).labels


def read_features(path) -> list:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        collection = json.load(fh)
    assert collection["type"] == "FeatureCollection"
    return collection["features"]


def feature_masks(features, shape) -> list:
    """(box, crop) per feature: rings of boundary-pixel centres filled back to pixels."""
    out = []
    for f in features:
        assert f["properties"]["objectType"] == "detection"
        assert f["geometry"]["type"] == "Polygon"
        ring = np.asarray(f["geometry"]["coordinates"][0])
        assert ring.shape[1] == 2 and (ring[0] == ring[-1]).all()        # closed ring
        pix = np.rint(ring - 0.5).astype(np.int32)
        x1, y1 = pix.min(0)
        x2, y2 = pix.max(0) + 1
        assert 0 <= x1 and 0 <= y1 and x2 <= shape[1] and y2 <= shape[0]
        crop = np.zeros((y2 - y1, x2 - x1), np.uint8)
        cv2.fillPoly(crop, [pix - [x1, y1]], 1)
        out.append(((y1, x1, y2, x2), crop.astype(bool)))
    return out


def match(masks, labels) -> tuple[int, list]:
    """Nuclei of `masks` matched to `labels` ids at IoU > 0.5; returns (matched, ious)."""
    areas = np.bincount(labels.ravel())
    used, ious = set(), []
    for (y1, x1, y2, x2), crop in masks:
        ids, counts = np.unique(labels[y1:y2, x1:x2][crop], return_counts=True)
        best = 0.0
        for i, c in zip(ids, counts):
            if i and i not in used:
                iou = c / (crop.sum() + areas[i] - c)
                if iou > 0.5:
                    used.add(i)
                    best = iou
        ious.append(best)
    return len(used), ious


def duplicate_pairs(masks, shape, threshold=0.3) -> int:
    from nucseg.prediction.overlap import mask_iou_pairs

    rois = np.array([m[0] for m in masks]).reshape(-1, 4)
    return len(mask_iou_pairs(rois, [m[1] for m in masks], shape, threshold)[0])


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_pyramidal_tiff_reads_the_same_through_openslide_and_tifffile(slide40, mosaic):
    reader = open_slide(slide40)
    info = reader.info
    assert (reader.name, info.vendor, info.mpp) == ("openslide", "generic-tiff", (0.25, 0.25))
    assert info.dimensions == [(2100, 2100), (1050, 1050), (525, 525)]
    assert info.downsamples == [1.0, 2.0, 4.0]
    np.testing.assert_array_equal(reader.read(0, 650, 1390, 300, 20), mosaic[1390:1410, 650:950])
    fallback = TiffReader(slide40)
    assert fallback.info.mpp == (0.25, 0.25) and fallback.info.downsamples == info.downsamples
    for level, x, y in ((0, 650, 1390), (1, 1300, 40), (2, 2000, 2000)):   # last: past the edge
        np.testing.assert_array_equal(fallback.read(level, x, y, 300, 70),
                                      reader.read(level, x, y, 300, 70))
    reader.close()
    fallback.close()
    assert is_slide(slide40)
    crop = tifffile.imread(DATA / "TCGA-18-5592-01Z-00-DX1_r620-875_c248-503.tif")
    small = slide40.parent / "crop.tif"
    tifffile.imwrite(small, crop)
    assert not is_slide(small) and not is_slide(slide40.parent / "x.png")
    result = CliRunner().invoke(main, ["slide", "info", str(slide40)])
    assert result.exit_code == 0, result.output
    for text in ("reader: openslide", "2100 x 2100", "level 2: 525 x 525", "0.25 x 0.25 um/px"):
        assert text in result.output


def test_ome_and_striped_tiffs_are_read_by_tifffile(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (600, 800, 3)).astype(np.uint8)
    ome = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tw:          # levels in SubIFDs, um in OME-XML
        tw.write(image, subifds=1, tile=(128, 128), photometric="rgb", compression="zlib",
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(image[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb",
                 compression="zlib")
    reader = open_slide(ome)
    assert (reader.name, reader.info.vendor, reader.info.mpp) == ("tifffile", "ome-tiff",
                                                                 (0.5, 0.5))
    assert reader.info.mpp_source == "OME-XML" and reader.info.downsamples == [1.0, 2.0]
    np.testing.assert_array_equal(reader.read(1, 100, 200, 50, 40),
                                  image[::2, ::2][100:140, 50:100])
    reader.close()
    assert is_slide(ome)
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, image, rowsperstrip=50, compression="zlib", photometric="rgb",
                     resolution=(25400 / 0.25, 25400 / 0.25), resolutionunit="INCH")
    reader = open_slide(striped)
    assert reader.name == "tifffile" and reader.info.mpp == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(reader.read(0, 130, 77, 300, 222), image[77:299, 130:430])
    reader.close()
    dpi72 = tmp_path / "dpi72.tif"                          # a writer's default: no pixel size
    tifffile.imwrite(dpi72, image, resolution=(72, 72), resolutionunit="INCH")
    assert open_slide(dpi72, require_mpp=False).info.mpp is None


def test_real_he_mosaic_is_tissue(tmp_path):
    """MoNuSeg crops (CC BY-NC-SA, tests/data) as a 3 x 3 slide with a glass margin: the
    tissue detector keeps the crops and not the glass."""
    from nucseg.prediction.slides.frame import read_overview
    from nucseg.prediction.slides.tissue import detect_tissue

    crop = tifffile.imread(DATA / "TCGA-B0-5698-01Z-00-DX1_r244-755_c244-755.tif")[..., :3]
    tissue = np.concatenate([np.concatenate([crop] * 3, 1)] * 3, 0)
    image = np.pad(tissue, ((512, 512), (512, 512), (0, 0)), constant_values=245)
    reader = open_slide(write_pyramid(tmp_path / "he.tif", image, 0.25))
    overview, ds = read_overview(reader, 1024)
    mask, factor = detect_tissue(overview, 0.25 * ds)
    reader.close()
    truth = np.zeros(image.shape[:2], bool)
    truth[512:-512, 512:-512] = True
    step = int(ds * factor)
    small = truth[step // 2::step, step // 2::step][:mask.shape[0], :mask.shape[1]]
    assert (mask == small).mean() > 0.97 and 0.3 < mask.mean() < 0.5


def test_slide_gives_the_whole_image_nuclei_without_seam_duplicates_or_cuts(slide40, mosaic,
                                                                             tmp_path):
    out = tmp_path / "out"
    opts = PredictOptions(progress=False)
    record = predict_slide(slide40, [SlideDetector()], out, opts,
                           slide_opts=SlideOptions(block_size=320))
    blocks = record["blocks"]
    assert (blocks["rows"], blocks["cols"], blocks["total"]) == (7, 7, 49)
    assert blocks["skipped_without_tissue"] >= 1 and blocks["nuclei_touching_block_edge"] == 0
    assert record["frame"]["resample_factor"] == 1.0 and record["frame"]["level"] == 0
    assert 0.8 < record["tissue"]["fraction"] < 0.95
    labels = whole_image_labels(mosaic, SlideDetector())
    n_whole = int(labels.max())
    assert n_whole == 480
    features = read_features(out / "mosaic40.geojson.gz")
    masks = feature_masks(features, mosaic.shape[:2])
    matched, ious = match(masks, labels)
    assert len(features) == record["nuclei"] == n_whole and matched >= 0.99 * n_whole
    assert min(ious) > 0.95                                   # the same pixels: none was cut
    assert duplicate_pairs(masks, mosaic.shape[:2]) == 0
    seams = range(320, 2100, 320)
    across = [m for m in masks if any(m[0][0] < s < m[0][2] or m[0][1] < s < m[0][3]
                                      for s in seams)]
    assert len(across) > 20                                   # nuclei do lie on block seams
    rows = read_csv(out / "mosaic40_nuclei.csv")
    assert len(rows) == n_whole and [int(r["id"]) for r in rows] == list(range(1, n_whole + 1))
    areas = np.bincount(labels.ravel())[1:]
    assert sorted(int(float(r["area"])) for r in rows) == sorted(areas.tolist())
    first = rows[0]
    cy, cx = (float(first["centroid_y"]), float(first["centroid_x"]))
    assert labels[int(round(cy)), int(round(cx))] > 0          # level-0 pixel indices
    assert float(first["centroid_x_um"]) == pytest.approx((cx + 0.5) * 0.25, abs=1e-3)
    assert float(first["area_um2"]) == pytest.approx(float(first["area"]) * 0.0625, rel=1e-4)
    thumb = cv2.imread(str(out / "mosaic40_thumbnail.png"))
    assert thumb is not None and max(thumb.shape[:2]) <= 2100
    saved = yaml.safe_load((out / "mosaic40_record.yaml").read_text())
    assert saved["slide"]["reader"] == "openslide" and saved["slide"]["levels"][2]["width"] == 525
    assert set(saved["outputs"]) == {"mosaic40.geojson.gz", "mosaic40_nuclei.csv",
                                     "mosaic40_thumbnail.png", "mosaic40_labels.tif"}
    with tifffile.TiffFile(out / "mosaic40_labels.tif") as tif:     # the pyramidal label image
        pages = list(tif.pages)
        assert [p.shape for p in pages] == [(2100, 2100), (1050, 1050), (525, 525), (263, 263)]
        assert all(p.is_tiled and p.dtype == np.uint32 and p.compression == 8 for p in pages)
        slide_labels = pages[0].asarray()
        np.testing.assert_array_equal(pages[1].asarray(), slide_labels[1::2, 1::2])
    assert slide_labels.max() == n_whole and len(np.unique(slide_labels)) == n_whole + 1
    either = (slide_labels > 0) | (labels > 0)                # same nuclei, same pixels:
    pairs = np.unique(slide_labels[either].astype(np.int64) * 2 ** 20 + labels[either])
    assert len(pairs) == n_whole and (pairs // 2 ** 20 > 0).all() and (pairs % 2 ** 20 > 0).all()
    for r in rows[:50]:
        assert slide_labels[int(round(float(r["centroid_y"]))),
                            int(round(float(r["centroid_x"])))] == int(r["id"])
    assert {"read", "tissue", "detect", "merge", "write", "total"} <= set(
        saved["timings_seconds"])
    assert not list(out.glob(".*part*"))


def test_20x_slide_is_resampled_and_found_at_its_level0_positions(mosaic, tmp_path):
    """The mosaic downsampled 2x with mpp 0.5: read at level 0, enlarged 2x for the 0.25
    um/px model, nuclei reported in the 20x slide's own level-0 pixels."""
    small = cv2.resize(mosaic, (1050, 1050), interpolation=cv2.INTER_AREA)
    slide = write_pyramid(tmp_path / "mosaic20.tif", small, 0.5, levels=2)
    out = tmp_path / "out"
    opts = PredictOptions(progress=False, min_area=20)   # the stand-in's smallest blobs shrink
    record = predict_slide(slide, [SlideDetector()], out, opts,           # a little when
                           slide_opts=SlideOptions(block_size=512))        # blurred by 20x
    assert record["frame"]["resample_factor"] == 2.0 and record["frame"]["width"] == 2100
    assert record["frame"]["level0_px_per_px"] == 0.5
    labels = whole_image_labels(mosaic, SlideDetector(), opts)
    from scipy import ndimage

    ids = np.arange(1, labels.max() + 1)
    want = np.array(ndimage.center_of_mass(labels > 0, labels, ids))     # 40x (y, x) indices
    want = (want + 0.5) / 2 - 0.5                                          # 20x pixel indices
    rows = read_csv(out / "mosaic20_nuclei.csv")
    got = np.array([[float(r["centroid_y"]), float(r["centroid_x"])] for r in rows])
    assert len(rows) >= 0.99 * len(ids)
    dist = np.hypot(*(got[:, None, :] - want[None, :, :]).transpose(2, 0, 1)).min(1)
    assert np.median(dist) < 0.3 and (dist < 1.0).mean() >= 0.99
    small_labels = tifffile.imread(out / "mosaic20_labels.tif", key=0)
    assert small_labels.shape == (1050, 1050) and small_labels.max() == len(rows)
    features = read_features(out / "mosaic20.geojson.gz")
    assert max(np.max(f["geometry"]["coordinates"][0]) for f in features) <= 1050
    areas = np.array([float(r["area"]) for r in rows])
    ratio = np.median(areas) / (np.median(np.bincount(labels.ravel())[1:]) / 4)
    assert 0.6 < ratio < 1.2              # level-0 (20x) pixels: a quarter of the model's


def test_a_coarser_model_reads_the_matching_level(slide40, mosaic, tmp_path):
    """A 0.5 um/px model on a 0.25 um/px pyramid reads level 1 as it is (no resampling)."""
    record = predict_slide(slide40, [SlideDetector(mpp=0.5)], tmp_path / "o",
                           PredictOptions(progress=False), slide_opts=SlideOptions(block_size=512))
    assert record["frame"]["level"] == 1 and record["frame"]["resample_factor"] == 1.0
    level1 = tifffile.TiffFile(slide40).pages[1].asarray()
    labels = whole_image_labels(level1, SlideDetector())
    masks = feature_masks(read_features(tmp_path / "o" / "mosaic40.geojson.gz"), (2100, 2100))
    halved = [((y1 // 2, x1 // 2, -(-y2 // 2), -(-x2 // 2)),
               cv2.resize(c.astype(np.uint8), (-(-x2 // 2) - x1 // 2, -(-y2 // 2) - y1 // 2),
                          interpolation=cv2.INTER_NEAREST).astype(bool))
              for (y1, x1, y2, x2), c in masks]
    matched, _ = match(halved, labels)
    assert record["nuclei"] == labels.max() and matched >= 0.95 * labels.max()


def test_tissue_mask_file_limits_the_blocks(slide40, tmp_path):
    mask = np.zeros((210, 210), np.uint8)                      # 10 level-0 px per mask px
    mask[:70, :70] = 255                                       # the top-left tile only
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    record = predict_slide(slide40, [SlideDetector()], tmp_path / "o",
                           PredictOptions(progress=False),
                           slide_opts=SlideOptions(block_size=512,
                                                   tissue_mask=str(tmp_path / "mask.png")))
    assert record["blocks"]["with_tissue"] == 4 and record["blocks"]["total"] == 25
    rows = read_csv(tmp_path / "o" / "mosaic40_nuclei.csv")
    assert 60 <= len(rows) < 120
    assert max(float(r["centroid_x"]) for r in rows) < 1024 + 8


def test_per_image_channel_scaling_warns():
    from nucseg.prediction.slides.predict import _warn_scaling

    five = SimpleNamespace(config=SimpleNamespace(IMAGE_CHANNEL_COUNT=5), name="m")
    with pytest.warns(UserWarning, match="block by block"):
        _warn_scaling([five], "s.svs")


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A run directory whose 'model' loads as the stand-in detector."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "mask_rcnn_x_0001.h5").write_bytes(b"")
    (run / "config.yaml").write_text("NAME: x\n")
    monkeypatch.setattr("nucseg.model_files.load_model", lambda *a, **k: SlideDetector())
    return run


def test_predict_takes_slides_and_tiles_in_one_call_and_resumes(slide40, fake_model, tmp_path):
    tile = tmp_path / "tile.png"
    cv2.imwrite(str(tile), cv2.cvtColor(he_colours(blob_image((200, 200), 8, seed=3)),
                                        cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    args = ["predict", str(slide40), str(tile), "-m", str(fake_model), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "mosaic40.geojson.gz").is_file() and (out / "tile_labels.tif").is_file()
    assert (out / "tile.geojson").is_file() and (out / "mosaic40_labels.tif").is_file()
    result = CliRunner().invoke(main, args + ["--resume"])
    assert result.exit_code == 0 and "already done" in result.output


def bad_slides(folder: Path, slide40: Path) -> dict:
    folder.mkdir()
    truncated = folder / "truncated.tif"
    truncated.write_bytes(slide40.read_bytes()[:60000])
    unsupported = folder / "scan.svs"
    unsupported.write_bytes(b"this is not a slide" * 100)
    no_mpp = write_pyramid(folder / "nompp.tif", np.full((600, 600, 3), 200, np.uint8), None)
    return {"truncated": truncated, "unsupported": unsupported, "no_mpp": no_mpp}


@pytest.mark.parametrize("case", ["truncated", "unsupported", "no_mpp", "mask_size"])
def test_bad_slide_is_one_error_line_and_leaves_no_output(case, slide40, fake_model,
                                                          tmp_path):
    slides = bad_slides(tmp_path / "in", slide40)
    slide = slides.get(case, slide40)
    out = tmp_path / "out"
    args = ["predict", str(slide), "-m", str(fake_model), "-o", str(out)]
    if case == "mask_size":
        cv2.imwrite(str(tmp_path / "mask.png"), np.full((100, 210), 255, np.uint8))
        args += ["--tissue-mask", str(tmp_path / "mask.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {slide}: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    expected = {"truncated": "truncated file", "unsupported": "not a slide", "no_mpp": "--mpp",
                "mask_size": "tissue mask"}[case]
    assert expected in errors[0].split(f"{slide}: ", 1)[1]
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in left if n.startswith(slide.stem) or "part" in n], left
    if case != "mask_size":
        info = CliRunner().invoke(main, ["slide", "info", str(slide)])
        assert info.exit_code == 2 and "Traceback" not in info.stderr
        assert [line for line in info.stderr.splitlines() if line.startswith("error:")] \
            == [f"error: {slide}: {info.stderr.split(f'{slide}: ', 1)[1].strip()}"]


def test_missing_pixel_size_is_given_with_mpp(slide40, tmp_path):
    slide = write_pyramid(tmp_path / "nompp.tif", tifffile.imread(slide40)[:700, :700], None)
    with pytest.raises(InputError, match="--mpp"):
        open_slide(slide)
    failures, _ = predict_images([slide], [SlideDetector()], tmp_path / "o",
                                 PredictOptions(progress=False))
    assert len(failures) == 1 and "--mpp" in failures[0]
    record = predict_slide(slide, [SlideDetector()], tmp_path / "o",
                           PredictOptions(progress=False), slide_opts=SlideOptions(mpp=0.25))
    assert record["slide"]["mpp_source"] == "--mpp" and record["nuclei"] == 60


def test_a_nucleus_on_a_core_edge_is_kept_once_when_blocks_disagree_on_its_centroid():
    """Block A (core x < 100) and block B (x >= 100) see one nucleus with centroids on either
    side of the edge, in both orders: exactly one keeps it (the earlier block, A)."""
    from nucseg.prediction.slides.blocks import Owner, plan_blocks

    a, b = plan_blocks(200, 100, 100, 40)
    crop = np.ones((10, 10), bool)
    for x_a, x_b in ((101.0, 99.0), (99.0, 101.0), (99.0, 99.0), (101.0, 101.0)):
        owner = Owner(200, 100)
        kept_a = owner.select(a, np.array([[45, 95, 55, 105]]), np.array([[50.0, x_a]]), [crop])
        kept_b = owner.select(b, np.array([[45, 95, 55, 105]]), np.array([[50.0, x_b]]), [crop])
        assert (kept_a, kept_b) == ([0], []) and owner.duplicates == 1
    owner = Owner(200, 100)                   # far from A's core: only B may keep it
    assert owner.select(a, np.array([[45, 115, 55, 125]]), np.array([[50.0, 120.0]]),
                        [crop]) == []


def test_a_block_that_fails_to_read_is_retried_once_then_fails_the_slide(slide40, tmp_path,
                                                                        monkeypatch):
    from nucseg.prediction.slides import reader as readers

    calls = []
    real = readers.OpenSlideReader.read

    def flaky(self, level, x, y, width, height):
        calls.append((x, y))
        if len(calls) == 3 or (fail_always and len(calls) > 2):
            raise InputError(self.path, "cannot read the region (simulated)")
        return real(self, level, x, y, width, height)

    monkeypatch.setattr(readers.OpenSlideReader, "read", flaky)
    fail_always = False
    record = predict_slide(slide40, [SlideDetector()], tmp_path / "ok",
                           PredictOptions(progress=False), slide_opts=SlideOptions(block_size=1024))
    assert record["nuclei"] == 480 and len(calls) == 1 + 9 + 1     # overview, blocks, retry
    calls.clear()
    fail_always = True
    with pytest.raises(InputError, match="failed twice.*simulated"):
        predict_slide(slide40, [SlideDetector()], tmp_path / "bad",
                      PredictOptions(progress=False), slide_opts=SlideOptions(block_size=1024))
    left = list((tmp_path / "bad").iterdir())         # no output, the finished block kept
    assert [p.name for p in left] == ["mosaic40_blocks"]  # for --resume
    assert sorted(p.name for p in left[0].iterdir()) == ["manifest.yaml", "r000c000.npz"]


class StopAfter(SlideDetector):
    """Interrupts the run (as Ctrl-C or a kill would) at its `stop`-th model call."""

    def __init__(self, stop, **kwargs):
        super().__init__(**kwargs)
        self.stop = stop

    def detect(self, images):
        if self.calls + 1 == self.stop:
            raise KeyboardInterrupt
        return super().detect(images)


def test_resume_runs_only_unfinished_blocks_and_gives_the_same_files(slide40, tmp_path):
    opts = PredictOptions(progress=False, tile_size=1024)     # one model call per block
    slide_opts = SlideOptions(block_size=512)
    whole = tmp_path / "whole"
    predict_slide(slide40, [SlideDetector()], whole, opts, slide_opts=slide_opts)
    out = tmp_path / "out"
    first = StopAfter(stop=10)                 # killed in the 10th of 25 blocks
    with pytest.raises(KeyboardInterrupt):
        predict_slide(slide40, [first], out, opts, slide_opts=slide_opts)
    assert sorted(p.name for p in (out / "mosaic40_blocks").iterdir())[-1] == "r001c003.npz"
    assert not [p for p in out.iterdir() if p.name.startswith("mosaic40") and p.is_file()]
    again = SlideDetector()
    record = predict_slide(slide40, [again], out, replace(opts, resume=True),
                           slide_opts=slide_opts)
    assert record["blocks"]["resumed"] == 9 and again.calls == 25 - 9
    for name in ("mosaic40.geojson.gz", "mosaic40_nuclei.csv", "mosaic40_labels.tif",
                 "mosaic40_thumbnail.png"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert not (out / "mosaic40_blocks").exists()
    done = yaml.safe_load((whole / "mosaic40_record.yaml").read_text())
    assert {k: v for k, v in record["blocks"].items() if k != "resumed"} == \
        {k: v for k, v in done["blocks"].items() if k != "resumed"}
    # other settings than the interrupted run's: the blocks are not reused
    with pytest.raises(KeyboardInterrupt):
        predict_slide(slide40, [StopAfter(stop=5)], out, opts, slide_opts=slide_opts)
    with pytest.warns(UserWarning, match="run again"):
        record = predict_slide(slide40, [SlideDetector()], out,
                               replace(opts, resume=True, min_area=40), slide_opts=slide_opts)
    assert record["blocks"]["resumed"] == 0
