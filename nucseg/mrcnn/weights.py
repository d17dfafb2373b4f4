"""Matterport weight files for Keras 3 models: names, saving, checked by-name loading.

Keras 3 variables are named "kernel", "gamma", ... without the layer prefix or ":0", so the
Matterport weight names ("conv1/kernel:0", "rpn_conv_shared/bias:0" inside the `rpn_model`
group) are derived here from layer names. Loading validates the count and shape of every weight
of every candidate layer before a single variable is assigned, and returns a LoadReport that
says what was loaded, excluded, mismatched, missing or unused. The HDF5 side lives in
weights_h5.py; docs/weights.md describes the layout and the loading rules.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nucseg.io import InputError
from nucseg.mrcnn.weights_h5 import (open_weight_root, read_group_arrays, read_weight_file,
                                     read_weight_shapes, write_weight_file)

__all__ = ["COCO_EXCLUDE", "LoadReport", "WeightMismatchError", "weight_entries",
           "model_weight_shapes", "file_architecture", "save_weights", "load_weights", "plan_load",
           "read_weight_file", "read_weight_shapes"]

# Matterport's recipe for COCO weights with another class count: the class-dependent heads.
# ("mrcnn_bbox" is the weightless Reshape; listing it is harmless, as in Matterport.)
COCO_EXCLUDE = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask")

# Keras 2 file order inside a layer: kernel before bias; BN gamma, beta, moving mean, variance.
_WEIGHT_RANK = {"kernel": 0, "depthwise_kernel": 0, "pointwise_kernel": 1, "bias": 2,
                "gamma": 0, "beta": 1, "moving_mean": 2, "moving_variance": 3}

Shape = tuple  # of ints


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
def _short_name(variable) -> str:
    """'kernel' from Keras 3 'kernel' (or a Keras 2 style 'conv1/kernel:0')."""
    return variable.name.split("/")[-1].split(":")[0]


def _ordered(variables) -> list:
    indexed = list(enumerate(variables))
    indexed.sort(key=lambda iv: (_WEIGHT_RANK.get(_short_name(iv[1]), 50), iv[0]))
    return [v for _, v in indexed]


def _is_nested_model(layer) -> bool:
    return isinstance(getattr(layer, "layers", None), list)


def _layer_entries(layer) -> list[tuple[str, object]]:
    if _is_nested_model(layer):
        # Keras 2 names a nested model's weights after its inner layers (rpn_conv_shared/...).
        return [entry for sub in layer.layers for entry in _layer_entries(sub)]
    return [(f"{layer.name}/{_short_name(v)}:0", v) for v in _ordered(layer.weights)]


def weight_entries(keras_model) -> list[tuple[str, list[tuple[str, object]]]]:
    """[(group name, [(Matterport weight name, Keras variable)])] for every top-level layer.

    Layers come in `keras_model.layers` order (the file's layer_names order); weightless layers
    are included with an empty list. A nested model (rpn_model) is one group holding its inner
    layers' weights, named after the inner layers.
    """
    out = []
    for layer in keras_model.layers:
        entries = _layer_entries(layer)
        names = [n for n, _ in entries]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"layer '{layer.name}' has duplicate weight names {dup}")
        out.append((layer.name, entries))
    return out


def model_weight_shapes(keras_model) -> list[tuple[str, list[tuple[str, Shape]]]]:
    """Like weight_entries, with shapes instead of variables (what plan_load compares)."""
    return [(group, [(name, tuple(int(d) for d in v.shape)) for name, v in entries])
            for group, entries in weight_entries(keras_model)]


def file_architecture(file_shapes) -> dict:
    """What a weight file's shapes say about its model: backbone, NUM_CLASSES, input channels.

    file_shapes is read_weight_shapes(path). Values are None when the file does not tell
    (e.g. no class head). Lets a caller decide on the head exclusion before building a model.
    """
    def shape_of(layer, suffix):
        for name, shape, *_ in file_shapes.get(layer, []):
            if name.endswith(suffix):
                return shape
        return None

    backbone = None
    if file_shapes.get("res4w_branch2a"):
        backbone = "resnet101"
    elif file_shapes.get("res4f_branch2a"):
        backbone = "resnet50"
    classes = shape_of("mrcnn_class_logits", "bias:0")
    preproc = shape_of("PREPROC", "kernel:0")
    conv1 = shape_of("conv1", "kernel:0")
    channels = preproc[2] if preproc else (conv1[2] if conv1 else None)
    return {"backbone": backbone, "num_classes": classes[0] if classes else None,
            "image_channels": channels}


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_weights(keras_model, path, string_format: str = "str") -> Path:
    """Write the model's weights in the Matterport / Keras 2 save_weights layout (atomic).

    string_format="bytes" writes fixed-length byte strings for readers from Keras 2.0-2.2.
    """
    import keras

    groups = [(group, [(name, np.asarray(v.numpy())) for name, v in entries])
              for group, entries in weight_entries(keras_model)]
    return write_weight_file(path, groups, keras_version=keras.__version__,
                             string_format=string_format)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a load did (or, from plan_load, would do), by top-level layer name."""

    path: str
    loaded: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)       # model layers in `exclude`
    mismatched: list[tuple[str, str]] = field(default_factory=list)  # (layer, problem)
    missing: list[str] = field(default_factory=list)        # weighted, not in file: keep init
    unused: list[str] = field(default_factory=list)         # weighted in file, not in model
    unknown_excludes: list[str] = field(default_factory=list)  # in exclude, in neither
    n_weights: int = 0                                       # tensors loaded
    n_values: int = 0                                        # scalars loaded

    @property
    def skipped(self) -> list[str]:
        return self.excluded + [layer for layer, _ in self.mismatched]

    def to_dict(self) -> dict:
        return {"path": self.path, "loaded": self.loaded, "excluded": self.excluded,
                "mismatched": [{"layer": l, "problem": p} for l, p in self.mismatched],
                "missing": self.missing, "unused": self.unused,
                "unknown_excludes": self.unknown_excludes,
                "n_weights": self.n_weights, "n_values": self.n_values}

    def summary(self, max_names: int = 12) -> str:
        n_model = len(self.loaded) + len(self.skipped) + len(self.missing)
        lines = [f"{Path(self.path).name}: loaded {len(self.loaded)} of {n_model} weighted "
                 f"layers ({self.n_weights} tensors, {self.n_values:,} values)"]
        sections = [("excluded", self.excluded),
                    ("shape mismatch, not loaded", [l for l, _ in self.mismatched]),
                    ("missing from file, kept initialisation", self.missing),
                    ("unused in file", self.unused),
                    ("exclude names found nowhere", self.unknown_excludes)]
        for title, names in sections:
            if names:
                shown = ", ".join(names[:max_names])
                more = f", ... ({len(names) - max_names} more)" if len(names) > max_names else ""
                lines.append(f"  {title} ({len(names)}): {shown}{more}")
        lines += [f"    {layer}: {problem}" for layer, problem in self.mismatched[:max_names]]
        return "\n".join(lines)


