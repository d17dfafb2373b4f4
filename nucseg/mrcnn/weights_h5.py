"""The Matterport (Keras 2 `save_weights`) HDF5 weight-file layout, read and written with h5py.

Keras 3 refuses to write this layout and reads it with different naming rules, so nucseg owns
both directions. The layout (docs/weights.md):

* root attributes `layer_names` (every top-level layer, weightless ones too), `backend`,
  `keras_version`; a list too long for HDF5's 64 KB object header is split into
  `layer_names0`, `layer_names1`, ...;
* one group per layer with a `weight_names` attribute; each weight is a dataset at
  `/<layer>/<weight name>`, e.g. `/conv1/conv1/kernel:0`, `/rpn_model/rpn_conv_shared/kernel:0`;
* files written by `model.save` hold all of this under a `model_weights` group.

This module knows nothing about Keras: groups are plain `(name, [(weight name, array)])` lists.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from nucseg.io import InputError, atomic_path

# Keras 2's limit for one attribute (HDF5 object headers hold 64 KB, minus bookkeeping).
HDF5_OBJECT_HEADER_LIMIT = 64512
STRING_FORMATS = ("str", "bytes")


# ---------------------------------------------------------------------------------------------
# attributes
# ---------------------------------------------------------------------------------------------
def _as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_list_attribute(group, name: str) -> list[str] | None:
    """A string-list attribute, whole or split into name0, name1, ...; None when absent.

    Accepts variable-length strings (h5py gives str) and fixed-length byte strings (bytes), and
    an empty float array, which is how Keras stores an empty list.
    """
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [_as_text(v) for chunk in chunks for v in np.atleast_1d(chunk)]


def _attribute_array(values: Sequence[str], string_format: str) -> np.ndarray:
    if not values:
        return np.asarray([], dtype=np.float64)  # what Keras 2 stores for an empty list
    if string_format == "bytes":
        return np.asarray([v.encode("utf-8") for v in values])  # fixed-length |S
    import h5py

    return np.asarray(values, dtype=h5py.string_dtype("utf-8" if _non_ascii(values) else "ascii"))


def _non_ascii(values: Sequence[str]) -> bool:
    return any(not v.isascii() for v in values)


def write_list_attribute(group, name: str, values: Sequence[str], string_format: str) -> None:
    """Write a string list the way Keras 2 does, split into name0, name1, ... when too long.

    The split size follows Keras 2's rule: the NumPy array of the names (4 bytes per character
    for str) must stay under HDF5_OBJECT_HEADER_LIMIT per chunk.
    """
    values = list(values)
    too_long = [v for v in values if len(v.encode("utf-8")) > HDF5_OBJECT_HEADER_LIMIT]
    if too_long:
        raise ValueError(f"name longer than {HDF5_OBJECT_HEADER_LIMIT} bytes: "
                         f"{too_long[0][:60]}...")
    measure = np.asarray(values if string_format == "str" else [v.encode() for v in values])
    n_chunks = 1
    while any(chunk.nbytes > HDF5_OBJECT_HEADER_LIMIT
              for chunk in np.array_split(measure, n_chunks)):
        n_chunks += 1
    if n_chunks == 1:
        group.attrs[name] = _attribute_array(values, string_format)
        return
    start = 0
    for i, chunk in enumerate(np.array_split(measure, n_chunks)):
        group.attrs[f"{name}{i}"] = _attribute_array(values[start:start + len(chunk)],
                                                     string_format)
        start += len(chunk)


def write_string_attribute(group, name: str, value: str, string_format: str) -> None:
    if string_format == "bytes":
        group.attrs[name] = np.bytes_(value.encode("utf-8"))
        return
    import h5py

    encoding = "ascii" if value.isascii() else "utf-8"
    group.attrs.create(name, data=value, dtype=h5py.string_dtype(encoding))


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_weight_root(path) -> Iterator[tuple[object, list[str]]]:
    """Open a weight file; yield (root group holding the layer groups, layer_names).

    The root is the file itself for save_weights files and `model_weights` for model.save files.
    Every failure becomes an InputError naming the file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weight file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 weight file ({_short(exc)})") from None
    with handle:
        root = handle
        names = read_list_attribute(root, "layer_names")
        if names is None and "model_weights" in handle:
            root = handle["model_weights"]
            names = read_list_attribute(root, "layer_names")
        if names is None:
            if "layers" in handle and "vars" in handle:
                raise InputError(path, "a Keras 3 .weights.h5 file, not the Matterport/Keras 2 "
                                       "layout: load it with keras_model.load_weights()")
            raise InputError(path, "no 'layer_names' attribute: not a Keras/Matterport weight "
                                   "file (neither save_weights nor model.save layout)")
        yield root, names


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:200]


