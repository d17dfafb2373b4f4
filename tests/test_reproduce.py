"""bin/reproduce-paper at CI scale: the whole protocol on 7 synthetic 128 px tiles, 2 runs,
3 configurations, 2 training steps, with tests/tiny_backbone.py in place of the ResNet (as in
tests/test_train.py; monkeypatched, which is why the protocol runs nucseg in-process).

The tables must hold exactly what `nucseg score` and `nucseg compare` give for the same
predictions (recomputed here with the library calls behind those commands), a rerun with
--resume must train nothing, and rows needing a missing PanNuke folder say "not run".
"""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import write_square_nuclei  # noqa: E402
from tiny_backbone import build_tiny_backbone  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ORGANS = {"tr0": "liver", "tr1": "liver", "tr2": "kidney", "tr3": "kidney",
          "te0": "liver", "te1": "kidney", "te2": "brain"}
SEEN = ["kidney", "liver"]
METRICS = ("aji", "pq", "dq", "sq", "dice")
TINY = dict(TRAIN_ROIS_PER_IMAGE=24, ROI_POSITIVE_RATIO=0.5, MASK_POOL_SIZE=7,
            MASK_SHAPE=[14, 14], TOP_DOWN_PYRAMID_SIZE=64, FPN_CLASSIF_FC_LAYERS_SIZE=128,
            POST_NMS_ROIS_TRAINING=64, PRE_NMS_LIMIT=300, MAX_GT_INSTANCES=100, NAME="tiny",
            IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, POST_NMS_ROIS_INFERENCE=100,
            DETECTION_MAX_INSTANCES=100)
RUN_ROWS = {"standard": "standard", "plus": "plus", "tta": "plus_tta"}   # row -> predictions


def write_plan(root: Path, **changes) -> Path:
    for name in ORGANS:
        part = "train" if name.startswith("tr") else "test"
        write_square_nuclei(root / part, name, size=128, count=10, side=12,
                            seed=sorted(ORGANS).index(name))
    (root / "metadata.csv").write_text(
        "id,organ\n" + "".join(f"{k},{v}\n" for k, v in ORGANS.items()))
    plan = {"seeds": [0, 1],
            "configurations": ["standard", "plus", "tta", "pannuke", "ensemble_tta_pannuke",
                               "input_rgb_h"],
            "budget": {"epochs": [0, 1, 0, 0], "steps_per_epoch": 2, "unet_epochs": 1},
            "data": {"train_images": "train/im", "train_labels": "train/lab",
                     "test_images": "test/im", "test_labels": "test/lab",
                     "metadata": "metadata.csv", "pannuke": "PanNuke/Fold 1"},   # absent
            "model": {"config": "paper", "overrides": TINY},
            "options": {"train": ["--workers", "1"], "predict": ["--min-confidence", "0"],
                        "unet": ["--width", "4", "--checkpoint-every", "0"]}}
    plan.update(changes)
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One reproduction, then the same command with --resume (training forbidden)."""
    import nucseg.mrcnn.backbone
    import nucseg.mrcnn.model
    import nucseg.train
    from nucseg.experiments import reproduce

    root = tmp_path_factory.mktemp("reproduce")
    plan, out = write_plan(root), root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nucseg.mrcnn.backbone, "build_resnet_backbone", build_tiny_backbone)
        patch.setattr(nucseg.mrcnn.model, "build_resnet_backbone", build_tiny_backbone)
        first = reproduce(plan, out)
        checkpoints = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}

        def no_training(*args, **kwargs):
            raise AssertionError("--resume trained a model")

        patch.setattr(nucseg.train, "train_run", no_training)
        again = reproduce(plan, out, resume=True)
    return {"root": root, "plan": plan, "out": out, "first": first, "again": again,
            "checkpoints": checkpoints}


def rescore(done) -> dict:
    """(row, seed) -> what `nucseg score` computes for that run's predictions."""
    from nucseg.scoring import score_directories

    root, out = done["root"], done["out"]
    return {(row, seed): score_directories(root / "test" / "lab",
                                           out / "predictions" / key / f"seed{seed}",
                                           metadata=root / "metadata.csv", seen_organs=SEEN,
                                           progress=False)[0]
            for row, key in RUN_ROWS.items() for seed in (0, 1)}


