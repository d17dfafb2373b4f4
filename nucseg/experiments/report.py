"""The tables of a reproduction, from the files `nucseg score` and `nucseg compare` wrote.

Every number is read from those files and only averaged over runs here (mean, and the sample
standard deviation over runs), so the tables can be checked against the commands' own outputs.
Each table starts with the budget: a CPU-scale table must never pass for the paper's.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from nucseg.experiments.plan import METRIC_LABELS, METRICS, PAPER_BEST, PAPER_P, ROWS

GROUPS = ("seen", "unseen")


def collect(protocol, seeds) -> dict:
    """Per row: status, the score files of the runs of `seeds`, per-run means, mean and std
    over runs (fractions, as `nucseg score` writes them)."""
    rows = {}
    for key in protocol.plan.rows:
        row, reason = ROWS[key], protocol.status[key]
        entry = {"label": row.label, "section": row.section, "status": reason or "run",
                 "runs": {}}
        files = [protocol.scores.get((key, s)) for s in seeds]
        if not reason and files and all(files):
            for seed, path in zip(seeds, files):
                data = json.loads(Path(path).read_text(encoding="utf-8"))
                groups = {g: {"n_images": v["n_images"], "organs": v.get("organs", []),
                              "mean": v["mean"]} for g, v in (data.get("groups") or {}).items()}
                entry["runs"][seed] = {"score_file": str(path), "n_images": data["n_images"],
                                       "mean": {m: data["mean"].get(m) for m in METRICS},
                                       "groups": groups}
            runs = list(entry["runs"].values())
            entry.update(summary([r["mean"] for r in runs]))
            for group in GROUPS:
                if all(group in r["groups"] and r["groups"][group]["n_images"] for r in runs):
                    first = runs[0]["groups"][group]
                    entry[group] = {"n_images": first["n_images"], "organs": first["organs"],
                                    **summary([r["groups"][group]["mean"] for r in runs])}
        elif not reason:
            entry["status"] = "incomplete: not every run was scored"
        rows[key] = entry
    return rows


def summary(means: list[dict]) -> dict:
    out = {"mean": {}, "std": {}}
    for metric in METRICS:
        values = [m[metric] for m in means if m.get(metric) is not None]
        out["mean"][metric] = statistics.fmean(values) if values else None
        out["std"][metric] = statistics.stdev(values) if len(values) > 1 else None
    return out


def best_row(rows: dict, baseline: str) -> str | None:
    """The Table 1 row with the highest mean AJI over runs, other than the baseline."""
    scored = [(r["mean"]["aji"], k) for k, r in rows.items()
              if k != baseline and r["status"] == "run" and r["section"] == "table1"
              and r["mean"]["aji"] is not None]
    return max(scored)[1] if scored else None


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def cell(entry: dict, metric: str, where: dict | None = None) -> str:
    where = where if where is not None else entry
    mean, std = where["mean"][metric], where["std"][metric]
    return percent(mean) if std is None else f"{percent(mean)} ± {percent(std)}"


def p_text(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def budget_lines(protocol) -> list[str]:
    """What this reproduction spent: its table's first lines."""
    plan, data = protocol.plan, protocol.data
    seeds = ", ".join(map(str, plan.seeds))
    steps = plan.steps or "STEPS_PER_EPOCH of the config (60 for paper)"
    lines = [
        f"- runs: {len(plan.seeds)} per configuration (seeds {seeds}); test images: "
        f"{len(protocol.test_stems)}; scored with `nucseg score` (mean over images, then mean ± "
        "sample std over runs, in %)",
        f"- training: epochs per stage {','.join(map(str, plan.epochs))} (paper schedule), "
        f"{steps} steps per epoch; standard Mask R-CNN: Matterport schedule "
        f"{','.join(map(str, plan.standard_epochs))}",
        f"- backbone: {backbone_text(plan)}",
        "- COCO weights: " + (f"yes, `--init {data['coco_weights']}`" if "coco_weights" in data
                              else "no (random initialisation)"),
        "- PanNuke weights: " + pannuke_text(protocol),
        "- distance channel: training from " + (
            "U-Net maps of the training tiles" if plan.train_distance == "unet"
            else "ground-truth labels (as the paper)") + "; test from " + (
            "ground-truth labels (an ORACLE: an upper bound, not the paper's setting)"
            if plan.test_distance == "labels" else
            (f"the U-Net {data['distance_model']}" if "distance_model" in data
             else f"a U-Net trained here ({plan.unet_epochs} epoch(s))")),
        "- the paper: 5 runs, epochs 5,35,5,5 x 60 steps, ResNet-50 from COCO weights, "
        "MoNuSeg 2018 train (30 tiles) / test (14)"]
    return lines


def backbone_text(plan) -> str:
    import nucseg.mrcnn.backbone as backbone

    from nucseg.mrcnn.config import PRESETS

    name = plan.backbone or plan.overrides.get("BACKBONE") or (
        PRESETS.get(plan.config, ({}, {}))[0].get("BACKBONE", "resnet101")
        if isinstance(plan.config, str) else "as in the config YAML")
    built = backbone.build_resnet_backbone
    if built.__module__ != backbone.__name__:
        return (f"{built.__module__}.{built.__name__}, swapped in by the caller in place of "
                f"ResNet (the config says {name}): NOT a ResNet")
    return name


def pannuke_text(protocol) -> str:
    data, plan = protocol.data, protocol.plan
    if "pannuke_weights" in data:
        return f"yes, given: `--init {data['pannuke_weights']}`"
    if plan.pannuke and protocol.pannuke_init:
        return (f"yes, pretrained here on {len(plan.pannuke)} PanNuke fold(s), epochs "
                f"{','.join(map(str, plan.pannuke_epochs))}")
    return "no"


