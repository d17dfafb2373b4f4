"""Is method B better than method A on the same images? Paired Wilcoxon signed-rank tests.

Reads two per-image score tables (the CSV of ``nucseg score --format csv``, or its JSON),
pairs the rows by image and, per metric, tests whether the differences B - A are centred on
zero (scipy.stats.wilcoxon, two-sided; zero differences dropped as in Wilcoxon's original
test). The median difference gives the direction and size of the effect.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from nucseg.io import InputError
from nucseg.metrics import METRIC_NAMES

COMPARE_COLUMNS = ("metric", "n", "mean_a", "mean_b", "median_diff", "statistic", "p_value")


def read_score_table(path) -> dict[str, dict[str, float | None]]:
    """Image name -> {metric: value or None} from a score CSV or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "score table not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read score table ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)["per_image"]
        except (ValueError, KeyError, TypeError):
            raise InputError(path, "not a `nucseg score` JSON file (no 'per_image' list)") \
                from None
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    if not isinstance(rows, list) or not rows:
        raise InputError(path, "score table needs an 'image' column and at least one row")
    table: dict[str, dict] = {}
    for number, row in enumerate(rows, start=2):
        if not isinstance(row, dict) or not str(row.get("image") or "").strip():
            raise InputError(path, f"row {number}: no image name (a score table needs an "
                                   "'image' column)")
        image = str(row["image"]).strip()
        if image in table:
            raise InputError(path, f"image '{image}' appears twice")
        table[image] = {m: _number(row.get(m), path, number, m)
                        for m in METRIC_NAMES if m in row}
    return table


def _number(value, path, line, metric):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"row {line}: {metric} value {value!r} is not a number") from None
    return number if math.isfinite(number) else None


def compare_tables(a: dict, b: dict, a_name="A", b_name="B") -> list[dict]:
    """One result per metric both tables have: n pairs, means, median(B - A), Wilcoxon p.

    Images must be the same in both tables; a metric undefined in either table for an image
    leaves that image out of that metric's test.
    """
    from scipy.stats import wilcoxon

    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in {a_name}: {', '.join(only_a)}")
        if only_b:
            parts.append(f"only in {b_name}: {', '.join(only_b)}")
        raise ValueError("score tables cover different images (" + "; ".join(parts) + ")")
    images = sorted(a)
    metrics = [m for m in METRIC_NAMES
               if any(m in a[i] for i in images) and any(m in b[i] for i in images)]
    if not metrics:
        raise ValueError(f"{a_name} and {b_name} share no metric columns "
                         f"({', '.join(METRIC_NAMES)})")
    results = []
    for metric in metrics:
        pairs = [(a[i].get(metric), b[i].get(metric)) for i in images]
        pairs = np.array([p for p in pairs if p[0] is not None and p[1] is not None],
                         dtype=float).reshape(-1, 2)
        diff = pairs[:, 1] - pairs[:, 0]
        result = {"metric": metric, "n": int(diff.size),
                  "mean_a": _mean(pairs[:, 0]), "mean_b": _mean(pairs[:, 1]),
                  "median_diff": float(np.median(diff)) if diff.size else None,
                  "statistic": None, "p_value": None}
        if diff.size and np.all(diff == 0):
            result["p_value"] = 1.0  # identical scores: no evidence of any difference
        elif diff.size:
            test = wilcoxon(pairs[:, 1], pairs[:, 0], zero_method="wilcox",
                            alternative="two-sided")
            result["statistic"] = float(test.statistic)
            result["p_value"] = float(test.pvalue)
        results.append(result)
    return results


def _mean(values: np.ndarray):
    return float(values.mean()) if values.size else None


def compare_files(a_path, b_path) -> list[dict]:
    return compare_tables(read_score_table(a_path), read_score_table(b_path),
                          str(a_path), str(b_path))


def render_comparison(results: list[dict], fmt: str, a_name: str = "A",
                      b_name: str = "B") -> str:
    """table (with a legend), json (a list of results) or csv (one row per metric)."""
    if fmt == "json":
        return json.dumps({"a": a_name, "b": b_name, "results": results}, indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COMPARE_COLUMNS)
        for r in results:
            writer.writerow(["" if r[c] is None else (repr(r[c]) if isinstance(r[c], float)
                                                      else r[c]) for c in COMPARE_COLUMNS])
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; choose one of table, json, csv")
    header = (f"{'metric':<9}{'n':>5}{'mean A':>10}{'mean B':>10}{'median B-A':>12}"
              f"{'p-value':>11}")
    lines = [f"A: {a_name}", f"B: {b_name}", header]
    for r in results:
        lines.append(f"{r['metric']:<9}{r['n']:>5}{_fmt(r['mean_a'], 4):>10}"
                     f"{_fmt(r['mean_b'], 4):>10}{_fmt(r['median_diff'], 4, sign=True):>12}"
                     f"{_fmt(r['p_value'], 3, sci=True):>11}")
    lines.append("Wilcoxon signed-rank test per metric, paired by image (two-sided).")
    return "\n".join(lines) + "\n"


def _fmt(value, digits, sign=False, sci=False):
    if value is None:
        return "-"
    if sci and value < 10 ** -digits:
        return f"{value:.{digits - 1}e}"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