def cell(values) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table_row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_tables_plot_and_records_exist(done):
    out, first = done["out"], done["first"]
    assert first["exit_status"] == 0
    for name in ("table1.md", "table2.md", "paper_comparison.md", "wilcoxon.md",
                 "results.json", "recipe.sh", "plan.yaml"):
        assert (out / name).is_file(), name
    assert (out / "figure6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table1.md").read_text()
    assert "epochs per stage 0,1,0,0 (paper schedule), 2 steps per epoch" in table
    assert "tiny_backbone.build_tiny_backbone" in table and "NOT a ResNet" in table
    assert "COCO weights: no" in table and "PanNuke weights: no" in table
    for row in ("Standard Mask R-CNN", "Mask R-CNN+", "+ TTA"):
        assert "| 2 |" in table_row(table, row)
    recipe = (out / "recipe.sh").read_text()
    assert "nucseg train --images" in recipe and "nucseg compare" in recipe
    # every step's record stays beside its output; TTA reused the single models
    assert yaml.safe_load((out / "models/plus/seed0.step.yaml").read_text())["status"] == \
        "finished"
    assert (out / "scores/plus_tta/seed1_record.yaml").is_file()
    assert sorted(p.name for p in (out / "models").iterdir() if p.is_dir()) == [
        "plus", "rgb_h", "standard"]
    first_run = recipe.split("# --- bin/reproduce-paper")[1]
    assert first_run.count("# reused: nucseg train") == 2 and "# done before" not in first_run


def test_missing_pannuke_and_unsupported_inputs_are_marked_not_run(done):
    table = (done["out"] / "table1.md").read_text()
    for row in ("+ PanNuke", "+ Ensemble + TTA + PanNuke"):
        assert "| not run: PanNuke folder" in table_row(table, row)
    assert "not run" not in table_row(table, "RGB + hematoxylin")    # 4 channels: --inputs
    assert "(not run: PanNuke folder" in (done["out"] / "paper_comparison.md").read_text()
    assert not (done["out"] / "pannuke").exists()


def test_table_numbers_equal_nucseg_score(done):
    scores = rescore(done)
    results = json.loads((done["out"] / "results.json").read_text())["rows"]
    table1 = (done["out"] / "table1.md").read_text()
    table2 = (done["out"] / "table2.md").read_text()
    paper = (done["out"] / "paper_comparison.md").read_text()
    for row in RUN_ROWS:
        runs = [scores[(row, seed)] for seed in (0, 1)]
        for seed, score in zip((0, 1), runs):
            assert results[row]["runs"][str(seed)]["mean"] == {m: score["mean"][m]
                                                               for m in METRICS}
        label = results[row]["label"]
        assert table_row(table1, label) == f"| {label} | 2 | " + " | ".join(
            cell([r["mean"][m] for r in runs]) for m in METRICS) + " |"
        ours = statistics.fmean(r["mean"]["aji"] for r in runs)
        assert f"| {100 * ours:.2f} / " in table_row(paper, label)
        sections = table2.split("## ")
        for group, text in (("seen", sections[1]), ("unseen", sections[2])):
            assert table_row(text, label) == f"| {label} | 2 | " + " | ".join(
                cell([r["groups"][group]["mean"][m] for r in runs]) for m in METRICS) + " |"
    assert any(scores[(row, s)]["mean"]["aji"] for row in RUN_ROWS for s in (0, 1))


def test_wilcoxon_equals_nucseg_compare(done):
    from nucseg.compare import compare_tables

    scores = rescore(done)
    summary = done["first"]
    results = summary["rows"]
    best = max((results[k]["mean"]["aji"], k) for k in ("plus", "tta"))[1]
    comparison = summary["comparison"]
    assert (comparison["a"], comparison["b"]) == ("standard", best)

    def per_image(result):
        return {r["image"]: r for r in result["per_image"]}

    for seed in (0, 1):
        expected = compare_tables(per_image(scores[("standard", seed)]),
                                  per_image(scores[(best, seed)]))
        got = comparison["results"]["per_seed"][seed]
        assert {r["metric"]: r["p_value"] for r in expected if r["metric"] in METRICS} == \
            {m: got[m]["p_value"] for m in METRICS}
    means = []
    for row in ("standard", best):
        tables = [per_image(scores[(row, s)]) for s in (0, 1)]
        means.append({i: {m: statistics.fmean(t[i][m] for t in tables) for m in METRICS}
                      for i in tables[0]})
    expected = {r["metric"]: r for r in compare_tables(*means)}
    text = (done["out"] / "wilcoxon.md").read_text()
    for metric, label in zip(METRICS, ("AJI", "PQ", "DQ", "SQ", "Dice")):
        got = comparison["results"]["mean_over_seeds"][metric]
        assert got["p_value"] == pytest.approx(expected[metric]["p_value"], rel=1e-12)
        assert got["median_diff"] == pytest.approx(expected[metric]["median_diff"], abs=1e-12)
        line = table_row(text, label)
        assert line.startswith(f"| {label} | 3 | {100 * expected[metric]['mean_a']:.2f} | "
                               f"{100 * expected[metric]['mean_b']:.2f} | ")
        assert f"| {expected[metric]['p_value']:.3g} |" in line