class WeightMismatchError(ValueError):
    """Counts or shapes differ for layers that were not excluded; nothing was assigned."""

    def __init__(self, report: LoadReport):
        self.report = report
        shown = "; ".join(f"{layer}: {problem}" for layer, problem in report.mismatched[:3])
        more = f"; and {len(report.mismatched) - 3} more" if len(report.mismatched) > 3 else ""
        hint = ""
        if any(layer in set(COCO_EXCLUDE) for layer, _ in report.mismatched):
            hint = (" (another class count? exclude the class-dependent heads "
                    f"{', '.join(COCO_EXCLUDE)}: train excludes them itself, `nucseg weights "
                    "inspect --exclude-heads`, exclude=[...] in Python)")
        super().__init__(f"{report.path}: {len(report.mismatched)} layer(s) do not match the "
                         f"model, nothing was loaded: {shown}{more}{hint}")


def _pair(model_weights: Sequence[tuple[str, Shape]], file_weights: Sequence[tuple]):
    """Match one layer's weights: by name when every name matches, else by position.

    Returns (file index per model weight, problem or None).
    """
    if len(model_weights) != len(file_weights):
        return None, (f"{len(file_weights)} weights in file, {len(model_weights)} in model")
    file_index = {entry[0]: i for i, entry in enumerate(file_weights)}
    if all(name in file_index for name, _ in model_weights):
        order = [file_index[name] for name, _ in model_weights]
    else:  # another writer's spelling (Keras 2 matched positionally too)
        order = list(range(len(model_weights)))
    problems = [f"{name} file {tuple(file_weights[i][1])} vs model {tuple(shape)}"
                for (name, shape), i in zip(model_weights, order)
                if tuple(file_weights[i][1]) != tuple(shape)]
    return order, ("; ".join(problems) if problems else None)


