"""baseline: classical segmentation finds and splits nuclei; CLI; the demo script."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import tifffile
import yaml
from click.testing import CliRunner

from nucseg.baseline import baseline_labels
from nucseg.cli import main
from nucseg.io import write_rgb

REPO = Path(__file__).resolve().parents[1]
PINK, PURPLE = (235, 170, 200), (70, 40, 120)


def synthetic_tile():
    """Pink stroma with dark purple nuclei: three apart and two touching ones."""
    image = np.empty((96, 96, 3), np.uint8)
    image[:] = PINK
    yy, xx = np.mgrid[:96, :96]
    centres = [(20, 20), (20, 70), (70, 20), (70, 62), (70, 78)]  # the last two touch
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8 ** 2] = PURPLE
    return image, centres


def test_finds_and_splits_nuclei():
    image, centres = synthetic_tile()
    labels = baseline_labels(image, sigma=0.5, min_distance=5)
    assert labels.max() == len(centres)
    ids = [labels[cy, cx] for cy, cx in centres]
    assert 0 not in ids and len(set(ids)) == len(centres)  # touching pair split in two
    assert labels[0, 0] == 0 and labels[45, 45] == 0


def test_blank_image_gives_no_nuclei():
    assert baseline_labels(np.full((32, 32, 3), 255, np.uint8)).max() == 0


def test_cli_writes_labels_and_record(tmp_path):
    image, centres = synthetic_tile()
    src = write_rgb(tmp_path / "tile.png", image)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["baseline", str(src), "-o", str(out), "--sigma", "0.5"])
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(out / "tile_labels.tif")
    assert labels.dtype == np.uint16 and labels.max() == len(centres)
    record = yaml.safe_load((out / "baseline_record.yaml").read_text())
    assert record["options"]["sigma"] == 0.5
    bad = CliRunner().invoke(main, ["baseline", str(src), "-o", str(out), "--min-distance", "0"])
    assert bad.exit_code == 2 and "--min-distance must be >= 1" in bad.output


def test_demo_script_runs_the_chain(tmp_path):
    """bin/demo.sh's training branch (DEMO_TRAIN=1; the shipped-model branch is what
    test_shipped_model checks through `nucseg predict` without -m)."""
    assert shutil.which("nucseg"), "the nucseg console command is not installed"
    env = dict(os.environ, DEMO_TRAIN_STEPS="3", DEMO_TRAIN="1")  # the chain, not accuracy
    done = subprocess.run([str(REPO / "bin" / "demo.sh"), str(tmp_path / "demo")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    demo = tmp_path / "demo"
    for name in ("hstain/monuseg_crop_hstain.tif", "distance/monuseg_crop_dist.tif",
                 "baseline/monuseg_crop_labels.tif", "scores.txt",
                 "run/mask_rcnn_paper_0001.h5", "predict/monuseg_crop_labels.tif",
                 "predict/monuseg_crop.geojson", "predict/monuseg_crop_nuclei.csv",
                 "predict/monuseg_crop_record.yaml", "predict/monuseg_crop_overlay.png",
                 "scores_model.txt"):
        assert (demo / name).is_file(), name
    assert "monuseg_crop" in (demo / "scores.txt").read_text()
    assert "monuseg_crop" in (demo / "scores_model.txt").read_text()
