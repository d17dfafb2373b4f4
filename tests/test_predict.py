"""Prediction: TTA round trip, tiling seams, saturated tiles, outputs, merge later, resume,
bad inputs; one end-to-end run of the command line on a tiny random-weight Mask R-CNN."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner

from nucseg.prediction.channels import ChannelSources, model_input
from nucseg.cli import main
from nucseg.io import read_labels, read_rgb, write_float_map, write_rgb
from nucseg.prediction.members import Member
from nucseg.prediction.merge_saved import merge_from_paths
from nucseg.prediction.predict import PredictOptions, image_members, predict_images
from nucseg.prediction.tiling import detect_tiled, plan_tiles
from nucseg.prediction.tta import View, make_views

from synthetic import write_random_detector_run


class BlobDetector:
    """Stand-in detector: dark connected blobs; translation- and flip-equivariant.

    Soft mask = darkness (1 - grey / 400) on the blob's pixels; score from the area only, so
    it does not depend on pixel order. Returns at most `max_instances` (highest scores).
    """

    def __init__(self, max_instances=400, name="blobs"):
        self.config = SimpleNamespace(IMAGE_CHANNEL_COUNT=3, DETECTION_MAX_INSTANCES=max_instances)
        self.name = name
        self.calls = 0

    def detect(self, images):
        results = []
        for image in images:
            self.calls += 1
            grey = image[..., :3].astype(np.float32).mean(-1)
            count, comp, stats, _ = cv2.connectedComponentsWithStats(
                (grey < 120).astype(np.uint8), connectivity=4)
            rois, scores, masks = [], [], []
            for k in range(1, count):
                x, y, w, h, area = stats[k]
                rois.append([y, x, y + h, x + w])
                scores.append(area / (area + 50.0))
                masks.append(np.where(comp[y:y + h, x:x + w] == k,
                                      1 - grey[y:y + h, x:x + w] / 400, 0).astype(np.float32))
            order = sorted(range(len(rois)), key=lambda i: (-scores[i], rois[i]))
            order = order[:self.config.DETECTION_MAX_INSTANCES]
            results.append({"rois": np.array([rois[i] for i in order], np.int32).reshape(-1, 4),
                            "scores": np.array([scores[i] for i in order], np.float32),
                            "class_ids": np.ones(len(order), np.int32),
                            "masks": [masks[i] for i in order]})
        return results


def blob_image(shape, n, seed, margin=14):
    """Light background with `n` dark soft disks (radius 5-9) kept `margin` px from the edges
    and apart from each other."""
    rng = np.random.default_rng(seed)
    image = np.full(shape + (3,), 225, np.uint8)
    centres = []
    for _ in range(100000):
        if len(centres) == n:
            break
        c = rng.uniform(margin, np.array(shape) - margin)
        if all(np.hypot(*(c - d)) > 22 for d in centres):
            centres.append(c)
    assert len(centres) == n, "no room for that many blobs"
    for cy, cx in centres:
        r = rng.uniform(5, 9)
        y0, x0 = int(cy) - 10, int(cx) - 10
        yy, xx = np.mgrid[y0:y0 + 21, x0:x0 + 21]
        d = np.hypot(yy - cy, xx - cx)
        inside = d <= r
        image[yy[inside], xx[inside]] = (40 + 60 * d[inside] / r).astype(np.uint8)[:, None]
    return image


def as_set(rois):
    return {tuple(int(v) for v in r) for r in rois}


def test_tta_views_map_back_exactly():
    image = blob_image((150, 170), 12, seed=1)
    members = image_members([BlobDetector()], image, "x", PredictOptions(tta=True,
                                                                        progress=False))
    assert [m.transform for m in members] == ["identity", "hflip", "vflip", "hsv"]
    base = members[0]
    assert len(base) == 12
    order = lambda m: np.lexsort((m.rois[:, 1], m.rois[:, 0]))  # noqa: E731
    for flipped in members[1:3]:
        np.testing.assert_array_equal(flipped.rois[order(flipped)], base.rois[order(base)])
        for i, j in zip(order(flipped), order(base)):
            np.testing.assert_array_equal(flipped.masks[i], base.masks[j])
    # the HSV view changes colours only: the same blobs, boxes within a pixel
    assert len(members[3]) == 12
    view = make_views(True, seed=0)[3]
    shifted = view.apply(image)
    assert shifted.shape == image.shape and not np.array_equal(shifted, image)


def test_view_inverse_on_boxes():
    member = Member([[2, 3, 7, 10]], [0.9], [1], [np.arange(35, dtype=np.float32).reshape(5, 7)
                                                   / 40], (20, 30))
    h = View("hflip").invert(member)
    np.testing.assert_array_equal(h.rois, [[2, 20, 7, 27]])
    np.testing.assert_array_equal(h.masks[0], member.masks[0][:, ::-1])
    v = View("vflip").invert(member)
    np.testing.assert_array_equal(v.rois, [[13, 3, 18, 10]])
    np.testing.assert_array_equal(View("vflip").invert(v).rois, member.rois)


def test_mosaic_tiles_give_the_per_tile_nuclei_without_seam_duplicates():
    pieces = [blob_image((1000, 1000), 60, seed=s) for s in range(4)]
    mosaic = \
        np.concatenate([np.concatenate(pieces[:2], 1), np.concatenate(pieces[2:], 1)], 0)
    detector = BlobDetector()
    want_rois, want_masks = [], {}
    for k, piece in enumerate(pieces):
        out = detector.detect([piece])[0]
        shift = np.array([1000 * (k // 2), 1000 * (k % 2)] * 2)
        for r, m in zip(out["rois"], out["masks"]):
            want_rois.append(r + shift)
            want_masks[tuple(int(v) for v in r + shift)] = m
    regions = plan_tiles(mosaic.shape[:2], 512, 128)
    assert len(regions) == 25                          # 2000 px: 5 tiles of 512 per axis
    seams = {r.core[0] for r in regions} | {r.core[1] for r in regions}
    found, info = detect_tiled(detector, mosaic, 512, 128, max_instances=400)
    assert len(found["rois"]) == len(want_rois) == 240
    assert as_set(found["rois"]) == as_set(want_rois)  # no doubles, none missing
    cut = [r for r in found["rois"] if any(r[0] < s < r[2] or r[1] < s < r[3] for s in seams)]
    assert len(cut) > 5                                # nuclei do lie across tile seams
    for r, m in zip(found["rois"], found["masks"]):
        np.testing.assert_array_equal(m, want_masks[tuple(int(v) for v in r)])
    assert info["splits"] == 0 and info["tiles"] == 25 and info["seam_duplicates"] == 0


def test_tile_with_max_detections_is_split_and_rerun():
    image = blob_image((300, 300), 40, seed=2)
    found, info = detect_tiled(BlobDetector(max_instances=15), image, 1024, 128,
                               max_instances=15)
    assert info["splits"] >= 1
    assert as_set(found["rois"]) == as_set(BlobDetector().detect([image])[0]["rois"])


def test_command_line_defaults_are_the_library_defaults():
    """`nucseg predict` and scripts calling PredictOptions() must detect the same way (the CLI
    spells its defaults out so that `--help` stays fast)."""
    from dataclasses import fields

    command = main.get_command(None, "predict")
    library = {f.name: f.default for f in fields(PredictOptions)}
    shared = {p.name: p.default for p in command.params      # options without a default
              if p.name in library and isinstance(p.default, (bool, int, float, str))}
    assert {"tile_size", "overlap", "min_area", "batch_size", "seed"} <= set(shared)
    assert shared == {name: library[name] for name in shared}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    paths = []
    for k in range(2):
        paths.append(write_rgb(folder / f"tile{k}.png", blob_image((160, 200), 10, seed=10 + k)))
    return paths


def read_outputs(outdir, stem):
    out = Path(outdir)
    return (read_labels(out / f"{stem}_labels.tif"),
            (out / f"{stem}.geojson").read_text(), (out / f"{stem}_nuclei.csv").read_text())


def test_predict_writes_outputs_and_merging_later_is_identical(tmp_path, images):
    opts = PredictOptions(tta=True, keep_members=True, overlay=True, progress=False)
    detectors = [BlobDetector(name="a"), BlobDetector(name="b")]
    failures, skipped = predict_images(images, detectors, tmp_path / "out", opts)
    assert failures == [] and skipped == 0
    for path in images:
        stem = path.stem
        for suffix in ("_labels.tif", ".geojson", "_nuclei.csv", "_overlay.png", "_record.yaml"):
            assert (tmp_path / "out" / f"{stem}{suffix}").is_file()
        record = yaml.safe_load((tmp_path / "out" / f"{stem}_record.yaml").read_text())
        assert len(record["members"]) == 8 and record["nuclei"] == 10
        assert record["inputs"][0]["sha256"]
        assert tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif").dtype == np.uint16
    members = sorted((tmp_path / "out").glob("*_member*.npz"))
    assert len(members) == 16
    failures, n = merge_from_paths(members, tmp_path / "later",
                                   PredictOptions(overlay=True, progress=False))
    assert failures == [] and n == 2
    for path in images:
        inside = read_outputs(tmp_path / "out", path.stem)
        later = read_outputs(tmp_path / "later", path.stem)
        np.testing.assert_array_equal(inside[0], later[0])
        assert inside[1] == later[1] and inside[2] == later[2]


class FaintRimDetector(BlobDetector):
    """Blobs whose soft masks are 0.9 inside and 0.6 on the rim, between the two thresholds."""

    def detect(self, images):
        results = super().detect(images)
        for result in results:
            result["masks"] = [np.where(m >= 0.8, 0.9, np.where(m > 0, 0.6, 0)).astype(np.float32)
                               for m in result["masks"]]
        return results


def test_one_model_without_tta_cuts_masks_where_detection_does(tmp_path, images):
    """One member has nothing to vote on: its masks are cut at Matterport's 0.5, not the vote's
    0.7, so `predict -m MODEL` paints what model.detect found; an explicit threshold wins."""
    detector = FaintRimDetector()
    raw = detector.detect([read_rgb(images[0])])[0]
    for threshold, expected in ((None, 0.5), (0.7, 0.7)):
        out = tmp_path / f"out_{threshold}"
        opts = PredictOptions(progress=False, min_area=0, csv=False, geojson=False,
                              mask_threshold=threshold)
        assert predict_images(images[:1], [detector], out, opts) == ([], 0)
        labels = read_labels(out / f"{images[0].stem}_labels.tif")
        assert (labels > 0).sum() == sum(int((m > expected).sum()) for m in raw["masks"])
        record = yaml.safe_load((out / f"{images[0].stem}_record.yaml").read_text())
        assert record["merge"]["mask_threshold"] == expected
    rim = sum(int(((m > 0.5) & (m < 0.7)).sum()) for m in raw["masks"])
    assert rim > 50, "the test image must have faint rims for the thresholds to differ"


def test_merge_goes_on_past_a_corrupt_member_file(tmp_path, images):
    opts = PredictOptions(keep_members=True, progress=False)
    predict_images(images, [BlobDetector(name="a"), BlobDetector(name="b")], tmp_path / "out",
                   opts)
    members = sorted((tmp_path / "out").glob("*_member*.npz"))
    corrupt = [m for m in members if m.name.startswith(images[0].stem)][0]
    corrupt.write_bytes(b"truncated")
    failures, n = merge_from_paths(members, tmp_path / "later", PredictOptions(progress=False))
    assert n == 2 and len(failures) == 1 and corrupt.name in failures[0]
    assert (tmp_path / "later" / f"{images[1].stem}_labels.tif").is_file()
    assert not list((tmp_path / "later").glob(f"{images[0].stem}*"))


def test_bad_image_is_reported_and_resume_skips_finished(tmp_path, images):
    bad = images[0].parent / "broken.png"
    bad.write_bytes(b"not an image")
    detector = BlobDetector()
    opts = PredictOptions(progress=False)
    failures, _ = predict_images([images[0], bad, images[1]], [detector], tmp_path / "o", opts)
    assert len(failures) == 1 and "broken.png" in failures[0]
    assert not list((tmp_path / "o").glob("broken*"))
    assert all((tmp_path / "o" / f"{p.stem}_record.yaml").is_file() for p in images)
    calls = detector.calls
    (tmp_path / "o" / f"{images[1].stem}_nuclei.csv").unlink()      # an incomplete output
    failures, skipped = predict_images(images, [detector], tmp_path / "o",
                                       PredictOptions(progress=False, resume=True))
    assert failures == [] and skipped == 1 and detector.calls == calls + 1
    assert (tmp_path / "o" / f"{images[1].stem}_nuclei.csv").is_file()


def test_five_channel_input_order_and_scaling(tmp_path):
    rgb = blob_image((60, 80), 2, seed=3)
    dist = np.zeros((60, 80), np.float32)
    dist[10:20, 10:20] = 4.0
    dist[12, 12] = 8.0
    write_float_map(tmp_path / "img_dist.tif", dist)
    stack, extra = model_input(rgb, 5, "img", ChannelSources(distance_dir=tmp_path))
    assert stack.shape == (60, 80, 5) and stack.dtype == np.uint8
    np.testing.assert_array_equal(stack[..., :3], rgb)
    assert stack[12, 12, 3] == 255 and stack[15, 15, 3] == 127 and stack[0, 0, 3] == 0
    assert stack[..., 4].max() == 255                     # hematoxylin scaled per image
    darkest = np.unravel_index(np.argmax(rgb.sum(-1) == rgb.sum(-1).min()), (60, 80))
    assert stack[darkest + (4,)] > 200 and stack[0, 0, 4] < 50      # dark nuclei: high H
    with pytest.raises(ValueError, match="distance"):
        model_input(rgb, 5, "img", ChannelSources())
    with pytest.raises(Exception, match="no distance map"):
        model_input(rgb, 5, "other", ChannelSources(distance_dir=tmp_path))


def test_fixed_channel_scaling_gives_a_nucleus_the_same_input_in_any_tile(tmp_path):
    """Per-image scaling depends on the tile a nucleus is cut from; fixed scaling must not
    (slides run in blocks), and training (compose_channels) must scale as predict does."""
    from nucseg.prediction.channels import ChannelScaling
    from nucseg.data.dataset import compose_channels
    from nucseg.mrcnn import Config
    from nucseg.stain import hematoxylin

    rgb = blob_image((60, 80), 2, seed=3)
    dist = np.zeros((60, 80), np.float32)
    dist[10:20, 10:20] = 4.0
    dist[40:50, 60:70] = 30.0                      # a big nucleus in one half of the image
    write_float_map(tmp_path / "img_dist.tif", dist)
    config = Config.preset("paper").copy(**ChannelScaling("fixed").config_overrides())
    fixed = ChannelScaling.from_config(config)
    whole, _ = model_input(rgb, 5, "img", ChannelSources(distance_dir=tmp_path), fixed)
    assert whole[15, 15, 3] == int(4.0 / 18.0 * 255) and whole[45, 65, 3] == 255   # clipped
    h = hematoxylin(rgb)
    part = fixed.stack(rgb[:30, :40], dist[:30, :40], h[:30, :40])
    np.testing.assert_array_equal(part, whole[:30, :40])            # tile-independent
    per_image = ChannelScaling().stack(rgb[:30, :40], dist[:30, :40], h[:30, :40])
    assert per_image[15, 15, 3] == 255 != whole[15, 15, 3]          # what it replaces
    np.testing.assert_array_equal(
        compose_channels(rgb, None, 5, distance=dist, scaling=fixed), whole)
    with pytest.raises(ValueError, match="CHANNEL_SCALING|channel scaling"):
        Config.preset("paper").copy(CHANNEL_SCALING="max")


def test_command_line_end_to_end_on_a_tiny_random_model(tmp_path, images):
    """ResNet-50 Mask R-CNN+ (5 channels) with random weights: predict with TTA, a bad image in
    the batch, members kept; merge them later; --resume then loads no model."""
    run = tmp_path / "run"
    write_random_detector_run(run, DETECTION_MIN_CONFIDENCE=0.0)
    dist_dir = tmp_path / "dist"
    for p in images:
        write_float_map(dist_dir / f"{p.stem}_dist.tif", np.ones((160, 200), np.float32))
    bad = images[0].parent / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["predict", str(images[0]), str(bad), "-m", str(run), "--distance-dir",
            str(dist_dir), "-o", str(out), "--tta", "--keep-members", "--min-members", "1",
            "--min-area", "1"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "broken.png" in result.output
    stem = images[0].stem
    record = yaml.safe_load((out / f"{stem}_record.yaml").read_text())
    assert record["models"][0]["weights"].endswith("mask_rcnn_paper_0005.h5")
    assert [m["transform"] for m in record["members"]] == ["identity", "hflip", "vflip", "hsv"]
    assert all(m["detections"] > 0 for m in record["members"])
    assert record["splits_after_max_detections"] == 0
    for suffix in ("_labels.tif", ".geojson", "_nuclei.csv", "_member00.npz", "_member03.npz"):
        assert (out / f"{stem}{suffix}").is_file()
    result = runner.invoke(main, ["merge", *map(str, out.glob("*_member*.npz")), "-o",
                                  str(tmp_path / "later"), "--min-members", "1",
                                  "--min-area", "1"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_outputs(out, stem)[0],
                                  read_outputs(tmp_path / "later", stem)[0])
    assert read_outputs(out, stem)[1:] == read_outputs(tmp_path / "later", stem)[1:]
    result = runner.invoke(main, args[:1] + [str(images[0])] + args[3:] + ["--resume"])
    assert result.exit_code == 0 and "already done" in result.output


def test_model_paths_resolve_to_weights_and_config(tmp_path):
    from nucseg.io import InputError
    from nucseg.model_files import ensemble_models, resolve_model

    for fold in ("fold0", "fold1"):
        run = tmp_path / "ens" / fold
        run.mkdir(parents=True)
        for epoch in (5, 50, 10):
            (run / f"mask_rcnn_{fold}_{epoch:04d}.h5").write_bytes(b"")
        (run / "config.yaml").write_text("NAME: x\n")
        (run / "train_record.yaml").write_text("command: train\n")
    spec = resolve_model(tmp_path / "ens" / "fold1")
    assert spec.weights.name == "mask_rcnn_fold1_0050.h5" and spec.config.name == "config.yaml"
    assert [s.weights.parent.name for s in ensemble_models(tmp_path / "ens")] == ["fold0",
                                                                                 "fold1"]
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.h5").write_bytes(b"")
    with pytest.raises(InputError, match="no config YAML"):
        resolve_model(single / "model.h5")
    (single / "model.yaml").write_text("NAME: y\n")
    assert resolve_model(single / "model.h5").config.name == "model.yaml"
    with pytest.raises(InputError, match="no checkpoint"):
        resolve_model(single)
    with pytest.raises(InputError, match="no fold"):
        ensemble_models(single)


def test_mixed_bfloat16_inference_finds_the_float32_detections(tmp_path):
    """`predict --precision mixed_bfloat16`: the same weights give nearly the same boxes (the
    convolutions round to bfloat16's 8-bit mantissa, so not bit for bit)."""
    import keras

    from nucseg.model_files import load_model, resolve_model

    keras.utils.set_random_seed(5)
    write_random_detector_run(tmp_path / "run", DETECTION_MIN_CONFIDENCE=0.0,
                              DETECTION_MAX_INSTANCES=50)
    spec = resolve_model(tmp_path / "run")
    image = np.dstack([blob_image((128, 128), 6, seed=4), np.full((128, 128, 2), 40, np.uint8)])
    full = load_model(spec, 1, "float32").detect([image])[0]
    model = load_model(spec, 1, "mixed_bfloat16")
    assert model.keras_model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.keras_model.get_layer("conv1").variable_dtype == "float32"
    half = model.detect([image])[0]
    assert half["masks"] and half["masks"][0].dtype == np.float32
    assert abs(len(half["scores"]) - len(full["scores"])) <= 0.1 * len(full["scores"])
    a, b = full["rois"][:20, None].astype(float), half["rois"][None].astype(float)
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0,
                       None))
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    assert (iou.max(1) > 0.8).mean() >= 0.8                 # the strongest 20 found again


def test_rois_option_sets_the_proposals_per_model_call(tmp_path, images):
    """`--rois N` keeps N proposals per call, so a random model (which keeps every detection)
    finds at most N nuclei per call; the record says how many it kept."""
    run = tmp_path / "run"
    write_random_detector_run(run, DETECTION_MIN_CONFIDENCE=0.0)
    dist_dir = tmp_path / "dist"
    write_float_map(dist_dir / f"{images[0].stem}_dist.tif", np.ones((160, 200), np.float32))
    counts = {}
    for rois in (None, 20):
        out = tmp_path / f"out{rois}"
        args = ["predict", str(images[0]), "-m", str(run), "--distance-dir", str(dist_dir),
                "-o", str(out), "--min-area", "1"]
        result = CliRunner().invoke(main, args + (["--rois", str(rois)] if rois else []))
        assert result.exit_code == 0, result.output
        record = yaml.safe_load((out / f"{images[0].stem}_record.yaml").read_text())
        counts[rois] = record["members"][0]["detections"]
        assert record["models"][0]["rois"] == (rois or 100)     # 100: the run's config
    assert 0 < counts[20] <= 20 < counts[None]
