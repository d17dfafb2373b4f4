"""U-Net model directories: `unet.json` (what the network is) + `unet.weights.h5` (Keras 3).

The JSON config is the contract between training and prediction: width, input channels, input
normalisation and format version. Loading rebuilds the network from it and checks the weights
file against it before Keras touches anything, so a mismatch is one sentence naming what differs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nucseg._version import __version__
from nucseg.io import InputError, atomic_path

FORMAT = "nucseg-distance-unet"
FORMAT_VERSION = 1
CONFIG_NAME = "unet.json"
WEIGHTS_NAME = "unet.weights.h5"
CHANNEL_SETS = {3: ["R", "G", "B"], 4: ["R", "G", "B", "H"]}
NORMALISATION = "per-image, per-channel: (x - mean) / std over the whole image (std < 1e-6 -> 1)"
TARGET = "per-nucleus Euclidean distance in pixels (nucseg.distance.label_distance_map)"


@dataclass
class UNetConfig:
    """What a saved U-Net is; `training` holds the options and progress of its training run."""
    width: int = 32
    channels: list[str] = field(default_factory=lambda: ["R", "G", "B"])
    dropout: float = 0.1
    training: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def uses_hematoxylin(self) -> bool:
        return "H" in self.channels

    def __post_init__(self):
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"U-Net width must be a positive integer, got {self.width!r}")
        if list(self.channels) not in CHANNEL_SETS.values():
            raise ValueError(f"U-Net channels must be one of {list(CHANNEL_SETS.values())}, "
                             f"got {self.channels!r}")
        self.channels = list(self.channels)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "nucseg_version": __version__, "width": self.width,
                "in_channels": self.in_channels, "channels": self.channels,
                "depth": 5, "dropout": self.dropout, "input_normalisation": NORMALISATION,
                "target": TARGET, "training": self.training}

    @classmethod
    def from_dict(cls, data: dict, source="config") -> "UNetConfig":
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: not a nucseg distance U-Net config "
                             f"(format {data.get('format')!r}, expected {FORMAT!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version!r} is not supported by nucseg "
                             f"{__version__} (it reads version {FORMAT_VERSION})")
        for key in ("width", "channels"):
            if key not in data:
                raise ValueError(f"{source}: missing key {key!r}")
        if data.get("depth", 5) != 5:
            raise ValueError(f"{source}: depth {data['depth']} is not supported (only 5)")
        if "in_channels" in data and data["in_channels"] != len(data["channels"]):
            raise ValueError(f"{source}: in_channels {data['in_channels']} does not match "
                             f"channels {data['channels']}")
        try:
            return cls(width=data["width"], channels=data["channels"],
                       dropout=float(data.get("dropout", 0.1)),
                       training=dict(data.get("training", {})))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def mismatches(self, other: "UNetConfig") -> list[str]:
        """Differences in what defines the network (not training options), as phrases."""
        out = []
        if self.width != other.width:
            out.append(f"width {self.width} vs {other.width}")
        if self.channels != other.channels:
            out.append(f"channels {'+'.join(self.channels)} vs {'+'.join(other.channels)}")
        return out


def read_config(model_dir) -> UNetConfig:
    path = Path(model_dir) / CONFIG_NAME
    if not Path(model_dir).is_dir():
        raise InputError(model_dir, "model directory not found")
    if not path.is_file():
        raise InputError(path, "missing: not a U-Net model directory "
                               "(expected unet.json + unet.weights.h5)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read U-Net config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "U-Net config must be a JSON object")
    try:
        return UNetConfig.from_dict(data, source=str(path))
    except ValueError as exc:
        raise InputError(path, str(exc).removeprefix(f"{path}: ")) from None


def write_config(model_dir, config: UNetConfig) -> Path:
    path = Path(model_dir) / CONFIG_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


def save_weights(keras_model, path) -> Path:
    """Keras 3 native weights, written atomically (Keras wants the .weights.h5 suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_name(tmp.name.removesuffix(".h5") + ".weights.h5")
        try:
            keras_model.save_weights(str(keras_tmp))
            keras_tmp.replace(tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)
    return path


def weight_file_shapes(path) -> list[tuple[str, tuple]]:
    """(dataset name, shape) of every array in a Keras 3 weights file, in file order."""
    import h5py

    found = []
    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(lambda name, obj: found.append((name, tuple(obj.shape)))
                          if isinstance(obj, h5py.Dataset) else None)
    except OSError as exc:
        raise InputError(path, f"cannot read weights file ({exc})") from None
    return found


def check_weights(path, keras_model, config: UNetConfig) -> None:
    """Raise InputError saying how the weights file differs from the network `config` builds."""
    found = weight_file_shapes(path)
    expected = sorted(tuple(w.shape) for w in keras_model.weights)
    if sorted(shape for _, shape in found) == expected:
        return
    first = dict(found).get("layers/conv2d/vars/0")
    if first is not None and len(first) == 4:
        file_channels, file_width = first[2], first[3]
        diffs = []
        if file_width != config.width:
            diffs.append(f"the weights have width {file_width}, unet.json says {config.width}")
        if file_channels != config.in_channels:
            diffs.append(f"the weights take {file_channels} input channels, unet.json says "
                         f"{config.in_channels} ({'+'.join(config.channels)})")
        if diffs:
            raise InputError(path, "does not match unet.json: " + "; ".join(diffs))
    raise InputError(path, f"does not match unet.json: {len(found)} arrays in the file, "
                           f"{len(expected)} in a width-{config.width} "
                           f"{config.in_channels}-channel U-Net, or their shapes differ")


@dataclass
class LoadedUNet:
    """A U-Net ready to predict: the Keras model and the config it was built from."""
    keras_model: object
    config: UNetConfig
    model_dir: Path


def load_unet(model_dir) -> LoadedUNet:
    """Rebuild the network from unet.json, check and load unet.weights.h5."""
    from nucseg.unet.model import build_unet

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(weights, "missing: the model directory has no weights "
                                  "(training not started or the file was moved)")
    keras_model = build_unet(config.width, config.in_channels, config.dropout)
    check_weights(weights, keras_model, config)
    keras_model.load_weights(str(weights))
    return LoadedUNet(keras_model, config, model_dir)
