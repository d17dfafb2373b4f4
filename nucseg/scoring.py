"""Score predicted label maps against ground truth: file pairing, per-image scores, means.

`score_directories` is what `nucseg score` runs: it pairs ground-truth and predicted label maps
by image name, scores each pair with `nucseg.metrics.score_pair`, and summarises the results
as a plain dict (the JSON output). With a metadata table (columns ``id``, ``organ``) it adds
per-organ means and the seen/unseen organ groups used to report generalisation to organs the
model never saw in training. Rendering to table/CSV text lives in `nucseg.score_formats`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nucseg.io import (IMAGE_EXTENSIONS, LABEL_EXTENSIONS, InputError, read_csv_table,
                       read_labels)
from nucseg.metrics import COUNT_NAMES, METRIC_NAMES, score_pair

#: Name endings dropped to find the image a label map belongs to (`<stem>_labels.tif`).
LABEL_SUFFIXES = ("_labels",)


@dataclass(frozen=True)
class LabelPair:
    image: str
    gt: Path
    pred: Path


# ---------------------------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------------------------
def image_name(path) -> str:
    """The image a label map belongs to: its stem without a trailing ``_labels``."""
    stem = Path(path).stem
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _index_label_files(root: Path, role: str) -> dict[str, Path]:
    if root.is_dir():
        files = sorted(f for f in root.iterdir()
                       if f.is_file() and f.suffix.lower() in LABEL_EXTENSIONS)
        if not files:
            raise InputError(root, f"no {role} label maps (*{', *'.join(LABEL_EXTENSIONS)})")
        # an output directory of `nucseg predict` also holds <stem>_overlay.png and the like:
        # where <stem>_labels files exist, they are the label maps
        marked = [f for f in files if image_name(f) != f.stem]
        files = marked or files
    elif root.is_file():
        files = [root]
    else:
        raise InputError(root, "file or directory not found")
    index: dict[str, Path] = {}
    for f in files:
        name = image_name(f)
        if name in index:
            raise InputError(root, f"two {role} label maps for image '{name}': "
                                   f"{index[name].name} and {f.name}")
        index[name] = f
    return index


def pair_label_files(gt, pred) -> list[LabelPair]:
    """Pair ground-truth and predicted label maps (files or directories) by image name.

    Two single files are paired whatever their names. Otherwise every map must find its
    partner; the error lists all that did not.
    """
    gt, pred = Path(gt), Path(pred)
    gt_index = _index_label_files(gt, "ground-truth")
    pred_index = _index_label_files(pred, "predicted")
    if gt.is_file() and pred.is_file():
        (name, gt_file), = gt_index.items()
        return [LabelPair(name, gt_file, pred)]
    lonely_gt = sorted(set(gt_index) - set(pred_index))
    lonely_pred = sorted(set(pred_index) - set(gt_index))
    if lonely_gt or lonely_pred:
        parts = []
        if lonely_gt:
            parts.append(f"ground truth without prediction in {pred}: "
                         + ", ".join(gt_index[n].name for n in lonely_gt))
        if lonely_pred:
            parts.append(f"predictions without ground truth in {gt}: "
                         + ", ".join(pred_index[n].name for n in lonely_pred))
        raise ValueError("unpaired label maps: " + "; ".join(parts))
    return [LabelPair(name, gt_index[name], pred_index[name]) for name in sorted(gt_index)]


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def nuclei_table_path(pred_labels) -> Path:
    """`<stem>_labels.tif` -> `<stem>_nuclei.csv`, the table `nucseg predict` writes beside it."""
    pred_labels = Path(pred_labels)
    return pred_labels.with_name(f"{image_name(pred_labels)}_nuclei.csv")


def keep_confident(labels: np.ndarray, table_path, min_score: float) -> np.ndarray:
    """Erase the nuclei whose `score` in the nuclei CSV is below `min_score`.

    Lets one prediction made with a low --min-confidence be scored at several thresholds, to
    choose one on validation tiles. For a single member this equals predicting with that
    threshold: NMS and the overlap rule both favour higher scores, so a weaker nucleus never
    changed a stronger one. After a TTA/ensemble vote it is close but not identical.
    """
    table_path = Path(table_path)
    if not table_path.is_file():
        raise InputError(table_path, "missing: --min-score needs the nuclei CSV that "
                                     "`nucseg predict` writes beside each label map")
    scores = {}
    for line, row in read_csv_table(table_path, ("id", "score"), "nuclei table"):
        try:
            scores[int(row["id"])] = float(row["score"])
        except ValueError as exc:
            raise InputError(table_path, f"line {line}: {exc}") from None
    ids = np.unique(labels)
    ids = ids[ids != 0]
    unknown = [int(i) for i in ids if int(i) not in scores]
    if unknown:
        raise InputError(table_path, f"{len(unknown)} label(s) of the map have no row "
                                     f"(first: {unknown[0]})")
    return drop_weak(labels, scores, min_score)


def drop_weak(labels: np.ndarray, scores: dict, min_score: float) -> np.ndarray:
    """`labels` without the ids whose score ({id: score}) is below `min_score`."""
    weak = [i for i, score in scores.items() if score < min_score]
    return np.where(np.isin(labels, weak), 0, labels).astype(labels.dtype)


def score_files(pair: LabelPair, min_score: float | None = None) -> dict:
    """One per-image row: ``{"image": name, <metrics>, "n_true", "n_pred"}``; with
    `min_score`, only the predicted nuclei scoring at least that count (`keep_confident`)."""
    gt = read_labels(pair.gt)
    pred = read_labels(pair.pred)
    if min_score is not None:
        pred = keep_confident(pred, nuclei_table_path(pair.pred), min_score)
    if gt.shape != pred.shape:
        raise InputError(pair.pred, f"size {pred.shape[0]}x{pred.shape[1]} differs from the "
                                    f"ground truth {pair.gt} ({gt.shape[0]}x{gt.shape[1]})")
    return {"image": pair.image, **score_pair(gt, pred)}


def score_pairs(pairs: Sequence[LabelPair], progress: bool = True,
                min_score: float | None = None) -> tuple[list[dict], list[str]]:
    """Score every pair; a bad file is recorded as one error line and the others go on."""
    from tqdm import tqdm

    rows, failures = [], []
    for pair in tqdm(pairs, desc="score", unit="image", file=sys.stderr,
                     disable=not progress or len(pairs) < 2):
        try:
            rows.append(score_files(pair, min_score))
        except InputError as exc:
            failures.append(str(exc))
    return rows, failures


def mean_scores(rows: Iterable[dict]) -> dict:
    """Mean of every metric and count over images; images where a metric is undefined
    (both maps empty) are left out of that metric's mean (None if no image defines it)."""
    rows = list(rows)
    means = {}
    for key in METRIC_NAMES + COUNT_NAMES:
        values = [row[key] for row in rows if row.get(key) is not None]
        means[key] = sum(values) / len(values) if values else None
    return means


