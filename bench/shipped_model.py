"""Tune and measure a model for shipping: thresholds chosen on its training tiles, its scores
beside the classical baseline, and what `nucseg predict` costs per tile.

    python bench/shipped_model.py --model RUN_OR_NAME --unet UNET_DIR \\
        --images data/all/images --labels data/all/labels --out eval/ [--tta] \\
        [--write-thresholds thresholds.yaml]

Steps (all through nucseg's own functions, as the commands run them):
1. distance maps of the tiles from the U-Net (`--distance-dir` skips this);
2. one pass at the lowest candidate confidence, members kept; `nucseg score --min-score T` for
   each candidate T (dropping weaker nuclei equals detecting at T for one model); then the
   one-pass member merged again at other mask thresholds (at the chosen T);
3. with `--tta`: the four TTA members of every tile (of `--tta-images`, a subset of the
   training tiles to save time, when given), merged at each (min_members,
   mask_threshold) candidate, at the chosen T;
4. the classical baseline (`nucseg baseline`) on the same tiles;
5. the table: AJI, PQ, DQ, SQ (means over tiles) per setting, the chosen ones marked, and the
   per-tile rows of the chosen setting and the baseline.
6. with `--test-images/--test-labels`: those held-out tiles predicted with the settings chosen
   on the training tiles (one pass, and TTA), beside the baseline.
The settings are chosen on the --images tiles: give training tiles, never the tiles a reported
figure comes from. Exit 0.
"""
from __future__ import annotations

import argparse
import resource
from dataclasses import replace
import sys
import time
from pathlib import Path

METRICS = ("aji", "pq", "dq", "sq")


def mean_line(name: str, result: dict, mark: str = "") -> str:
    mean = result["mean"]
    return f"{name:44s} " + " ".join(f"{mean[m]:.3f}" for m in METRICS) + f"  {mark}"


def per_tile(result: dict) -> dict:
    return {row["image"]: row for row in result["per_image"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="run directory, .h5 or shipped name")
    parser.add_argument("--unet", help="distance U-Net directory (5-channel models)")
    parser.add_argument("--distance-dir", help="existing <stem>_dist.tif maps instead")
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--min-scores", default="0.3,0.4,0.5,0.6,0.7,0.8")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--members", default="1,2,3")
    parser.add_argument("--mask-thresholds", default="0.4,0.5,0.7")
    parser.add_argument("--one-pass-mask-thresholds", default="0.3,0.4,0.5,0.6",
                        help="mask thresholds tried on the one-pass member (0.5: Matterport's)")
    parser.add_argument("--tta-images", help="choose the TTA settings on these training tiles "
                                             "(e.g. a subset, to save time; default --images)")
    parser.add_argument("--tta-labels", help="their labels (default --labels)")
    parser.add_argument("--write-thresholds", help="write the chosen settings to this YAML")
    parser.add_argument("--test-images", help="held-out tiles: scored with the settings chosen "
                                              "above (one pass and TTA) beside the baseline")
    parser.add_argument("--test-labels")
    parser.add_argument("--test-distance-dir", help="<stem>_dist.tif maps of the test tiles "
                                                    "(default: from --unet)")
    args = parser.parse_args()

    import yaml

    from nucseg.baseline import baseline_file
    from nucseg.prediction.channels import ChannelSources
    from nucseg.io import expand_inputs
    from nucseg.prediction.merge_saved import merge_from_paths
    from nucseg.prediction.predict import PredictOptions, predict_from_paths
    from nucseg.scoring import score_directories

    out = Path(args.out)
    thresholds = sorted(float(t) for t in args.min_scores.split(","))
    t0 = time.perf_counter()
    dist_dir = args.distance_dir
    if dist_dir is None and args.unet:
        from nucseg.unet import load_unet
        from nucseg.unet.predict import predict_file

        dist_dir = out / "dist"
        unet = load_unet(args.unet)
        for image in expand_inputs([args.images]):
            if not (dist_dir / f"{image.stem}_dist.tif").is_file():
                predict_file(image, unet, dist_dir, 1024, 64)
    print(f"distance maps: {time.perf_counter() - t0:.0f} s", flush=True)

    sources = ChannelSources(distance_dir=Path(dist_dir) if dist_dir else None)
    one = out / "one_pass"
    t0 = time.perf_counter()
    predict_from_paths([args.images], [args.model], None, one,
                       PredictOptions(progress=False, resume=True, keep_members=True), sources,
                       {"DETECTION_MIN_CONFIDENCE": thresholds[0]}, log=lambda m: None)
    seconds_one = time.perf_counter() - t0
    rows = {}
    for t in thresholds:
        rows[("one pass", t)], _ = score_directories(args.labels, one, progress=False,
                                                     min_score=t)
    best_t = max(thresholds, key=lambda t: (rows[("one pass", t)]["mean"]["aji"], t))
    print(f"one pass: {seconds_one:.0f} s for the tiles; chosen min score {best_t}")
    # the one-pass member's mask threshold, at that score: merged again from its member files
    one_members = sorted(one.glob("*_member00.npz"))
    best_one_mask = 0.5
    for mask in (float(v) for v in args.one_pass_mask_thresholds.split(",")):
        if mask == 0.5:
            rows[("one pass mask", mask)] = rows[("one pass", best_t)]
            continue
        merged = out / f"one_pass_mask_{mask}"
        merge_from_paths(one_members, merged, PredictOptions(mask_threshold=mask,
                                                             progress=False),
                         args.images, sources)
        rows[("one pass mask", mask)], _ = score_directories(args.labels, merged,
                                                             progress=False, min_score=best_t)
    best_one_mask = max((key[1] for key in rows if key[0] == "one pass mask"),
                        key=lambda m: rows[("one pass mask", m)]["mean"]["aji"],
                        default=0.5)

    best_tta = None
    if args.tta:
        members_dir = out / "tta_members"
        tta_images, tta_labels = args.tta_images or args.images, args.tta_labels or args.labels
        predict_from_paths([tta_images], [args.model], None, members_dir,
                           PredictOptions(tta=True, keep_members=True, progress=False,
                                          resume=True), sources,
                           {"DETECTION_MIN_CONFIDENCE": best_t}, log=lambda m: None)
        member_files = sorted(members_dir.glob("*_member*.npz"))
        print(f"TTA rows below: means over the {len(member_files) // 4} tiles of {tta_images}")
        for k in (int(v) for v in args.members.split(",")):
            for mask in (float(v) for v in args.mask_thresholds.split(",")):
                merged = out / f"tta_{k}_{mask}"
                merge_from_paths(member_files, merged, PredictOptions(
                    tta=True, min_members=k, mask_threshold=mask, progress=False),
                    tta_images, sources)
                rows[("tta", k, mask)], _ = score_directories(tta_labels, merged,
                                                              progress=False)
        best_tta = max((key for key in rows if key[0] == "tta"),
                       key=lambda key: rows[key]["mean"]["aji"])

    base_dir = out / "baseline"
    for image in expand_inputs([args.images]):
        if not (base_dir / f"{image.stem}_labels.tif").is_file():
            baseline_file(image, base_dir)
    baseline, _ = score_directories(args.labels, base_dir, progress=False)

    print(f"\n{'setting (means over tiles)':44s} AJI   PQ    DQ    SQ")
    for key, result in rows.items():
        name = {"one pass": f"one pass, min score {key[1]}",
                "one pass mask": f"one pass, min score {best_t}, mask threshold {key[1]}",
                }.get(key[0]) or f"TTA, min members {key[1]}, mask threshold {key[2]}"
        chosen = key in (("one pass", best_t), ("one pass mask", best_one_mask), best_tta)
        print(mean_line(name, result, "<- chosen" if chosen else ""))
    print(mean_line("classical baseline (nucseg baseline)", baseline))
    chosen = rows[("one pass", best_t)]
    print(f"\nper tile, one pass at {best_t} | baseline:  AJI PQ DQ SQ")
    base_rows = per_tile(baseline)
    for image, row in sorted(per_tile(chosen).items()):
        other = base_rows[image]
        print(f"  {image}: " + " ".join(f"{row[m]:.3f}" for m in METRICS) + " | "
              + " ".join(f"{other[m]:.3f}" for m in METRICS))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.write_thresholds:
        settings = {"min_confidence": best_t, "mask_threshold_one_pass": best_one_mask}
        if best_tta:
            settings.update(min_members=best_tta[1], mask_threshold=best_tta[2])
        Path(args.write_thresholds).write_text(yaml.safe_dump(settings))
        print(f"wrote {args.write_thresholds}: {settings}")
    if args.test_images:
        held_out(args, out, best_t, best_one_mask, best_tta)
    return 0


