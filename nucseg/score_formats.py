"""Text renderings of score results: JSON (everything), CSV (per image), aligned table.

The CSV is the per-image table that `nucseg compare` reads back; floats are written with full
precision so nothing is lost on the round trip. Undefined values (both maps empty) are JSON
null and empty CSV cells.
"""
from __future__ import annotations

import csv
import io
import json
import math

from nucseg.metrics import COUNT_NAMES, METRIC_NAMES

FORMATS = ("table", "json", "csv")


def to_json(result: dict) -> str:
    return json.dumps(_finite(result), indent=1) + "\n"


def _finite(value):
    """NaN/inf are not JSON; they cannot come from the metrics, but never write them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_csv(result: dict) -> str:
    """One row per image: image, [organ, group,] the metrics, n_true, n_pred."""
    rows = result["per_image"]
    extra = [k for k in ("organ", "group") if rows and k in rows[0]]
    columns = ["image", *extra, *METRIC_NAMES, *COUNT_NAMES]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in columns])
    return out.getvalue()


def _cell(value):
    return repr(value) if isinstance(value, float) else value


def to_table(result: dict) -> str:
    """Aligned text for reading in a terminal: images, mean, organs, seen/unseen groups."""
    columns = [*METRIC_NAMES, *COUNT_NAMES]
    labels = [row["image"] for row in result["per_image"]]
    labels.append(f"mean ({result['n_images']} images)")
    for organ, summary in result.get("per_organ", {}).items():
        labels.append(f"organ {organ} ({summary['n_images']})")
    for group, summary in result.get("groups", {}).items():
        labels.append(f"{group} ({summary['n_images']})")
    width = max([len("image")] + [len(label) for label in labels])

    def line(label, values, counts_as_int):
        cells = []
        for name in columns:
            v = values.get(name)
            if v is None:
                text = "-"
            elif name in COUNT_NAMES:
                text = f"{v:d}" if counts_as_int else f"{v:.1f}"
            else:
                text = f"{v:.4f}"
            cells.append(text.rjust(max(len(name), 8)))
        return label.ljust(width) + "  " + " ".join(cells)

    header = "image".ljust(width) + "  " + " ".join(c.rjust(max(len(c), 8)) for c in columns)
    lines = [header]
    lines += [line(row["image"], row, True) for row in result["per_image"]]
    lines.append("-" * len(header))
    lines.append(line(f"mean ({result['n_images']} images)", result["mean"], False))
    for organ, summary in result.get("per_organ", {}).items():
        lines.append(line(f"organ {organ} ({summary['n_images']})", summary["mean"], False))
    for group, summary in result.get("groups", {}).items():
        lines.append(line(f"{group} ({summary['n_images']})", summary["mean"], False))
    if result.get("groups"):
        for group, summary in result["groups"].items():
            lines.append(f"{group} organs: {', '.join(summary['organs']) or '(none)'}")
    return "\n".join(lines) + "\n"


def render(result: dict, fmt: str) -> str:
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(result)
    if fmt == "table":
        return to_table(result)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
