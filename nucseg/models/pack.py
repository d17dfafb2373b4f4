"""`nucseg models pack`: a training run's checkpoint + U-Net -> a shipped model folder.

Weights are stored as float16 (half the bytes; loaded back as float32): the repository keeps
every committed version forever, so a model is packed once, when final.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from nucseg.io import InputError, atomic_path, sha256
from nucseg.models import MANIFEST, MANIFEST_FORMAT

FLOAT16_MAX = float(np.finfo(np.float16).max)


def to_float16(array: np.ndarray, where: str) -> np.ndarray:
    """A float array as float16; refuses values that would overflow to infinity."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        return array
    if not np.isfinite(array).all():
        raise InputError(where, "holds NaN or infinite values")
    if array.size and float(np.abs(array).max()) > FLOAT16_MAX:
        raise InputError(where, f"has values beyond float16's range (+-{FLOAT16_MAX:g})")
    return array.astype(np.float16)


def pack_mask_rcnn_weights(source, target) -> Path:
    """Matterport-layout .h5 -> the same layout with float16 arrays."""
    from nucseg.mrcnn.weights_h5 import describe_weight_file, read_weight_file, write_weight_file

    groups = [(layer, [(name, to_float16(value, f"{source}: {layer}/{name}"))
                       for name, value in weights])
              for layer, weights in read_weight_file(source).items()]
    keras_version = describe_weight_file(source).get("keras_version") or "2.1.6"
    return write_weight_file(target, groups, keras_version=str(keras_version))


def pack_unet_weights(source, target) -> Path:
    """Keras 3 .weights.h5 -> the same file with float16 arrays (Keras loads them as float32)."""
    import h5py

    def copy(src_group, dst_group):
        for key, value in src_group.attrs.items():
            dst_group.attrs[key] = value
        for key, item in src_group.items():
            if isinstance(item, h5py.Group):
                copy(item, dst_group.create_group(key))
            else:
                data = to_float16(item[()], f"{source}: {item.name}")
                dataset = dst_group.create_dataset(key, data=data)
                for k, v in item.attrs.items():
                    dataset.attrs[k] = v

    target = Path(target)
    with atomic_path(target) as tmp, h5py.File(source, "r") as src, h5py.File(tmp, "w") as dst:
        copy(src, dst)
    return target


RESERVED_KEYS = ("format", "format_version", "name", "weights", "config", "unet", "thresholds",
                 "files")


def pack_model(weights, config, out_dir, name: str, unet_dir=None, thresholds: dict | None = None,
               info: dict | None = None, model_card=None) -> Path:
    """Write `out_dir` (= nucseg/models/<name>/ to ship it): float16 weights, config, U-Net,
    MODEL.md and model.yaml with every file's sha256. Refuses a non-empty `out_dir`.

    The folder is built under a temporary name beside `out_dir` and renamed when complete, so
    a failure (a bad U-Net folder, NaN weights) leaves nothing behind.
    """
    from nucseg.mrcnn import Config

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "exists and is not empty; pack into a new folder")
    clash = sorted(set(info or {}) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"--info may not set {', '.join(clash)} (the packer writes them)")
    Config.from_yaml(config)                                  # refuse a config nucseg can't read
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.packing-", dir=out_dir.parent))
    try:
        _write_model_folder(building, weights, config, name, unet_dir, thresholds, info,
                            model_card)
        if out_dir.exists():
            out_dir.rmdir()                                   # empty, checked above
        building.rename(out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def _write_model_folder(folder: Path, weights, config, name, unet_dir, thresholds, info,
                        model_card) -> None:
    files = {"mask_rcnn.h5": pack_mask_rcnn_weights(weights, folder / "mask_rcnn.h5")}
    shutil.copyfile(config, folder / "config.yaml")
    files["config.yaml"] = folder / "config.yaml"
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "name": name,
                "weights": "mask_rcnn.h5", "config": "config.yaml"}
    if unet_dir is not None:
        unet_out = folder / "unet"
        unet_out.mkdir()
        shutil.copyfile(Path(unet_dir) / "unet.json", unet_out / "unet.json")
        files["unet/unet.json"] = unet_out / "unet.json"
        files["unet/unet.weights.h5"] = pack_unet_weights(Path(unet_dir) / "unet.weights.h5",
                                                          unet_out / "unet.weights.h5")
        manifest["unet"] = "unet"
    if model_card is not None:
        shutil.copyfile(model_card, folder / "MODEL.md")
        files["MODEL.md"] = folder / "MODEL.md"
    manifest.update(info or {})
    manifest["thresholds"] = dict(thresholds or {})
    manifest["files"] = {key: sha256(path) for key, path in sorted(files.items())}
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