def plan_load(model_shapes, file_shapes, path="", by_name: bool = True,
              exclude: Iterable[str] = ()):
    """Decide what a load would do, from shapes only; assigns nothing.

    model_shapes: [(layer, [(weight name, shape)])] (model_weight_shapes); file_shapes:
    {layer: [(weight name, shape, ...)]} (read_weight_shapes). Returns (LoadReport with
    mismatches listed, pairs [(model layer, file layer, file index per model weight)]).
    """
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    by_name = by_name or bool(exclude)  # as in Matterport: an exclude list implies by-name
    report = LoadReport(path=str(path))
    model_weighted = [(layer, ws) for layer, ws in model_shapes if ws]
    file_weighted = OrderedDict((layer, ws) for layer, ws in file_shapes.items() if ws)
    model_names = {layer for layer, _ in model_shapes}
    report.unknown_excludes = [n for n in exclude if n not in model_names
                               and n not in file_shapes and n not in COCO_EXCLUDE]
    if by_name:
        candidates = []
        for layer, ws in model_weighted:
            if layer in exclude:
                report.excluded.append(layer)
            elif layer in file_shapes:
                candidates.append((layer, layer, ws))
            else:
                report.missing.append(layer)
        report.unused = [l for l in file_weighted if l not in model_names and l not in exclude]
    else:
        if len(model_weighted) != len(file_weighted):
            raise InputError(path, f"by_name=False needs the same number of weighted layers: "
                                   f"file {len(file_weighted)}, model {len(model_weighted)}")
        candidates = [(m, f, ws) for (m, ws), f in zip(model_weighted, file_weighted)]
    pairs = []
    for model_layer, file_layer, ws in candidates:
        order, problem = _pair(ws, file_shapes[file_layer])
        if problem:
            report.mismatched.append((model_layer, problem))
            continue
        pairs.append((model_layer, file_layer, order))
        report.loaded.append(model_layer)
        report.n_weights += len(ws)
        report.n_values += sum(int(np.prod(shape)) for _, shape in ws)
    return report, pairs


def load_weights(keras_model, path, by_name: bool = True, exclude: Iterable[str] = (),
                 skip_mismatch: bool = False) -> LoadReport:
    """Load a Matterport/Keras 2 HDF5 weight file into a Keras 3 model by layer name.

    Layers named in `exclude` and layers absent from the file keep their values (e.g. PREPROC
    when a 3-channel COCO file goes into a 5-channel model); file layers the model lacks are
    ignored (e.g. res4g..res4w of a ResNet-101 file in a ResNet-50 model). Every count and
    shape is checked first: a mismatch raises WeightMismatchError and assigns nothing, unless
    skip_mismatch=True, which skips the mismatched layers (listed in the report). A file that
    shares no weighted layer with the model raises InputError.
    """
    entries = weight_entries(keras_model)
    model_shapes = [(g, [(n, tuple(int(d) for d in v.shape)) for n, v in es])
                    for g, es in entries]
    file_shapes = read_weight_shapes(path)
    report, pairs = plan_load(model_shapes, file_shapes, path, by_name, exclude)
    if report.mismatched and not skip_mismatch:
        raise WeightMismatchError(report)
    wanted = [g for g, es in model_shapes if es and g not in report.excluded]
    if wanted and not pairs and not report.mismatched:
        weighted = [layer for layer, ws in file_shapes.items() if ws]
        more = ", ..." if len(weighted) > 5 else ""
        raise InputError(path, f"shares no weighted layer with the model (the file has "
                               f"{len(weighted)}: {', '.join(weighted[:5])}{more}); wrong file?")
    variables = dict(entries)
    assignments = []
    with open_weight_root(path) as (root, _):  # read everything before assigning anything
        for model_layer, file_layer, order in pairs:
            arrays = read_group_arrays(path, root, file_layer)
            for (_, variable), i in zip(variables[model_layer], order):
                name, value = arrays[i]
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise InputError(path, f"weight '{file_layer}/{name}' holds NaN or infinite "
                                           "values (a corrupted or diverged file); nothing "
                                           "was loaded")
                assignments.append((variable, value.astype(variable.dtype, copy=False)))
    for variable, value in assignments:
        variable.assign(value)
    return report