def held_out(args, out: Path, min_score: float, one_mask: float, best_tta) -> None:
    """The held-out tiles with the settings chosen on the training tiles: one pass, TTA and
    the baseline, means and per tile."""
    from nucseg.baseline import baseline_file
    from nucseg.io import expand_inputs
    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.predict import PredictOptions, predict_from_paths
    from nucseg.scoring import score_directories

    dist_dir = args.test_distance_dir
    if dist_dir is None and args.unet:
        from nucseg.unet import load_unet
        from nucseg.unet.predict import predict_file

        dist_dir, unet = out / "test_dist", load_unet(args.unet)
        for image in expand_inputs([args.test_images]):
            if not (dist_dir / f"{image.stem}_dist.tif").is_file():
                predict_file(image, unet, dist_dir, 1024, 64)
    sources = ChannelSources(distance_dir=Path(dist_dir) if dist_dir else None)
    overrides = {"DETECTION_MIN_CONFIDENCE": min_score}
    runs = {f"one pass (min score {min_score}, mask {one_mask})":
            (out / "test_one_pass", PredictOptions(mask_threshold=one_mask))}
    if best_tta:
        runs[f"TTA (min members {best_tta[1]}, mask {best_tta[2]})"] = (
            out / "test_tta", PredictOptions(tta=True, min_members=best_tta[1],
                                             mask_threshold=best_tta[2]))
    results = {}
    for name, (folder, opts) in runs.items():
        t0 = time.perf_counter()
        predict_from_paths([args.test_images], [args.model], None, folder,
                           replace(opts, progress=False, resume=True), sources, overrides,
                           log=lambda m: None)
        print(f"held out, {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        results[name], _ = score_directories(args.test_labels, folder, progress=False)
    base_dir = out / "test_baseline"
    for image in expand_inputs([args.test_images]):
        if not (base_dir / f"{image.stem}_labels.tif").is_file():
            baseline_file(image, base_dir)
    results["classical baseline (nucseg baseline)"], _ = score_directories(
        args.test_labels, base_dir, progress=False)
    print(f"\nHELD-OUT tiles, settings chosen on the training tiles {'':8s} AJI   PQ    DQ    SQ")
    for name, result in results.items():
        print(mean_line(name, result))
    names = list(results)
    print("\nper held-out tile: " + " | ".join(names) + "  (AJI PQ DQ SQ each)")
    tables = [per_tile(results[n]) for n in names]
    for image in sorted(tables[0]):
        print(f"  {image}: " + " | ".join(" ".join(f"{t[image][m]:.3f}" for m in METRICS)
                                          for t in tables))


if __name__ == "__main__":
    sys.exit(main())