def test_resume_trains_nothing_and_keeps_the_tables(done):
    again, out = done["again"], done["out"]
    assert again["steps"]["ran"] == 0 and again["exit_status"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} == done["checkpoints"]
    assert {k: r["status"] for k, r in again["rows"].items()} == \
        {k: r["status"] for k, r in done["first"]["rows"].items()}
    assert again["rows"]["plus"]["mean"] == done["first"]["rows"]["plus"]["mean"]
    assert "# done before: nucseg train --images" in (out / "recipe.sh").read_text()


def test_reused_outdir_needs_resume_and_the_same_budget(done, tmp_path):
    from nucseg.experiments import reproduce

    with pytest.raises(ValueError, match="--resume"):
        reproduce(done["plan"], done["out"])
    changed = tmp_path / "plan.yaml"
    plan = yaml.safe_load(done["plan"].read_text())
    plan["budget"]["steps_per_epoch"] = 3
    for key in ("train_images", "train_labels", "test_images", "test_labels", "metadata"):
        plan["data"][key] = str(done["root"] / plan["data"][key])
    changed.write_text(yaml.safe_dump(plan))
    with pytest.raises(ValueError, match="budget"):
        reproduce(changed, done["out"], resume=True)


def test_example_plan_is_valid_and_bin_script_runs(tmp_path):
    from nucseg.experiments import ROWS, load_plan

    plan = load_plan(REPO / "examples" / "paper_plan.yaml")
    assert plan.rows == list(ROWS) and len(plan.seeds) == 5 and plan.epochs == [5, 35, 5, 5]
    script = REPO / "bin" / "reproduce-paper"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "--resume" in shown.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: 2\nbudjet: {epochs: [1, 1, 1, 1]}\n")
    failed = subprocess.run([sys.executable, str(script), str(bad), "-o", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.strip().startswith("error:") and "budjet" in failed.stderr
    assert not (tmp_path / "o").exists()
    imports = subprocess.run([sys.executable, "-c", "import sys, nucseg, nucseg.cli, "
                              "nucseg.experiments.command; print('matplotlib' in sys.modules)"],
                             capture_output=True, text=True, timeout=60)
    assert imports.stdout.strip() == "False"


def test_dry_run_of_a_split_plan_writes_nothing_and_a_real_run_may_follow(tmp_path, capsys):
    """`--dry-run` prints the recipe of a plan whose data is split by a metadata column
    without linking the split folders, so the same OUTDIR is still free for the real run."""
    from nucseg.experiments import reproduce
    from nucseg.experiments.command import check_state
    from nucseg.experiments.plan import load_plan

    for name in ORGANS:
        write_square_nuclei(tmp_path / "all", name, size=128, count=10, side=12, seed=1)
    (tmp_path / "metadata.csv").write_text("id,organ,split\n" + "".join(
        f"{k},{v},{'train' if k.startswith('tr') else 'test'}\n" for k, v in ORGANS.items()))
    plan = write_plan(tmp_path / "unused", data={
        "images": str(tmp_path / "all" / "im"), "labels": str(tmp_path / "all" / "lab"),
        "metadata": str(tmp_path / "metadata.csv"),
        "split": {"column": "split", "train": "train", "test": "test"}},
        configurations=["standard"])
    out = tmp_path / "out"
    lines = []
    assert reproduce(plan, out, dry_run=True, echo=lines.append)["exit_status"] == 0
    text = "\n".join(lines)
    assert "4 train tiles" in text and "3 test tiles" in text
    assert f"nucseg train --images {out / 'data' / 'train' / 'images'}" in text
    assert not out.exists()
    check_state(load_plan(plan), out, resume=False)        # the real run is not refused
