"""Bad input and faults across commands: each case asserts the exit code, exactly one
`error: <file>: <problem>` line, no traceback, no file left under a final or temporary name,
and, in a batch, that the good items were still written.
(Importers: test_bad_monuseg.py, test_bad_pannuke.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from nucseg.cli import main
from nucseg.io import InputError, read_float_map, read_labels, write_float_map, write_labels, \
    write_rgb
from nucseg.prediction.members import Member, save_member
from nucseg.outdir import TEMP_NAME, claim, same_settings_or_refuse

from test_predict import BlobDetector, blob_image


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("error: ")]


def assert_one_error(result, path, code, fragment=""):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception,
                                                              (TypeError, AttributeError))
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert fragment in lines[0], lines[0]


def no_temp_files(folder):
    return not [p for p in folder.rglob("*") if TEMP_NAME.match(p.name)]


@pytest.fixture
def tile(tmp_path):
    return write_rgb(tmp_path / "in" / "tile.png", blob_image((64, 64), 3, seed=4))


# --- output paths ------------------------------------------------------------------------
def test_output_under_a_file_is_one_error_line(tmp_path, tile):
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    for command in (["hstain", tile], ["baseline", tile], ["distance", "labels", tile]):
        result = invoke(*command, "-o", blocker / "sub")
        assert_one_error(result, blocker, 2, "exists and is not a directory")
    result = invoke("hstain", tile, "-o", blocker)
    assert_one_error(result, blocker, 2, "exists and is not a directory")
    assert blocker.read_text() == "x"


def test_failing_before_any_work_leaves_no_output_folder(tmp_path, tile):
    bad = tmp_path / "matrix.txt"
    bad.write_text("1 2 3\n")
    result = invoke("hstain", tile, "-o", tmp_path / "out", "--stain-matrix", bad)
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


def test_missing_input_is_an_error_before_any_work(tmp_path):
    result = invoke("baseline", tmp_path / "no_such_dir", "-o", tmp_path / "out")
    assert_one_error(result, tmp_path / "no_such_dir", 2, "no such file or directory")
    assert not (tmp_path / "out").exists()


def test_two_inputs_with_one_stem_are_refused(tmp_path, tile):
    other = write_rgb(tmp_path / "b" / "tile.tif", blob_image((64, 64), 3, seed=5))
    result = invoke("hstain", tile, other, "-o", tmp_path / "out")
    assert_one_error(result, other, 2, f"same stem as {tile}")
    assert not (tmp_path / "out").exists()
    result = invoke("hstain", tile, tile, "-o", tmp_path / "out")      # the same file twice
    assert result.exit_code == 0 and "wrote 1" in result.output


# --- label maps and float maps: one rule set for every command -----------------------------
@pytest.mark.parametrize("values, fragment", [
    ([0, 2**32 + 1], "above the supported maximum"),
    ([0, 2**31], "above the supported maximum"),
    ([0.0, 1.5], "must hold integers"),
    ([0.0, np.nan], "NaN"),
    ([0, -3], "negative ids"),
])
def test_label_map_rules(tmp_path, values, fragment):
    data = np.zeros((8, 8), np.asarray(values).dtype)
    data[2:4, 2:4] = values[1]
    path = tmp_path / "bad.npy"
    np.save(path, data)
    with pytest.raises(InputError, match=fragment):
        read_labels(path)
    good = tmp_path / "good" / "good.tif"
    write_labels(good, (np.arange(64).reshape(8, 8) > 40).astype(np.int32))
    for command in (["distance", "labels", path, good, "-o", tmp_path / "out"],):
        result = invoke(*command)
        assert_one_error(result, path, 1, fragment)
        assert (tmp_path / "out" / "good_dist.tif").is_file()
        assert not (tmp_path / "out" / "bad_dist.tif").exists()
    gt = tmp_path / "gt"
    write_labels(gt / "bad.tif", np.ones((8, 8), np.int32))
    result = invoke("score", "--gt", gt, "--pred", path)
    assert result.exit_code == 1 and fragment in result.output and "Traceback" not in result.output


def test_ids_of_2_to_the_32_do_not_wrap_onto_small_ids(tmp_path):
    """The reported case: id 2^32 + 1 used to become 1 and merge with nucleus 1."""
    data = np.zeros((8, 8), np.int64)
    data[0:2, 0:2] = 1
    data[5:7, 5:7] = 2**32 + 1
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(InputError, match="renumber"):
        read_labels(tmp_path / "x.npy")


@pytest.mark.parametrize("value, fragment", [(np.nan, "NaN or infinite"),
                                             (np.inf, "NaN or infinite"),
                                             (-0.5, "negative values")])
def test_float_map_rules(tmp_path, value, fragment):
    data = np.ones((8, 8), np.float32)
    data[3, 3] = value
    path = tmp_path / "m_dist.npy"
    np.save(path, data)
    with pytest.raises(InputError, match=fragment):
        read_float_map(path)


def test_predict_goes_on_past_an_image_whose_distance_map_has_nan(tmp_path):
    """A 5-channel model must never run on a NaN-zeroed channel: the image fails, the batch
    goes on."""
    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.predict import PredictOptions, predict_images

    images = [write_rgb(tmp_path / "in" / f"t{k}.png", blob_image((64, 64), 3, seed=k))
              for k in range(2)]
    dist = np.ones((64, 64), np.float32)
    write_float_map(tmp_path / "d" / "t1_dist.tif", dist)
    dist[5, 5] = np.nan
    write_float_map(tmp_path / "d" / "t0_dist.tif", dist)
    detector = BlobDetector()
    detector.config.IMAGE_CHANNEL_COUNT = 5
    failures, _ = predict_images(images, [detector], tmp_path / "out",
                                 PredictOptions(progress=False),
                                 ChannelSources(distance_dir=tmp_path / "d"))
    assert len(failures) == 1 and "t0_dist.tif" in failures[0] and "NaN" in failures[0]
    assert (tmp_path / "out" / "t1_labels.tif").is_file()
    assert not list((tmp_path / "out").glob("t0*")) and no_temp_files(tmp_path / "out")


# --- member files ------------------------------------------------------------------------
def _member(tmp_path, name, **changes):
    member = Member(np.array([[2, 2, 10, 10]], np.int32), np.array([0.9], np.float32),
                    np.array([1], np.int32), [np.ones((8, 8), np.float32)], (32, 32),
                    "m", "identity", image=str(tmp_path / f"{name}.png"))
    path = save_member(tmp_path / "members" / f"{name}_member00.npz", member)
    if changes:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(changes)
        np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("changes, fragment", [
    ({"rois": np.array([2, 2, 10, 10], np.int32)}, "N x 4"),
    ({"rois": np.array([[[2, 2, 10, 10]]], np.int32)}, "N x 4"),
    ({"scores": np.array([np.nan], np.float32)}, "finite"),
    ({"scores": np.array([[0.9]], np.float32)}, "scores must be 1 floats"),
    ({"class_ids": np.array([0], np.int32)}, "class_ids"),
    ({"rois": np.array([[2, 2, 40, 10]], np.int32)}, "outside"),
    ({"image_shape": np.array([32], np.int64)}, "image_shape"),
    ({"mask_data": np.ones((8, 8), np.uint8)}, "mask_data must be 1-D"),
])
def test_merge_reports_a_bad_member_file_and_merges_the_good(tmp_path, changes, fragment):
    good = _member(tmp_path, "good")
    bad = _member(tmp_path, "bad", **changes)
    result = invoke("merge", good, bad, "-o", tmp_path / "out", "--min-area", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert any(f"{bad}: member file: " in line and fragment in line
               for line in result.output.splitlines()), result.output
    assert (tmp_path / "out" / "good_labels.tif").is_file()
    geojson = (tmp_path / "out" / "good.geojson").read_text()
    assert "NaN" not in geojson
    assert not list((tmp_path / "out").glob("bad*")) and no_temp_files(tmp_path / "out")


# --- faults: temp files, locks, resume, signals ------------------------------------------
def test_next_run_removes_temp_files_a_killed_run_left(tmp_path, tile):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".tile_hstain.tif.a1b2c3d4.part.tif", out / "sub" / ".x.h5.zz99yy88.part.h5"]
    stale[1].parent.mkdir()
    for path in stale:
        path.write_bytes(b"half")
    keep = out / "notes.part.txt"        # a user's file with 'part' in its name stays
    keep.write_text("mine")
    result = invoke("hstain", tile, "-o", out)
    assert result.exit_code == 0, result.output
    assert "removed 2 temp file(s)" in result.output
    assert not any(p.exists() for p in stale) and keep.exists()
    assert (out / "tile_hstain.tif").is_file()


def test_a_second_writer_into_a_locked_directory_is_refused(tmp_path, tile):
    with claim(tmp_path / "out"):
        result = invoke("hstain", tile, "-o", tmp_path / "out")
        assert_one_error(result, tmp_path / "out", 2, "another nucseg process")
    assert invoke("hstain", tile, "-o", tmp_path / "out").exit_code == 0
    assert not (tmp_path / "out" / ".nucseg.lock").exists()


def test_resume_with_other_settings_says_what_differs(tmp_path):
    same_settings_or_refuse(tmp_path, "s.yaml", {"options": {"tta": False}, "models": ["a"]},
                            resume=False)
    same_settings_or_refuse(tmp_path, "s.yaml", {"options": {"tta": False}, "models": ["a"]},
                            resume=True)
    with pytest.raises(InputError, match=r"options: \{'tta': False\} -> \{'tta': True\}"):
        same_settings_or_refuse(tmp_path, "s.yaml",
                                {"options": {"tta": True}, "models": ["a"]}, resume=True)


def _start(args, tmp_path, ignore_sigint=True):
    """The installed command as a script in the background would start it."""
    def preexec():
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return subprocess.Popen(["nucseg", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
                            cwd=tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_an_inherited_ignored_sigint_stop_distance_train_cleanly(tmp_path, sig):
    """Started from a script in the background (SIGINT ignored), `kill` and `kill -INT` must
    stop a training the way Ctrl-C does: completed epochs kept, one line, exit 130."""
    for k in range(2):
        write_rgb(tmp_path / "im" / f"t{k}.png", blob_image((64, 64), 3, seed=k))
        write_labels(tmp_path / "lab" / f"t{k}.tif",
                     (blob_image((64, 64), 3, seed=k)[..., 0] < 120).astype(np.int32))
    proc = _start(["distance", "train", "--images", "im", "--labels", "lab", "-o", "unet",
                   "--width", "4", "--epochs", "100000", "--checkpoint-every", "0"], tmp_path)
    deadline = time.time() + 240
    while not (tmp_path / "unet" / "unet.weights.h5").exists() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    from nucseg.unet import load_unet

    assert load_unet(tmp_path / "unet").config.width == 4       # the saved model still loads
    assert no_temp_files(tmp_path / "unet")


# --- messages ----------------------------------------------------------------------------
def test_rgba_warning_is_one_plain_line(tmp_path):
    rgba = np.dstack([blob_image((32, 32), 1, seed=1), np.full((32, 32), 255, np.uint8)])
    path = tmp_path / "rgba.png"
    from PIL import Image

    Image.fromarray(rgba).save(path)
    done = subprocess.run(["nucseg", "hstain", str(path), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "RGBA" in line]
    assert warnings == [f"warning: {path}: RGBA image, alpha channel dropped"], done.stderr
    assert "warnings.warn" not in done.stderr


def test_truncated_tiff_says_truncated(tmp_path):
    import tifffile

    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8),
                     compression="lzw")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = invoke("hstain", path, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert any(line.startswith(f"error: {path}: ") and ("truncated" in line or "decoder" in line)
               for line in result.output.splitlines()), result.output


def test_score_makes_no_seen_unseen_split_it_cannot_know(tmp_path, data_dir):
    """Without --seen-organs and without a record of what the model trained on, no groups (the
    old default silently assumed the 16-tile Kumar organs)."""
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6] = 1
    names = ["TCGA-18-5592-01Z-00-DX1", "TCGA-DK-A2I6-01A-01-TS1"]
    for name in names:
        write_labels(tmp_path / "gt" / f"{name}.tif", labels)
        write_labels(tmp_path / "pred" / f"{name}_labels.tif", labels)
    metadata = data_dir / "metadata.csv"
    result = invoke("score", "--gt", tmp_path / "gt", "--pred", tmp_path / "pred",
                    "--metadata", metadata, "--format", "json")
    assert result.exit_code == 0, result.output
    assert "no seen/unseen groups" in result.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.yaml").write_text(yaml.safe_dump({"dataset": {"names": [names[0]]}}))
    (tmp_path / "pred" / f"{names[0]}_record.yaml").write_text(yaml.safe_dump(
        {"models": [{"weights": str(run / "mask_rcnn_x_0001.h5")}]}))
    result = invoke("score", "--gt", tmp_path / "gt", "--pred", tmp_path / "pred",
                    "--metadata", metadata, "--format", "json", "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "s.json").read_text())
    assert data["groups"]["seen"]["organs"] == ["liver"]           # 18-5592 is a liver tile
    assert data["groups"]["unseen"]["organs"] == ["bladder"]
    assert data["seen_organs_from"] == "the model's training record"


def test_read_only_output_directory_is_one_error_line(tmp_path, tile, monkeypatch):
    """The tests run as root, for whom every directory is writable: the permission answer is
    simulated, the rest is the real path (a non-root user gets the same line)."""
    import nucseg.outdir

    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(nucseg.outdir.os, "access",
                        lambda p, mode, **kw: False if os.fspath(p) == os.fspath(out)
                        and mode & os.W_OK else real(p, mode, **kw))
    result = invoke("hstain", tile, "-o", out)
    assert_one_error(result, out, 2, "not writable")
    assert list(out.iterdir()) == []


def test_os_errors_during_work_are_one_line_naming_the_file(tmp_path, tile, monkeypatch):
    """A full disk or a permission problem mid-command: one line with the file, no traceback."""
    import nucseg.stain

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "x.tif"))

    monkeypatch.setattr(nucseg.stain, "hstain_file", full_disk)
    result = invoke("hstain", tile, "-o", tmp_path / "out")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "No space left on device" in result.output
