"""Watershed thresholds chosen on training tiles, kept in the run directory as its defaults.

The foreground and interior probability cuts decide how the U-Net's maps become nuclei
(nucseg.multitask.predict). Their best values depend on the trained network, so `nucseg
multitask tune` predicts the maps of labelled training tiles once, scores every (foreground,
interior) pair of a grid by mean AJI, and writes the best pair to `<run>/watershed.yaml`.
`nucseg multitask predict` and `nucseg predict -m RUN` then use it unless a threshold is
typed; without the file the defaults are 0.5. Choose them on training tiles, never on the
tiles a figure reports.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from nucseg.io import InputError
from nucseg.multitask.predict import WatershedOptions, instances, predict_maps, scored_nuclei

WATERSHED_FILE = "watershed.yaml"
FORMAT = "nucseg-multitask-watershed"
TUNED_KEYS = ("t_foreground", "t_interior")


def grid_search(maps: dict, truth: dict, values, base: WatershedOptions | None = None
                ) -> tuple[WatershedOptions, list[dict]]:
    """(best options, table): every (foreground, interior) pair of `values` scored by mean AJI
    over the tiles; `maps` and `truth` map a tile's stem to its H x W x 3 probabilities and
    its ground-truth label map. Ties go to the first pair in grid order."""
    from nucseg.metrics import aji

    base = base or WatershedOptions()
    table = []
    for t_fg in values:
        for t_in in values:
            opts = replace(base, t_foreground=float(t_fg), t_interior=float(t_in))
            scores = [aji(truth[s], scored_nuclei(instances(maps[s], opts), maps[s][..., 0]).labels)
                      for s in truth]
            table.append({"t_foreground": float(t_fg), "t_interior": float(t_in),
                          "aji": round(float(np.mean(scores)), 4)})
    best = max(table, key=lambda row: row["aji"])
    return replace(base, t_foreground=best["t_foreground"], t_interior=best["t_interior"]), table


def tune_run(loaded, pairs, values, tile_size: int = 1024, margin: int = 64,
             base: WatershedOptions | None = None, progress: bool = True) -> dict:
    """Choose the thresholds of a loaded run on labelled (image, label map) pairs and write its
    watershed.yaml (atomically, with a record). Returns what was written."""
    from tqdm import tqdm

    from nucseg.io import make_record, read_labels, read_rgb, write_record

    maps, truth = {}, {}
    for image, label_file in tqdm(pairs, desc="tune: maps", disable=not progress):
        stem = Path(image).stem
        maps[stem] = predict_maps(loaded, read_rgb(image), tile_size, margin)
        truth[stem] = read_labels(label_file)
        if truth[stem].shape != maps[stem].shape[:2]:
            raise InputError(label_file, f"label map is {truth[stem].shape}, its image "
                                         f"{maps[stem].shape[:2]}")
    chosen, table = grid_search(maps, truth, values, base)
    result = {k: getattr(chosen, k) for k in TUNED_KEYS}
    result.update(mean_aji=max(row["aji"] for row in table), grid=table, tiles=sorted(truth))
    record = make_record("multitask tune", [p for pair in pairs for p in pair],
                         {"values": [float(v) for v in values], "tile_size": tile_size,
                          "margin": margin}, format=FORMAT, **result)
    write_record(Path(loaded.run_dir) / WATERSHED_FILE, record)
    return result


def read_tuned(run_dir) -> dict:
    """The tuned thresholds of a run ({} without a watershed.yaml); a bad file is an
    InputError, never a silent default."""
    from nucseg.io import read_tagged_yaml

    path = Path(run_dir) / WATERSHED_FILE
    if not path.is_file():
        return {}
    data = read_tagged_yaml(path, FORMAT, "watershed threshold file")
    tuned = {}
    for key in TUNED_KEYS:
        value = data.get(key)
        if not isinstance(value, (int, float)) or not 0 < float(value) < 1:
            raise InputError(path, f"{key} must be a number in (0, 1), got {value!r}")
        tuned[key] = float(value)
    return tuned


def watershed_options(run_dir, typed: dict) -> WatershedOptions:
    """Typed values first, then the run's tuned thresholds, then the defaults."""
    values = {**read_tuned(run_dir), **{k: v for k, v in typed.items() if v is not None}}
    return WatershedOptions(**values)