def summarize(rows: list[dict], organs: dict[str, str] | None = None,
              seen_organs: Sequence[str] | None = None) -> dict:
    """The JSON result: per-image rows, their mean, and (given organs) organ/group means.

    `organs` maps image name -> organ; `seen_organs` names the organs the model trained on
    (every other organ is "unseen"); without them there are no seen/unseen groups.
    """
    result = {"per_image": rows, "mean": mean_scores(rows), "n_images": len(rows)}
    if organs is None:
        return result
    by_organ: dict[str, list[dict]] = {}
    for row in rows:
        row["organ"] = organs[row["image"]]
        by_organ.setdefault(row["organ"], []).append(row)
    result["per_organ"] = {organ: {"n_images": len(members), "mean": mean_scores(members)}
                           for organ, members in sorted(by_organ.items())}
    if not seen_organs:     # a guessed split would be wrong without a word: none at all
        return result
    seen = {o.strip().lower() for o in seen_organs}
    for row in rows:
        row["group"] = "seen" if row["organ"] in seen else "unseen"
    result["groups"] = {}
    for group in ("seen", "unseen"):
        members = [row for row in rows if row["group"] == group]
        result["groups"][group] = {
            "organs": sorted({row["organ"] for row in members}),
            "n_images": len(members),
            "mean": mean_scores(members),
        }
    return result


