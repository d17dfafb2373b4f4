"""Starting weights of a training run (`nucseg train --init`): a Matterport HDF5 file, a run
directory's newest checkpoint, or a shipped model by name, and the channel scaling a
fine-tuning run inherits from it."""
from __future__ import annotations

from pathlib import Path

HEAD_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask")


def init_weights(model, config, init, exclude=()) -> dict:
    """Load starting weights (a Matterport HDF5 file, a run directory's newest checkpoint or
    a shipped model's name) by layer name; the class-specific head layers are excluded automatically when the file was
    trained for another class count."""
    from nucseg.io import InputError
    from nucseg.model_files import newest_checkpoint
    from nucseg.models import named
    from nucseg.mrcnn.weights import load_weights
    from nucseg.mrcnn.weights_h5 import read_weight_shapes

    exclude = list(exclude)
    shipped = named(init)
    if shipped is not None:                       # a shipped model, by name
        init = shipped.weights
    if Path(init).is_dir():                       # a run directory: its newest checkpoint
        found = newest_checkpoint(Path(init))
        if found is None:
            raise InputError(init, "no checkpoint mask_rcnn_<name>_<epoch>.h5 in this folder")
        init = found
    shapes = read_weight_shapes(init)
    logits = shapes.get("mrcnn_class_logits") or []
    if logits and int(logits[0][1][-1]) != int(config.NUM_CLASSES):
        exclude += [n for n in HEAD_LAYERS if n not in exclude]
    report = load_weights(model, init, by_name=True, exclude=exclude)
    return {"path": str(init), "excluded": sorted(set(exclude)),
            "loaded_layers": len(getattr(report, "loaded", []) or [])}


def init_channel_scaling(init):
    """The channel scaling a fine-tuning run inherits: the shipped model's for `--init NAME`,
    else the paper's per-image scaling."""
    from nucseg.prediction.channels import ChannelScaling
    from nucseg.models import named

    shipped = named(init) if init not in (None, "", "none", "last") else None
    if shipped is None:
        return "per_image"
    from nucseg.mrcnn.config import Config

    return ChannelScaling.from_config(Config.from_yaml(shipped.config)).as_dict()
