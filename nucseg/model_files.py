"""Finding and loading trained models for prediction.

A Mask R-CNN model is a Matterport-layout weight file with its configuration YAML beside it
(same stem + .yaml, or config.yaml in the same directory), or a run directory: its newest
checkpoint `mask_rcnn_<name>_<epoch:04d>.h5` (highest epoch) and the run's config YAML. An
ensemble run directory holds one such run directory per fold. A multi-task U-Net run directory
(`nucseg multitask train`: multitask.weights.h5 + its config.yaml) is a model too; it loads as
a nucseg.multitask.detector.MultitaskDetector, so `nucseg predict` ensembles both kinds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nucseg.io import InputError

CHECKPOINT = re.compile(r"^mask_rcnn_(?P<name>.*)_(?P<epoch>\d{4})\.h5$")
CONFIG_NAMES = ("config.yaml", "config.yml")


MULTITASK = "multitask"


@dataclass(frozen=True)
class ModelSpec:
    weights: Path
    config: Path
    kind: str = "mask-rcnn"                 # or MULTITASK

    @property
    def name(self) -> str:
        return f"{self.weights.parent.name}/{self.weights.name}"


def _config_in(directory: Path) -> Path | None:
    for name in CONFIG_NAMES:
        if (directory / name).is_file():
            return directory / name
    yamls = [p for p in sorted(directory.glob("*.y*ml")) if "record" not in p.stem]
    return yamls[0] if len(yamls) == 1 else None


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = [(int(m["epoch"]), p.stat().st_mtime, p) for p in run_dir.glob("*.h5")
             if (m := CHECKPOINT.match(p.name))]
    return max(found)[2] if found else None


def resolve_model(path) -> ModelSpec:
    """The weight file and config YAML that `-m PATH` names."""
    path = Path(path)
    if path.is_dir() and _is_multitask_run(path):
        from nucseg.multitask.files import CONFIG_NAME, WEIGHTS_NAME

        return ModelSpec(path / WEIGHTS_NAME, path / CONFIG_NAME, MULTITASK)
    if path.is_dir():
        weights = newest_checkpoint(path)
        if weights is None:
            raise InputError(path, "no checkpoint mask_rcnn_<name>_<epoch>.h5 in this run "
                                   "directory")
        config = _config_in(path)
        if config is None:
            raise InputError(path, "run directory has no config YAML (config.yaml)")
        return ModelSpec(weights, config)
    if not path.is_file():
        raise InputError(path, "model not found (a .h5 weight file or a run directory)")
    if path.suffix.lower() != ".h5":
        raise InputError(path, "a model is a Matterport .h5 weight file or a run directory")
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if candidate.is_file():
            return ModelSpec(path, candidate)
    config = _config_in(path.parent)
    if config is None:
        raise InputError(path, f"no config YAML beside the weights ({path.stem}.yaml or "
                               "config.yaml)")
    return ModelSpec(path, config)


def _is_multitask_run(directory: Path) -> bool:
    from nucseg.multitask.files import CONFIG_NAME, FORMAT, WEIGHTS_NAME

    config = directory / CONFIG_NAME
    if not (directory / WEIGHTS_NAME).is_file() or not config.is_file():
        return False
    with open(config, "rb") as fh:
        return f"format: {FORMAT}".encode() in fh.read(4096)


def resolve_model_or_name(arg) -> tuple[ModelSpec, object]:
    """(spec, ShippedModel or None) for `-m ARG`: a path, else a shipped model's name (its
    files verified against their sha256 first)."""
    from nucseg.models import named

    model = named(arg)
    if model is None:
        return resolve_model(arg), None
    return ModelSpec(model.weights, model.config), model


def ensemble_models(run_dir) -> list[ModelSpec]:
    """Every fold model of an ensemble run: one per sub-directory holding checkpoints."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "ensemble run directory not found")
    folds = [d for d in sorted(run_dir.iterdir()) if d.is_dir() and newest_checkpoint(d)]
    if not folds:
        raise InputError(run_dir, "no fold sub-directory with checkpoints in this ensemble run")
    return [resolve_model(d) for d in folds]


def inference_config(config, batch_size: int = 1, **overrides):
    """The inference variant of a (training) config, as the paper's inference config did:
    batch of `batch_size`, zero padding to multiples of 64 instead of training crops, RPN NMS
    0.7 and up to 2000 detections for 'crop'-trained models; `overrides` win."""
    changes = {"GPU_COUNT": 1, "IMAGES_PER_GPU": int(batch_size)}
    if config.IMAGE_RESIZE_MODE in ("crop", "square"):
        changes.update(IMAGE_RESIZE_MODE="pad64", RPN_NMS_THRESHOLD=0.7)
        if config.IMAGE_RESIZE_MODE == "crop":
            changes["DETECTION_MAX_INSTANCES"] = max(int(config.DETECTION_MAX_INSTANCES), 2000)
        else:
            changes["IMAGE_MIN_DIM"] = min(int(config.IMAGE_MIN_DIM), 256)
    changes.update({k: v for k, v in overrides.items() if v is not None})
    return config.copy(**changes)


def load_model(spec: ModelSpec, batch_size: int = 1, precision: str = "float32", **overrides):
    """A ready MaskRCNN (inference, in `precision`) for a ModelSpec; every weight must load.
    A multi-task run loads as a MultitaskDetector with its tuned watershed thresholds
    (nucseg.multitask.tune; only DETECTION_MIN_CONFIDENCE applies to it)."""
    from nucseg.mrcnn import Config, MaskRCNN

    if spec.kind == MULTITASK:
        from nucseg.multitask.detector import MultitaskDetector
        from nucseg.multitask.files import load_run
        from nucseg.multitask.tune import watershed_options

        return MultitaskDetector(load_run(spec.weights.parent, spec.weights),
                                 watershed_options(spec.weights.parent, {}),
                                 min_confidence=overrides.get("DETECTION_MIN_CONFIDENCE"))

    try:
        config = Config.from_yaml(spec.config)
    except (ValueError, OSError) as exc:
        raise InputError(spec.config, f"bad model config ({exc})") from None
    model = MaskRCNN(inference_config(config, batch_size, **overrides), precision=precision)
    from nucseg.mrcnn.weights import WeightMismatchError

    try:
        report = model.load_weights(spec.weights, by_name=True)
    except InputError:
        raise
    except WeightMismatchError as exc:
        problems = "; ".join(f"{layer}: {problem}" for layer, problem in exc.report.mismatched[:3])
        raise InputError(spec.weights, f"does not fit the config {spec.config.name}: "
                                       f"{len(exc.report.mismatched)} layer(s) differ, e.g. "
                                       f"{problems}") from None
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(spec.weights, f"cannot load weights ({exc})") from None
    missing = list(getattr(report, "missing", [])) + [
        f"{layer} ({problem})" for layer, problem in getattr(report, "mismatched", [])]
    if missing:
        raise InputError(spec.weights, f"does not fit the config: {len(missing)} layers missing "
                                       f"or mismatched, e.g. {missing[:3]}")
    unused = list(getattr(report, "unused", []))
    if unused:     # right for --init (e.g. R101 -> R50), wrong for a model asked to run
        raise InputError(spec.weights, f"does not fit the config {spec.config.name}: the file "
                                       f"has {len(unused)} weighted layers the configured model "
                                       f"lacks, e.g. {unused[:3]} (weights of another backbone "
                                       "or channel count?)")
    model.name = spec.name
    return model
