"""The rank-6 method's two models on the Kumar split: the multi-task U-Net + watershed alone,
Mask R-CNN+ alone, and their MASK-NMS ensemble; AJI, PQ, DQ, SQ and the recall of small
(area < 113 px) and elongated (eccentricity > 0.95) nuclei, which the U-Net is there to catch.

    python bench/multitask_kumar.py --train-images k/train/images --train-labels k/train/labels \\
        --test-images k/test/images --test-labels k/test/labels \\
        --mrcnn runs/k_fixed --mrcnn-distance-dir dist16_k_test --out bench_mt/ \\
        --mrcnn-thresholds k_thresholds_one.yaml \\
        [--multitask RUN | --minutes 150 --backbone resnet50 --init-backbone CKPT.h5]

Steps, each a nucseg command (logged as the line that does the same) or library call:
1. `nucseg multitask train` on the training tiles for `--minutes` of wall clock (the budget of
   the Mask R-CNN+ run it is compared with), unless `--multitask RUN` is given;
2. `nucseg multitask tune` on the training tiles: the watershed thresholds (grid over
   foreground and interior thresholds, best mean AJI), never chosen on the test tiles;
3. `nucseg multitask predict` of the test tiles with them: labels and member files;
4. `nucseg predict` of the Mask R-CNN+ model on the test tiles, members kept, with the
   settings chosen on the training tiles (`--mrcnn-thresholds`; else the run's defaults);
5. `nucseg merge --merge mask-nms --min-members 1` of both members, and of the Mask R-CNN+
   member alone (the control: the merge's --min-area without the U-Net);
   with `--ensemble-min-confidences`, also the ensemble whose U-Net member keeps only nuclei
   of at least the mean foreground probability chosen on the training tiles (best mean AJI of
   the ensemble there; needs `--mrcnn-train-members` or `--mrcnn-train-distance-dir`);
6. the table (means over test tiles; recalls pooled over tiles), the U-Net's training step time
   and each model's predict seconds per tile (from the records). Exit 0.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("aji", "pq", "dq", "sq")


def run(*args) -> None:
    """A nucseg command, echoed as its shell line."""
    line = ["nucseg", *map(str, args)]
    print("$", " ".join(line), flush=True)
    subprocess.run([sys.executable, "-m", "nucseg", *map(str, args)], check=True)


def label_files(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.name[:-len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}"))}


def truth_files(folder: Path) -> dict[str, Path]:
    from nucseg.io import LABEL_EXTENSIONS

    found = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in LABEL_EXTENSIONS:
            found[p.stem.removesuffix("_labels")] = p
    return found


def score(truth: dict, predicted: dict) -> dict:
    """Mean AJI/PQ/DQ/SQ over the tiles and pooled small/elongated recall."""
    from nucseg.io import read_labels
    from nucseg.metrics import recall_by_shape, score_pair

    rows, pooled = [], {}
    for stem, gt_path in truth.items():
        gt, pred = read_labels(gt_path), read_labels(predicted[stem])
        rows.append(score_pair(gt, pred))
        for kind, counts in recall_by_shape(gt, pred).items():
            total = pooled.setdefault(kind, {"found": 0, "total": 0})
            total["found"] += counts["found"]
            total["total"] += counts["total"]
    result = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
    result.update({f"recall_{k}": v["found"] / max(v["total"], 1) for k, v in pooled.items()})
    result["counts"] = pooled
    result["n_pred"] = float(np.mean([r["n_pred"] for r in rows]))
    return result


def seconds_per_tile(folder: Path) -> float:
    import yaml

    times = [yaml.safe_load(p.read_text())["timings_seconds"]["total"]
             for p in sorted(folder.glob("*_record.yaml"))]
    return float(np.median(times)) if times else float("nan")


def confident_members(source: Path, target: Path, min_score: float) -> Path:
    """Copies of the member files in source keeping detections scoring >= min_score: for the
    U-Net what `nucseg multitask predict --min-confidence` keeps (scores are the mean
    foreground probability), for Mask R-CNN+ what detecting at that confidence keeps."""
    from nucseg.prediction.members import load_member, save_member

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.npz")):
        member = load_member(path)
        save_member(target / path.name, member.subset(member.scores >= min_score))
    return target


def merge_members(mrcnn_dir: Path, unet_dir: Path | None, out: Path, min_area: int) -> Path:
    """`nucseg merge --merge mask-nms --min-members 1`; without unet_dir the Mask R-CNN+ member
    alone through the same merge (the control: what the merge's --min-area does by itself)."""
    unet = sorted(unet_dir.glob("*.npz")) if unet_dir else []
    run("merge", *sorted(mrcnn_dir.glob("*_member00.npz")), *unet,
        "--merge", "mask-nms", "--min-members", 1, "--min-area", min_area,
        "-o", out, "--no-csv", "--no-geojson")
    return out


def choose_min_confidence(args, mt: Path, out: Path, tuned: list, mrcnn_min_confidence: float,
                          min_area: int, values: list[float]) -> float:
    """The U-Net member's min confidence giving the best mean ensemble AJI on the training
    tiles (both models predicted there as on the test tiles)."""
    run("multitask", "predict", args.train_images, "-m", mt, "-o", out / "mt_train",
        "--no-geojson", "--no-csv", "--keep-members", "--resume")
    if args.mrcnn_train_members:    # a pass at a lower confidence, cut here to the chosen one
        confident_members(Path(args.mrcnn_train_members), out / "mrcnn_train",
                          mrcnn_min_confidence)
    else:
        run("predict", args.train_images, "-m", args.mrcnn, "--distance-dir",
            args.mrcnn_train_distance_dir, *tuned, "--keep-members", "-o", out / "mrcnn_train",
            "--resume")
    truth = truth_files(Path(args.train_labels))
    aji = {}
    for value in values:
        kept = confident_members(out / "mt_train", out / f"mt_train_c{value:g}", value)
        merged = merge_members(out / "mrcnn_train", kept, out / f"ensemble_train_c{value:g}",
                               min_area)
        aji[value] = score(truth, label_files(merged, "_labels.tif"))["aji"]
        print(f"training tiles: U-Net min confidence {value:g}: ensemble mean AJI "
              f"{aji[value]:.3f}", flush=True)
    return max(values, key=lambda v: (round(aji[v], 4), -v))   # ties: keep more U-Net nuclei


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("train-images", "train-labels", "test-images", "test-labels"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--mrcnn", required=True, help="Mask R-CNN+ run directory or model")
    parser.add_argument("--mrcnn-distance-dir", help="<stem>_dist.tif maps of the test tiles")
    parser.add_argument("--distance-model", help="or: the distance U-Net for them")
    parser.add_argument("--multitask", help="a trained multi-task run (skips training)")
    parser.add_argument("--minutes", type=float, default=150.0)
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--init-backbone", help="Matterport-layout .h5 for the encoder, e.g. "
                                                "the Mask R-CNN+ checkpoint (same training "
                                                "tiles only)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--thresholds", default="0.4,0.5,0.6")
    parser.add_argument("--mrcnn-thresholds", help="YAML of the Mask R-CNN+ settings chosen on "
                        "the training tiles (bench/shipped_model.py --write-thresholds): "
                        "min_confidence, mask_threshold_one_pass")
    parser.add_argument("--ensemble-min-confidences",
                        help="e.g. 0,0.5,0.6,0.7: choose the U-Net member's min confidence "
                             "for the ensemble on the training tiles")
    parser.add_argument("--mrcnn-train-distance-dir",
                        help="<stem>_dist.tif maps of the training tiles (for the choice)")
    parser.add_argument("--mrcnn-train-members",
                        help="or: Mask R-CNN+ members of the training tiles from one pass at a "
                             "lower min confidence (bench/shipped_model.py's one_pass/), kept "
                             "here at the chosen one (the same as detecting at it)")
    args = parser.parse_args()
    if args.ensemble_min_confidences and not (args.mrcnn_train_distance_dir
                                              or args.mrcnn_train_members):
        parser.error("--ensemble-min-confidences needs --mrcnn-train-distance-dir or "
                     "--mrcnn-train-members")
    if args.mrcnn_train_members and not args.mrcnn_thresholds:
        parser.error("--mrcnn-train-members needs --mrcnn-thresholds (the confidence to cut at)")

    from nucseg.multitask.tune import watershed_options

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mt = Path(args.multitask) if args.multitask else out / "mt"
    if not args.multitask and not (mt / "multitask_train_record.yaml").is_file():
        run("multitask", "train", "--images", args.train_images, "--labels", args.train_labels,
            "-o", mt, "--backbone", args.backbone, "--crop-size", 256, "--epochs", 100000,
            "--max-minutes", args.minutes, "--no-progress",
            *(["--init-backbone", args.init_backbone] if args.init_backbone else []))
    if not (mt / "training_log.csv").is_file():
        print(f"{mt}: no epoch finished within --minutes {args.minutes}; give more time")
        return 0
    with open(mt / "training_log.csv") as fh:
        log = list(csv.DictReader(fh))
    test_truth = truth_files(Path(args.test_labels))
    print("watershed thresholds on the training tiles (nucseg multitask tune):")
    run("multitask", "tune", "-m", mt, "--images", args.train_images, "--labels",
        args.train_labels, "--values", args.thresholds, "--no-progress")
    chosen = watershed_options(mt, {})             # the tuned defaults multitask predict uses
    unet_dir = out / "mt_test"
    run("multitask", "predict", args.test_images, "-m", mt, "-o", unet_dir, "--no-geojson",
        "--no-csv", "--keep-members", "--resume")
    members = unet_dir
    distance = (["--distance-dir", args.mrcnn_distance_dir] if args.mrcnn_distance_dir
                else ["--distance-model", args.distance_model])
    tuned, mrcnn_min_confidence = [], 0.0
    if args.mrcnn_thresholds:
        import yaml

        settings = yaml.safe_load(Path(args.mrcnn_thresholds).read_text())
        tuned = ["--min-confidence", settings["min_confidence"],
                 "--mask-threshold", settings["mask_threshold_one_pass"]]
        mrcnn_min_confidence = float(settings["min_confidence"])
    t0 = time.perf_counter()
    run("predict", args.test_images, "-m", args.mrcnn, *distance, *tuned, "--keep-members",
        "-o", out / "mrcnn", "--resume")
    mrcnn_seconds = (time.perf_counter() - t0) / max(len(test_truth), 1)
    merge_members(out / "mrcnn", members, out / "ensemble", chosen.min_area)
    results = {
        "U-Net + watershed": score(test_truth, label_files(unet_dir, "_labels.tif")),
        "Mask R-CNN+": score(test_truth, label_files(out / "mrcnn", "_labels.tif")),
        "MASK-NMS ensemble": score(test_truth, label_files(out / "ensemble", "_labels.tif"))}
    alone = merge_members(out / "mrcnn", None, out / "mrcnn_merged_alone", chosen.min_area)
    results["Mask R-CNN+ merged alone"] = score(test_truth, label_files(alone, "_labels.tif"))
    if args.ensemble_min_confidences:
        values = [float(v) for v in args.ensemble_min_confidences.split(",")]
        best = choose_min_confidence(args, mt, out, tuned, mrcnn_min_confidence,
                                     chosen.min_area, values)
        kept = confident_members(unet_dir, out / f"mt_test_c{best:g}", best)
        merged = merge_members(out / "mrcnn", kept, out / f"ensemble_c{best:g}", chosen.min_area)
        results[f"ensemble, U-Net >= {best:g}"] = score(test_truth,
                                                         label_files(merged, "_labels.tif"))
    steps = [float(r["seconds"]) for r in log]
    print(f"\nmulti-task U-Net ({mt}): {len(log)} epochs, median epoch {np.median(steps):.1f} s;"
          f" thresholds chosen on the training tiles: foreground {chosen.t_foreground}, "
          f"interior {chosen.t_interior}")
    print(f"predict s/tile: U-Net {seconds_per_tile(out / 'mt_test'):.2f} (maps + watershed), "
          f"Mask R-CNN+ {mrcnn_seconds:.2f} (wall, incl. start-up)")
    print(f"\n{'test tiles: ' + str(len(test_truth)):24s} " + " ".join(
        f"{m:>6s}" for m in METRICS) + "  rec_all rec_small rec_elong  n_pred")
    for name, r in results.items():
        c = r["counts"]
        print(f"{name:24s} " + " ".join(f"{r[m]:6.3f}" for m in METRICS) +
              f"  {r['recall_all']:.3f}   {r['recall_small']:.3f} ({c['small']['total']})"
              f"  {r['recall_elongated']:.3f} ({c['elongated']['total']})  {r['n_pred']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
