"""The detector's input image: RGB, or the 5-channel Mask R-CNN+ stack [R, G, B, distance, H].

Extra channels are made on the fly when not given as files, and normalised as in training:
each map is scaled per image so its maximum becomes 255 and cast to uint8 (MEAN_PIXEL is
subtracted later, inside the model's molding). The scaling uses the whole input image, also when
the image is later cut into tiles, so a nucleus gets the same input whichever tile sees it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.io import InputError, read_float_map

HSTAIN_SUFFIXES = ("_hstain.tif", "_hstain.tiff", "_hstain.npy", ".tif", ".tiff", ".npy")
DISTANCE_SUFFIXES = ("_dist.tif", "_dist.tiff", "_dist.npy", "_unet.npy", ".tif", ".tiff",
                     ".npy")


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
        raise ValueError("the model takes 5 channels (RGB, distance, hematoxylin): give "
                         "--distance-model DIR (a U-Net) or --distance-dir DIR")
    from nucseg.unet import predict_distance

    return predict_distance(sources.distance_model, rgb, hstain)


def model_input(rgb: np.ndarray, channel_count: int, stem: str = "",
                sources: ChannelSources | None = None) -> tuple[np.ndarray, dict]:
    """(HxWxC uint8 detector input, {"hstain": float map or None}) for an RGB uint8 image."""
    sources = sources or ChannelSources()
    if channel_count == 3:
        return rgb, {"hstain": None}
    if channel_count != 5:
        raise ValueError(f"unsupported IMAGE_CHANNEL_COUNT {channel_count}: nucseg models take "
                         "3 (RGB) or 5 (RGB, distance, hematoxylin) channels")
    from nucseg.distance import distance_model_channel
    from nucseg.stain import hematoxylin_model_channel

    hstain = hematoxylin_map(rgb, stem, sources)
    dist = distance_map(rgb, stem, sources, hstain)
    stack = np.concatenate([rgb, distance_model_channel(dist)[..., None],
                            hematoxylin_model_channel(hstain)[..., None]], axis=-1)
    return stack, {"hstain": hstain}
