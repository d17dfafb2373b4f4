"""The detector's input image: RGB, or the 5-channel Mask R-CNN+ stack [R, G, B, distance, H].

Extra channels are made on the fly when not given as files, and scaled to uint8 exactly as in
training (MEAN_PIXEL is subtracted later, inside the model's molding), by the model's
CHANNEL_SCALING:
- "per_image" (the paper): each map's own maximum becomes 255. The input a nucleus gets then
  depends on the image it was cut from, so it is computed on the whole input image, also when
  the image is later cut into tiles;
- "fixed": a constant per channel (CHANNEL_SCALE_DISTANCE px and CHANNEL_SCALE_HSTAIN optical
  density become 255, values above are clipped). The same nucleus gets the same input in any
  tile, block or slide.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.io import InputError, read_float_map

HSTAIN_SUFFIXES = ("_hstain.tif", "_hstain.tiff", "_hstain.npy", ".tif", ".tiff", ".npy")
DISTANCE_SUFFIXES = ("_dist.tif", "_dist.tiff", "_dist.npy", "_unet.npy", ".tif", ".tiff",
                     ".npy")


SCALINGS = ("per_image", "fixed")
#: the extra input channels after R, G, B, in their fixed order
EXTRA_NAMES = ("distance", "hematoxylin")
#: `nucseg train --inputs` -> the extra channels
INPUT_SETS = {"rgb": (), "rgb+distance": ("distance",), "rgb+h": ("hematoxylin",),
              "rgb+distance+h": EXTRA_NAMES}


def extra_channels(config) -> tuple[str, ...]:
    """The extra channels a model takes after R, G, B: EXTRA_CHANNELS, or by channel count
    (3: none, 5: distance and hematoxylin, the paper's). A 4-channel model must name its one
    extra channel (the input ablation of the paper's Figure 5)."""
    count = int(getattr(config, "IMAGE_CHANNEL_COUNT", 3))
    named = getattr(config, "EXTRA_CHANNELS", None)
    if named is None:
        if count in (3, 5):
            return () if count == 3 else EXTRA_NAMES
        raise ValueError(f"IMAGE_CHANNEL_COUNT {count} needs EXTRA_CHANNELS (which of "
                         f"{', '.join(EXTRA_NAMES)} follow R, G, B)")
    named = tuple(str(n) for n in named)
    if any(n not in EXTRA_NAMES for n in named) or len(set(named)) != len(named) or \
            list(named) != [n for n in EXTRA_NAMES if n in named]:
        raise ValueError(f"EXTRA_CHANNELS must be a subset of {list(EXTRA_NAMES)} in that "
                         f"order, got {list(named)}")
    if len(named) != count - 3:
        raise ValueError(f"EXTRA_CHANNELS names {len(named)} channel(s) but IMAGE_CHANNEL_COUNT "
                         f"is {count} (3 + extras)")
    return named


@dataclass(frozen=True)
class ChannelScaling:
    """How the float distance and hematoxylin maps become the model's uint8 channels.

    The fixed defaults are the medians, over the 30 MoNuSeg 2018 training tiles, of each tile's
    own maximum (ground-truth distance 18.4 px, hematoxylin OD 0.304), so a fixed-scale input
    looks like the paper's per-image one on a typical tile.
    """

    mode: str = "per_image"
    distance_px: float = 18.0
    hstain_od: float = 0.30

    def __post_init__(self):
        if self.mode not in SCALINGS:
            raise ValueError(f"channel scaling must be one of {', '.join(SCALINGS)}, "
                             f"got {self.mode!r}")
        for name in ("distance_px", "hstain_od"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"channel scaling {name} must be a positive number, got {value}")

    @classmethod
    def from_config(cls, config) -> "ChannelScaling":
        """The scaling a model was trained with (configs without the keys: per image)."""
        return cls(str(getattr(config, "CHANNEL_SCALING", "per_image")),
                   float(getattr(config, "CHANNEL_SCALE_DISTANCE", cls.distance_px)),
                   float(getattr(config, "CHANNEL_SCALE_HSTAIN", cls.hstain_od)))

    @classmethod
    def parse(cls, value) -> "ChannelScaling":
        """From a mode name, a dict (as kept in train.yaml) or a ChannelScaling."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        return cls(str(value or "per_image"))

    def config_overrides(self) -> dict:
        return {"CHANNEL_SCALING": self.mode, "CHANNEL_SCALE_DISTANCE": float(self.distance_px),
                "CHANNEL_SCALE_HSTAIN": float(self.hstain_od)}

    def as_dict(self) -> dict:
        return {"mode": self.mode, "distance_px": float(self.distance_px),
                "hstain_od": float(self.hstain_od)}

    def _scale(self, data: np.ndarray, full_scale: float) -> np.ndarray:
        from nucseg.distance import scale_to_uint8_range

        if self.mode == "per_image":
            return scale_to_uint8_range(data)
        data = np.asarray(data, dtype=np.float64)
        return np.clip(data / full_scale * 255.0, 0, 255).astype(np.uint8)

    def distance(self, dist: np.ndarray) -> np.ndarray:
        return self._scale(dist, self.distance_px)

    def hstain(self, h: np.ndarray) -> np.ndarray:
        return self._scale(h, self.hstain_od)

    def stack(self, rgb: np.ndarray, dist: np.ndarray | None, h: np.ndarray | None,
              extras=EXTRA_NAMES) -> np.ndarray:
        """[R, G, B, distance, H] uint8, or the extra channels named in `extras`."""
        planes = {"distance": lambda: self.distance(dist), "hematoxylin": lambda: self.hstain(h)}
        return np.dstack([rgb] + [planes[name]() for name in extras])


@dataclass
class ChannelSources:
    """Where the extra channels come from (files win over computing them)."""

    hstain_dir: Path | None = None
    distance_dir: Path | None = None
    distance_model: object | None = None      # a nucseg.unet.LoadedUNet
    stain_matrix: np.ndarray | None = None


def find_map(directory, stem: str, suffixes, what: str) -> Path:
    """`<directory>/<stem><suffix>` for the first suffix that exists."""
    directory = Path(directory)
    for suffix in suffixes:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(directory / f"{stem}{suffixes[0]}",
                     f"no {what} map for image '{stem}' in {directory}")


def _read_map(path: Path, shape) -> np.ndarray:
    data = read_float_map(path)
    if data.shape != tuple(shape):
        raise InputError(path, f"map is {data.shape[0]}x{data.shape[1]} but the image is "
                               f"{shape[0]}x{shape[1]}")
    return data


def hematoxylin_map(rgb: np.ndarray, stem: str, sources: ChannelSources) -> np.ndarray:
    """Hematoxylin optical density (float32 HxW): from --hstain-dir or computed."""
    if sources.hstain_dir is not None:
        return _read_map(find_map(sources.hstain_dir, stem, HSTAIN_SUFFIXES, "hematoxylin"),
                         rgb.shape[:2])
    from nucseg.stain import hematoxylin

    return hematoxylin(rgb, sources.stain_matrix)


def distance_map(rgb: np.ndarray, stem: str, sources: ChannelSources,
                 hstain: np.ndarray | None = None) -> np.ndarray:
    """Distance map (float32 HxW): from --distance-dir or predicted by the U-Net."""
    if sources.distance_dir is not None:
        return _read_map(find_map(sources.distance_dir, stem, DISTANCE_SUFFIXES, "distance"),
                         rgb.shape[:2])
    if sources.distance_model is None:
        raise ValueError("the model takes a distance channel: give --distance-model DIR (a "
                         "U-Net) or --distance-dir DIR")
    from nucseg.unet import predict_distance

    return predict_distance(sources.distance_model, rgb, hstain)


def model_input(rgb: np.ndarray, channel_count: int, stem: str = "",
                sources: ChannelSources | None = None,
                scaling: ChannelScaling | None = None,
                extras: tuple | None = None) -> tuple[np.ndarray, dict]:
    """(HxWxC uint8 detector input, {"hstain": float map or None}) for an RGB uint8 image.
    `extras`: the extra channels (nucseg.prediction.channels.extra_channels); default by channel count."""
    sources = sources or ChannelSources()
    if extras is None:
        if channel_count not in (3, 5):
            raise ValueError(f"unsupported IMAGE_CHANNEL_COUNT {channel_count} without "
                             "EXTRA_CHANNELS: nucseg models take 3 (RGB), 4 (RGB + one of "
                             "distance, hematoxylin) or 5 channels")
        extras = () if channel_count == 3 else EXTRA_NAMES
    if not extras:
        return rgb, {"hstain": None}
    hstain = hematoxylin_map(rgb, stem, sources)
    dist = distance_map(rgb, stem, sources, hstain) if "distance" in extras else None
    return (scaling or ChannelScaling()).stack(rgb, dist, hstain, extras), {"hstain": hstain}
