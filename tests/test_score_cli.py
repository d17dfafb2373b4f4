"""`nucseg score` and `nucseg compare`: pairing, output formats, organ groups, bad input."""
import csv
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.stats import wilcoxon

from nucseg.cli import main
from nucseg.io import write_labels
from nucseg.metrics import METRIC_NAMES, score_pair

# real MoNuSeg ids, so the real metadata.csv applies: liver and breast (seen), bladder (unseen)
IMAGES = {
    "TCGA-18-5592-01Z-00-DX1": "edge_small_perturbed",
    "TCGA-A7-A13E-01Z-00-DX1": "edge_single_pixels",
    "TCGA-DK-A2I6-01A-01-TS1": "edge_one_pred_two_gt",
}


@pytest.fixture(scope="module")
def fixture_maps(fixtures_dir):
    with np.load(fixtures_dir / "metrics/pairs.npz", allow_pickle=False) as pairs:
        return {name: pairs[name] for name in pairs.files}


@pytest.fixture
def label_dirs(tmp_path, fixture_maps):
    """gt/<id>.tif and pred/<id>_labels.npy (pairing must see through the suffix)."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    pred_dir.mkdir()
    for image, case in IMAGES.items():
        write_labels(gt_dir / f"{image}.tif", fixture_maps[f"{case}_gt"])
        np.save(pred_dir / f"{image}_labels.npy", fixture_maps[f"{case}_pred"])
    return gt_dir, pred_dir


def _expected_rows(fixture_maps):
    return {image: score_pair(fixture_maps[f"{case}_gt"], fixture_maps[f"{case}_pred"])
            for image, case in IMAGES.items()}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_json_output_has_the_documented_shape_and_values(label_dirs, fixture_maps):
    gt_dir, pred_dir = label_dirs
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"per_image", "mean", "n_images"}
    assert data["n_images"] == 3
    expected = _expected_rows(fixture_maps)
    assert [row["image"] for row in data["per_image"]] == sorted(IMAGES)
    for row in data["per_image"]:
        assert row == {"image": row["image"], **expected[row["image"]]}
    for name in METRIC_NAMES:
        assert data["mean"][name] == pytest.approx(np.mean([r[name] for r in expected.values()]))


def test_csv_output_is_one_row_per_image_with_full_precision(label_dirs, fixture_maps, tmp_path):
    gt_dir, pred_dir = label_dirs
    out = tmp_path / "scores.csv"
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "csv", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    expected = _expected_rows(fixture_maps)
    assert [r["image"] for r in rows] == sorted(IMAGES)
    for row in rows:
        for name in METRIC_NAMES:
            assert float(row[name]) == expected[row["image"]][name]
        assert int(row["n_true"]) == expected[row["image"]]["n_true"]
    assert (tmp_path / "scores_record.yaml").is_file()


def test_table_output_lists_images_and_mean(label_dirs):
    gt_dir, pred_dir = label_dirs
    result = run("score", "--gt", gt_dir, "--pred", pred_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["image", *METRIC_NAMES, "n_true", "n_pred"]
    assert any(line.startswith("mean (3 images)") for line in lines)
    assert all(any(line.startswith(image) for line in lines) for image in IMAGES)


def test_metadata_adds_organ_means_and_seen_unseen_groups(label_dirs, fixture_maps, data_dir):
    gt_dir, pred_dir = label_dirs
    metadata = data_dir / "metadata.csv"
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json",
                 "--metadata", metadata, "--seen-organs", "liver,breast")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = _expected_rows(fixture_maps)
    assert set(data["per_organ"]) == {"liver", "breast", "bladder"}
    bladder = expected["TCGA-DK-A2I6-01A-01-TS1"]
    assert data["per_organ"]["bladder"]["mean"]["aji"] == bladder["aji"]
    assert data["groups"]["unseen"]["organs"] == ["bladder"]
    seen = data["groups"]["seen"]
    assert seen["organs"] == ["breast", "liver"] and seen["n_images"] == 2
    assert seen["mean"]["pq"] == pytest.approx(np.mean(
        [expected[i]["pq"] for i in ("TCGA-18-5592-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1")]))
    # with only liver seen, breast moves to the unseen group
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json",
                 "--metadata", metadata, "--seen-organs", "liver")
    assert json.loads(result.stdout)["groups"]["unseen"]["organs"] == ["bladder", "breast"]


def test_metadata_problems_are_clear_errors(label_dirs, tmp_path, data_dir):
    gt_dir, pred_dir = label_dirs
    partial = tmp_path / "meta.csv"
    partial.write_text("id,organ\nTCGA-18-5592-01Z-00-DX1,liver\n")
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--metadata", partial)
    assert result.exit_code == 2
    assert "meta.csv" in result.stderr and "TCGA-DK-A2I6-01A-01-TS1" in result.stderr
    metadata = data_dir / "metadata.csv"
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--metadata", metadata,
                 "--seen-organs", "livr")
    assert result.exit_code == 2 and "livr" in result.stderr


def test_prediction_directory_with_overlays_is_read_for_its_label_maps(label_dirs):
    gt_dir, pred_dir = label_dirs
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(
        pred_dir / "TCGA-18-5592-01Z-00-DX1_overlay.png")
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == 3


def test_unpaired_files_are_an_error_listing_them(label_dirs):
    gt_dir, pred_dir = label_dirs
    (pred_dir / "TCGA-18-5592-01Z-00-DX1_labels.npy").rename(pred_dir / "stray_labels.npy")
    result = run("score", "--gt", gt_dir, "--pred", pred_dir)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unpaired label maps")
    assert "TCGA-18-5592-01Z-00-DX1.tif" in result.stderr
    assert "stray_labels.npy" in result.stderr
    assert result.stdout == ""


def test_bad_label_file_is_one_error_line_and_nothing_written(label_dirs, tmp_path):
    gt_dir, pred_dir = label_dirs
    bad = pred_dir / "TCGA-A7-A13E-01Z-00-DX1_labels.npy"
    bad.write_bytes(b"not a numpy file")
    out = tmp_path / "scores.json"
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json", "-o", out)
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert not out.exists() and not list(tmp_path.glob("scores*"))


def test_size_mismatch_names_the_prediction(tmp_path):
    write_labels(tmp_path / "a.tif", np.ones((8, 8), np.uint16))
    np.save(tmp_path / "a_pred.npy", np.ones((8, 9), np.int32))
    result = run("score", "--gt", tmp_path / "a.tif", "--pred", tmp_path / "a_pred.npy")
    assert result.exit_code != 0
    assert "a_pred.npy" in result.stderr and "differs" in result.stderr


def _write_nuclei_table(path, scores: dict):
    with open(path, "w", newline="") as fh:
        fh.write("id,centroid_x,score\n")
        fh.writelines(f"{i},1.5,{v}\n" for i, v in scores.items())


def test_min_score_drops_weak_nuclei_before_scoring(label_dirs, fixture_maps):
    """--min-score T scores the map as if predicted with threshold T (>= T kept)."""
    gt_dir, pred_dir = label_dirs
    expected = {}
    for image, case in IMAGES.items():
        pred = fixture_maps[f"{case}_pred"]
        ids = [int(i) for i in np.unique(pred) if i]
        scores = {i: (0.9 if k % 2 == 0 else 0.5) for k, i in enumerate(ids)}
        _write_nuclei_table(pred_dir / f"{image}_nuclei.csv", scores)
        weak = [i for i, v in scores.items() if v < 0.6]
        kept = np.where(np.isin(pred, weak), 0, pred)
        expected[image] = score_pair(fixture_maps[f"{case}_gt"], kept)
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json",
                 "--min-score", "0.6")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["per_image"]
    assert {row.pop("image"): row for row in rows} == expected
    assert expected != _expected_rows(fixture_maps)     # the filter changed something
    at_half = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json",
                  "--min-score", "0.5")           # >= keeps everything
    plain = run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json")
    assert json.loads(at_half.stdout)["mean"] == json.loads(plain.stdout)["mean"]


def test_min_score_without_nuclei_table_names_the_missing_file(label_dirs):
    gt_dir, pred_dir = label_dirs
    result = run("score", "--gt", gt_dir, "--pred", pred_dir, "--min-score", "0.5")
    assert result.exit_code != 0
    assert "_nuclei.csv" in result.stderr and "missing" in result.stderr


def _write_scores(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(rows)


def test_compare_pairs_rows_by_image_and_reports_wilcoxon(tmp_path):
    rng = np.random.default_rng(0)
    a_vals = rng.uniform(0.4, 0.7, size=(12, len(METRIC_NAMES)))
    b_vals = a_vals + rng.normal(0.05, 0.03, size=a_vals.shape)  # B is better
    images = [f"img{i:02d}" for i in range(12)]
    _write_scores(tmp_path / "a.csv", [dict(image=im, **dict(zip(METRIC_NAMES, v)))
                                       for im, v in zip(images, a_vals)])
    order = rng.permutation(12)  # B lists the images in another order
    _write_scores(tmp_path / "b.csv", [dict(image=images[i], **dict(zip(METRIC_NAMES, b_vals[i])))
                                       for i in order])
    result = run("compare", tmp_path / "a.csv", tmp_path / "b.csv", "--format", "json")
    assert result.exit_code == 0, result.output
    results = {r["metric"]: r for r in json.loads(result.stdout)["results"]}
    assert set(results) == set(METRIC_NAMES)
    for k, name in enumerate(METRIC_NAMES):
        diff = b_vals[:, k] - a_vals[:, k]
        assert results[name]["n"] == 12
        assert results[name]["median_diff"] == pytest.approx(np.median(diff))
        expected_p = wilcoxon(b_vals[:, k], a_vals[:, k]).pvalue
        assert results[name]["p_value"] == pytest.approx(expected_p)
        assert results[name]["p_value"] < 0.05
    table = run("compare", tmp_path / "a.csv", tmp_path / "b.csv")
    assert table.exit_code == 0 and "aji_plus" in table.stdout and "p-value" in table.stdout


def test_compare_refuses_tables_of_different_images(tmp_path):
    _write_scores(tmp_path / "a.csv", [{"image": "x", "aji": 0.5}, {"image": "y", "aji": 0.6}])
    _write_scores(tmp_path / "b.csv", [{"image": "x", "aji": 0.5}, {"image": "z", "aji": 0.6}])
    result = run("compare", tmp_path / "a.csv", tmp_path / "b.csv")
    assert result.exit_code == 2
    assert "only in" in result.stderr and "y" in result.stderr and "z" in result.stderr


def test_score_then_compare_round_trip(label_dirs, tmp_path):
    gt_dir, pred_dir = label_dirs
    run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "csv", "-o", tmp_path / "a.csv")
    run("score", "--gt", gt_dir, "--pred", pred_dir, "--format", "json", "-o", tmp_path / "a.json")
    result = run("compare", tmp_path / "a.csv", tmp_path / "a.json", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["metric"] for r in rows] == list(METRIC_NAMES)
    assert all(float(r["median_diff"]) == 0.0 and float(r["p_value"]) == 1.0 for r in rows)


def test_installed_command_scores_a_directory(label_dirs, fixture_maps):
    exe = shutil.which("nucseg")
    assert exe, "the nucseg console command is not installed (pip install -e .)"
    gt_dir, pred_dir = label_dirs
    proc = subprocess.run([exe, "score", "--gt", str(gt_dir), "--pred", str(pred_dir),
                           "--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    expected = _expected_rows(fixture_maps)
    assert {r["image"]: r["aji"] for r in data["per_image"]} == {
        image: row["aji"] for image, row in expected.items()}
