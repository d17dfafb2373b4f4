"""`nucseg weights inspect`: what a weight file holds and what loading it into a model would do.

Comparing against a model needs only its weight names and shapes, so nothing is assigned and no
image is processed; building the graph for a config takes a few seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from nucseg.mrcnn.weights import file_architecture, plan_load
from nucseg.mrcnn.weights_h5 import describe_weight_file


def config_weight_shapes(config) -> list[tuple[str, list[tuple[str, tuple]]]]:
    """[(layer, [(weight name, shape)])] of every layer of the inference model of a config."""
    from nucseg.mrcnn.model import MaskRCNN
    from nucseg.mrcnn.weights import model_weight_shapes

    return model_weight_shapes(MaskRCNN(config).keras_model)


def inspect_weights(path, model_shapes=None, exclude: Iterable[str] = ()) -> dict:
    """A JSON-ready description of a weight file, with a load plan when a model is given."""
    info = describe_weight_file(path)
    layers = info.pop("layers")
    weighted = {name: ws for name, ws in layers.items() if ws}
    result = {
        "file": str(path), **info, **file_architecture(layers),
        "n_layers": len(layers), "n_weighted_layers": len(weighted),
        "n_tensors": sum(len(ws) for ws in weighted.values()),
        "n_values": int(sum(np.prod(shape) for ws in weighted.values() for _, shape, _ in ws)),
        "layers": [{"name": name, "weights": [{"name": n, "shape": list(shape), "dtype": dtype}
                                              for n, shape, dtype in ws]}
                   for name, ws in weighted.items()],
    }
    if model_shapes is not None:
        report, _ = plan_load(model_shapes, layers, path, by_name=True, exclude=exclude)
        status = {name: "load" for name in report.loaded}
        status.update({name: "excluded" for name in report.excluded})
        status.update({name: f"mismatch: {problem}" for name, problem in report.mismatched})
        status.update({name: "unused" for name in report.unused})
        for entry in result["layers"]:
            entry["status"] = status.get(entry["name"], "unused")
        result["missing"] = [{"name": name, "weights": [{"name": n, "shape": list(s)}
                                                        for n, s in ws]}
                             for name, ws in model_shapes if name in report.missing]
        result["plan"] = report.to_dict()
        result["plan_summary"] = report.summary()
    return result


def _shapes(weights) -> str:
    return "; ".join(f"{w['name'].split('/', 1)[-1] if w['name'].count('/') == 1 else w['name']}"
                     f" {tuple(w['shape'])}" for w in weights)


def format_inspection(result: dict) -> str:
    """Readable text: one line per weighted layer, then the plan's summary."""
    lines = [f"{Path(result['file']).name}: {result['layout']} layout, keras_version "
             f"{result['keras_version']}, backend {result['backend']}",
             f"{result['n_layers']} layers, {result['n_weighted_layers']} with weights, "
             f"{result['n_tensors']} tensors, {result['n_values']:,} values",
             f"looks like: backbone {result['backbone'] or '?'}, NUM_CLASSES "
             f"{result['num_classes'] or '?'}, {result['image_channels'] or '?'} input channels"]
    width = max((len(e["name"]) for e in result["layers"]), default=10)
    planned = "plan" in result
    for entry in result["layers"]:
        status = f"{entry['status'].split(':')[0]:<9} " if planned else ""
        lines.append(f"  {status}{entry['name']:<{width}}  {_shapes(entry['weights'])}")
    if planned:
        for entry in result["missing"]:
            lines.append(f"  {'missing':<9} {entry['name']:<{width}}  "
                         f"{_shapes(entry['weights'])}")
        lines.append(result["plan_summary"])
    return "\n".join(lines)