def table1(protocol, rows: dict) -> str:
    head = "| configuration | runs | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |"
    rule = "|---|---|" + "---|" * len(METRICS)
    out = ["# Table 1: MoNuSeg test scores (%), mean ± std over runs", "",
           "Budget of THIS reproduction:", *budget_lines(protocol), ""]
    for section, title in (("table1", "Table 1 rows"), ("figure5", "Figure 5: input ablation")):
        keys = [k for k, r in rows.items() if r["section"] == section]
        if not keys:
            continue
        out += [f"## {title}", "", head, rule]
        for key in keys:
            r = rows[key]
            if r["status"] != "run":
                out.append(f"| {r['label']} | - | {r['status']} |" + " |" * (len(METRICS) - 1))
                continue
            out.append(f"| {r['label']} | {len(r['runs'])} | "
                       + " | ".join(cell(r, m) for m in METRICS) + " |")
        out.append("")
    return "\n".join(out)


def table2(protocol, rows: dict) -> str:
    out = ["# Table 2: seen and unseen organs (%), mean ± std over runs", "",
           "Budget of THIS reproduction:", *budget_lines(protocol), ""]
    if not protocol.seen:
        return "\n".join(out + ["No seen/unseen split: the plan gives no organ metadata for "
                                "the training and test images (data.metadata) and no "
                                "seen_organs.", ""])
    ran = {k: r for k, r in rows.items() if r["status"] == "run"}
    sample = next((r for r in ran.values() if "seen" in r or "unseen" in r), {})
    for group in GROUPS:
        info = sample.get(group)
        organs = ", ".join(info["organs"]) if info else "none in the test set"
        n = info["n_images"] if info else 0
        out += [f"## {group} organs ({organs}; n = {n} images)", "",
                "| configuration | runs | " + " | ".join(METRIC_LABELS[m] for m in METRICS)
                + " |", "|---|---|" + "---|" * len(METRICS)]
        for key, r in rows.items():
            if group in r:
                out.append(f"| {r['label']} | {len(r['runs'])} | "
                           + " | ".join(cell(r, m, r[group]) for m in METRICS) + " |")
            else:
                out.append(f"| {r['label']} | - | "
                           + (r["status"] if r["status"] != "run" else "no such images") + " |"
                           + " |" * (len(METRICS) - 1))
        out.append("")
    out.append("Seen organs: the training images' organs present in the test set, passed to "
               "`nucseg score --seen-organs " + ",".join(protocol.seen) + "`.")
    return "\n".join(out) + "\n"


def paper_table(protocol, rows: dict) -> str:
    out = ["# Ours beside the paper's Table 1 (%): ours / paper / ours - paper", "",
           "Budget of THIS reproduction:", *budget_lines(protocol), "",
           "| configuration | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |",
           "|---|" + "---|" * len(METRICS)]
    for key, r in rows.items():
        paper = ROWS[key].paper
        if paper is None:
            continue
        cells = []
        for metric, theirs in zip(METRICS, paper):
            ours = r.get("mean", {}).get(metric) if r["status"] == "run" else None
            cells.append(f"- / {theirs:.2f} / -" if ours is None else
                         f"{percent(ours)} / {theirs:.2f} / {100 * ours - theirs:+.2f}")
        note = "" if r["status"] == "run" else f" ({r['status']})"
        out.append(f"| {r['label']}{note} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def wilcoxon_table(protocol, rows: dict, comparison: dict | None, why: str = "") -> str:
    out = ["# Wilcoxon signed-rank tests (`nucseg compare`, two-sided)", "",
           "Budget of THIS reproduction:", *budget_lines(protocol), ""]
    if not comparison:
        return "\n".join(out + [f"Not run: {why}", ""])
    a, b = comparison["a"], comparison["b"]
    pooled = comparison["results"]["mean_over_seeds"]
    seeds = list(comparison["results"]["per_seed"])
    out += [f"A = {rows[a]['label']}, B = {rows[b]['label']}"
            + (" (the best row by mean AJI)" if comparison["chosen"] else "")
            + f"; the paper's best: {ROWS[PAPER_BEST].label}.",
            "Pairs are test images; 'over runs' pairs each image's mean over all runs, "
            "'seed s' the scores of run s alone.", "",
            "| metric | n | A | B | median B - A | p over runs | "
            + " | ".join(f"p seed {s}" for s in seeds) + " | paper p |",
            "|---|---|---|---|---|---|" + "---|" * (len(seeds) + 1)]
    for metric in METRICS:
        res = pooled.get(metric)
        if res is None:
            continue
        per = [p_text(comparison["results"]["per_seed"][s].get(metric, {}).get("p_value"))
               for s in seeds]
        out.append(f"| {METRIC_LABELS[metric]} | {res['n']} | {percent(res['mean_a'])} | "
                   f"{percent(res['mean_b'])} | {percent(res['median_diff'])} | "
                   f"{p_text(res['p_value'])} | " + " | ".join(per) + f" | {PAPER_P[metric]} |")
    out += ["", "With n test images the smallest two-sided p is 2 / 2^n (0.0625 at n = 5)."]
    return "\n".join(out) + "\n"


def read_comparison(files: dict) -> dict:
    def load(path):
        return {r["metric"]: r for r in json.loads(Path(path).read_text())["results"]}

    return {"per_seed": {s: load(p) for s, p in files["per_seed"].items()},
            "mean_over_seeds": load(files["mean_over_seeds"]),
            "files": {"per_seed": {s: str(p) for s, p in files["per_seed"].items()},
                      "mean_over_seeds": str(files["mean_over_seeds"])}}