def organ_table(path) -> dict[str, str]:
    """Every row of a metadata CSV with columns ``id`` and ``organ``: image name -> organ
    (lower case). MoNuSeg's metadata.csv works as it is; extra columns are ignored."""
    organs = {}
    for _, row in read_csv_table(path, ("id", "organ"), "metadata CSV", may_be_empty=("organ",)):
        organs[_metadata_image(row["id"])] = row["organ"].lower() or "unknown"
    return organs


def read_metadata(path, images: Iterable[str]) -> dict[str, str]:
    """Image name -> organ for the scored `images`; every one of them must have a row."""
    organs = organ_table(path)
    images = list(images)
    missing = sorted(set(images) - set(organs))
    if missing:
        raise InputError(path, f"no organ for {len(missing)} scored image(s): "
                               + ", ".join(missing))
    return {name: organs[name] for name in images}


def training_images(pred) -> list[str] | None:
    """The images the model(s) behind a prediction directory trained on, or None if unknown.

    Read from a `<stem>_record.yaml` that `nucseg predict` wrote: each model's run directory
    (train.yaml beside its weights: the data set's image names; for fold models every fold's),
    or a shipped model's manifest (`training_images`).
    """
    import yaml

    folder = Path(pred) if Path(pred).is_dir() else Path(pred).parent
    records = sorted(folder.glob("*_record.yaml"))
    if not records:
        return None
    try:
        record = yaml.safe_load(records[0].read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    names: set[str] = set()
    for model in record.get("models") or []:
        if not isinstance(model, dict) or "weights" not in model:
            return None
        found = _model_training_images(Path(str(model["weights"])).parent)
        if found is None:
            return None
        names |= found
    return sorted(names) or None


def _model_training_images(folder: Path) -> set[str] | None:
    import yaml

    for name, key in (("train.yaml", "dataset"), ("model.yaml", None)):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        listed = (data.get(key) or {}).get("names") if key else data.get("training_images")
        if isinstance(listed, list) and listed:
            return {str(n) for n in listed}
    return None


def _metadata_image(image_id: str) -> str:
    """An id as written in metadata: a bare image name, or a file name (a path) for it."""
    if Path(image_id).suffix.lower() in LABEL_EXTENSIONS + IMAGE_EXTENSIONS:
        return image_name(image_id)
    return image_id


def check_seen_organs(seen_organs: Sequence[str], organs: dict[str, str], metadata) -> None:
    """A named seen organ that no scored image has is most likely a typo: say so."""
    present = set(organs.values())
    unknown = sorted({o.strip().lower() for o in seen_organs} - present)
    if unknown:
        raise ValueError(f"seen organ(s) {', '.join(unknown)} not among the scored images' "
                         f"organs in {metadata} ({', '.join(sorted(present))})")


def score_directories(gt, pred, metadata=None, seen_organs: Sequence[str] | None = None,
                      progress: bool = True, min_score: float | None = None
                      ) -> tuple[dict, list[str]]:
    """Pair, score and summarise; returns (result dict, error lines of unreadable files).

    Pairing and metadata problems raise before any scoring is done.
    """
    pairs = pair_label_files(gt, pred)
    organs = read_metadata(metadata, [p.image for p in pairs]) if metadata else None
    seen_from = "--seen-organs" if seen_organs else None
    if organs is not None and seen_organs:
        check_seen_organs(seen_organs, organs, metadata)
    elif organs is not None:
        trained = training_images(pred)
        if trained:
            table = organ_table(metadata)
            seen_organs = sorted({table[n] for n in trained if n in table})
            seen_from = "the model's training record" if seen_organs else None
    rows, failures = score_pairs(pairs, progress=progress, min_score=min_score)
    if organs is not None:
        organs = {name: organs[name] for name in (row["image"] for row in rows)}
    result = summarize(rows, organs, seen_organs)
    if organs is not None:
        result["seen_organs_from"] = seen_from
    return result, failures