def _group_entries(path, root, layer: str) -> list[tuple[str, object]]:
    """[(weight name, h5py dataset)] of one layer group, in weight_names order."""
    if layer not in root:
        raise InputError(path, f"layer '{layer}' is listed in layer_names but has no group")
    group = root[layer]
    names = read_list_attribute(group, "weight_names")
    if names is None:
        raise InputError(path, f"group '{layer}' has no 'weight_names' attribute")
    entries = []
    for name in names:
        try:
            dataset = group[name]
        except (KeyError, OSError) as exc:
            raise InputError(path, f"weight '{layer}/{name}' is missing or unreadable "
                                   f"({_short(exc)}); truncated file?") from None
        entries.append((name, dataset))
    return entries


def read_weight_shapes(path) -> "OrderedDict[str, list[tuple[str, tuple[int, ...], str]]]":
    """{layer: [(weight name, shape, dtype name)]} in layer_names order, without reading values."""
    out = OrderedDict()
    with open_weight_root(path) as (root, layer_names):
        for layer in layer_names:
            out[layer] = [(name, tuple(int(d) for d in ds.shape), str(ds.dtype))
                          for name, ds in _group_entries(path, root, layer)]
    return out


def read_weight_file(path) -> "OrderedDict[str, list[tuple[str, np.ndarray]]]":
    """{layer: [(weight name, array)]} for every layer in layer_names order (weightless: [])."""
    out = OrderedDict()
    with open_weight_root(path) as (root, layer_names):
        for layer in layer_names:
            out[layer] = [(name, read_dataset(path, layer, name, ds))
                          for name, ds in _group_entries(path, root, layer)]
    return out


def read_dataset(path, layer: str, name: str, dataset) -> np.ndarray:
    try:
        return np.asarray(dataset[()])
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(path, f"cannot read weight '{layer}/{name}' ({_short(exc)}); "
                               "truncated file?") from None


def read_group_arrays(path, root, layer: str) -> list[tuple[str, np.ndarray]]:
    """One layer's weights; for loaders that read group by group after validating shapes."""
    return [(name, read_dataset(path, layer, name, ds))
            for name, ds in _group_entries(path, root, layer)]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def write_weight_file(path, groups: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
                      keras_version: str, backend: str = "tensorflow",
                      string_format: str = "str") -> Path:
    """Write groups in the Keras 2 save_weights layout; atomic (temp file, then rename).

    string_format "str" writes variable-length strings, as tf-keras 2.x does (and as the
    reference fixture holds); "bytes" writes fixed-length byte strings, as Keras 2.0-2.2 did:
    the only form that the Keras of Matterport's time (which calls .decode on every name) reads.
    """
    import h5py

    if string_format not in STRING_FORMATS:
        raise ValueError(f"string_format must be one of {STRING_FORMATS}, got {string_format!r}")
    names = [name for name, _ in groups]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate layer names: {dup}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            write_list_attribute(f, "layer_names", names, string_format)
            write_string_attribute(f, "backend", backend, string_format)
            write_string_attribute(f, "keras_version", keras_version, string_format)
            for layer, weights in groups:
                group = f.create_group(layer)
                write_list_attribute(group, "weight_names", [w for w, _ in weights],
                                     string_format)
                for weight_name, value in weights:
                    group.create_dataset(weight_name, data=np.asarray(value))
            # tf-keras 2.x adds this (empty) group for weights owned by the model itself.
            if "top_level_model_weights" not in f:
                write_list_attribute(f.create_group("top_level_model_weights"),
                                     "weight_names", [], string_format)
    return path


def describe_weight_file(path) -> dict:
    """Layout facts for `nucseg weights inspect`: which layout, writer versions, shapes."""
    with open_weight_root(path) as (root, _):
        layout = "model.save (model_weights group)" if root.name == "/model_weights" \
            else "save_weights"
        info = {"layout": layout,
                "keras_version": _optional_text(root.attrs.get("keras_version")),
                "backend": _optional_text(root.attrs.get("backend"))}
    info["layers"] = read_weight_shapes(path)
    return info


def _optional_text(value):
    return None if value is None else _as_text(value)
