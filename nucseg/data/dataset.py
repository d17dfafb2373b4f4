"""Training sets on disk: images and instance labels paired by stem, optional extra channels.

A sample is the model's channel stack as uint8 (R, G, B[, distance, hematoxylin]) plus its
instance label map and, for multi-class data (PanNuke), a class id per instance. When the
hematoxylin or distance directory is absent the channel is computed: hematoxylin by colour
deconvolution, the distance map from the ground-truth labels (as the paper trained).
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nucseg.io import (IMAGE_EXTENSIONS, LABEL_EXTENSIONS, InputError, expand_inputs,
                       pair_by_stem, read_csv_table, read_float_map, read_labels, read_rgb)

LABEL_SUFFIXES = ("", "_labels", "_label", "_mask", "_masks")
HSTAIN_SUFFIXES = ("", "_hstain", "_h")
DISTANCE_SUFFIXES = ("", "_dist", "_distance")
MAP_EXTENSIONS = (".tif", ".tiff", ".png", ".npy")


@dataclass
class Sample:
    name: str
    image: np.ndarray                      # H x W x C uint8 model channels
    labels: np.ndarray                     # H x W int32 instance ids, 0 = background
    classes: dict = field(default_factory=dict)   # instance id -> class id (absent: 1)

    def class_of(self, instance_id: int) -> int:
        return int(self.classes.get(int(instance_id), 1))


# ---------------------------------------------------------------------------------------------
# label pre-processing (MoNuSeg rank-6 method options)
# ---------------------------------------------------------------------------------------------
def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside each instance (only background pixels are filled)."""
    out = labels.copy()
    for instance_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        filled = ndimage.binary_fill_holes(labels[box] == instance_id)
        region = out[box]
        region[filled & (region == 0)] = instance_id
    return out


def split_components(labels: np.ndarray, classes: dict | None = None) -> tuple[np.ndarray, dict]:
    """Give every connected component (8-connectivity) of an instance its own id.

    Returns the new label map and the class table carried over to the new ids.
    """
    classes = dict(classes or {})
    out = labels.copy()
    next_id = int(labels.max()) + 1 if labels.size else 1
    for instance_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        parts, count = ndimage.label(labels[box] == instance_id, structure=np.ones((3, 3)))
        for part in range(2, count + 1):
            out[box][parts == part] = next_id
            if instance_id in classes:
                classes[next_id] = classes[instance_id]
            next_id += 1
    return out, classes


def compose_channels(rgb: np.ndarray, labels: np.ndarray | None, channels: int,
                     hstain: np.ndarray | None = None,
                     distance: np.ndarray | None = None, scaling=None,
                     extras=None) -> np.ndarray:
    """The uint8 model input: RGB, or RGB + distance + hematoxylin scaled to 0-255 by
    `scaling` (a nucseg.prediction.channels.ChannelScaling; default per image, the paper's), the same
    scaling `nucseg predict` applies.

    Missing maps are computed: hematoxylin from the RGB, the distance map from `labels`.
    `extras` names the extra channels (4-channel models); default by channel count.
    """
    from nucseg.prediction.channels import EXTRA_NAMES, ChannelScaling
    from nucseg.distance import label_distance_map
    from nucseg.stain import hematoxylin

    if extras is None:
        if channels not in (3, 5):
            raise ValueError(f"IMAGE_CHANNEL_COUNT {channels} needs EXTRA_CHANNELS")
        extras = () if channels == 3 else EXTRA_NAMES
    extras = tuple(extras)
    if not extras:
        return np.ascontiguousarray(rgb)
    if distance is None and "distance" in extras:
        if labels is None:
            raise ValueError("a distance map is needed (no labels to compute it from)")
        distance = label_distance_map(labels)
    if hstain is None and "hematoxylin" in extras:
        hstain = hematoxylin(rgb)
    return ChannelScaling.parse(scaling).stack(rgb, distance, hstain, extras)


# ---------------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------------
def read_class_table(path) -> tuple[dict, dict]:
    """classes.csv (image, label, class_id[, class_name]) -> ({image: {label: class}}, names)."""
    table: dict = {}
    names: dict = {}
    for line, row in read_csv_table(path, ("image", "label", "class_id"), "class table"):
        try:
            label, class_id = int(row["label"]), int(row["class_id"])
        except ValueError:
            raise InputError(path, f"line {line}: label and class_id must be integers") from None
        if class_id < 1:
            raise InputError(path, f"line {line}: class ids start at 1 (0 is background); "
                                   f"got {class_id}")
        table.setdefault(row["image"], {})[label] = class_id
        if row.get("class_name"):
            names[class_id] = row["class_name"]
    return table, names


def _pair_optional(images: list[Path], directory, suffixes, what: str) -> dict:
    if directory is None:
        return {}
    files = expand_inputs([directory], MAP_EXTENSIONS)
    pairs, lonely, _ = pair_by_stem(images, files, suffixes)
    if lonely:
        raise InputError(directory, f"no {what} map for {len(lonely)} image(s), e.g. "
                                    f"{lonely[0].name} (names must share the image's stem)")
    return {image.stem: other for image, other in pairs}


class Dataset:
    """Images + labels paired by stem; samples are loaded lazily and cached."""

    def __init__(self, images_dir, labels_dir, hstain_dir=None, distance_dir=None,
                 channels: int = 5, classes=None, fill_holes: bool = False,
                 split_components: bool = False, names=None, cache: bool = True,
                 channel_scaling="per_image", extras=None):
        from nucseg.prediction.channels import ChannelScaling

        self.scaling = ChannelScaling.parse(channel_scaling)
        self.extras = None if extras is None else tuple(extras)
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        for d in (self.images_dir, self.labels_dir):
            if not d.is_dir():
                raise InputError(d, "not a directory")
        images = expand_inputs([self.images_dir], IMAGE_EXTENSIONS)
        labels = expand_inputs([self.labels_dir], LABEL_EXTENSIONS)
        pairs, lonely, _ = pair_by_stem(images, labels, LABEL_SUFFIXES)
        if lonely:
            warnings.warn(f"{len(lonely)} image(s) without a label map are ignored, e.g. "
                          f"{lonely[0].name}", stacklevel=2)
        if names is not None:
            wanted = set(names)
            pairs = [p for p in pairs if p[0].stem in wanted]
        if not pairs:
            raise InputError(self.images_dir, f"no image pairs with a label map in "
                                              f"{self.labels_dir} (matched by file stem)")
        self.pairs = pairs
        self.names = [image.stem for image, _ in pairs]
        self.channels = int(channels)
        self.hstain = _pair_optional([p[0] for p in pairs], hstain_dir, HSTAIN_SUFFIXES,
                                     "hematoxylin")
        self.distance = _pair_optional([p[0] for p in pairs], distance_dir, DISTANCE_SUFFIXES,
                                       "distance")
        self.class_table, self.class_names = ({}, {}) if classes is None \
            else read_class_table(classes)
        self.options = dict(fill_holes=fill_holes, split_components=split_components)
        self._source = dict(images_dir=images_dir, labels_dir=labels_dir, hstain_dir=hstain_dir,
                            distance_dir=distance_dir, classes=classes)
        self._cache = {} if cache else None
        self._lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        """Classes including background: 2 for plain instance labels, 1 + max id with a table."""
        ids = [c for per_image in self.class_table.values() for c in per_image.values()]
        return 1 + max(ids + list(self.class_names) + [1])

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self) -> dict:
        """Everything needed to rebuild this data set (kept in a run's train.yaml)."""
        return {**{k: None if v is None else str(Path(v).resolve())
                   for k, v in self._source.items()},
                "channels": self.channels, "names": list(self.names),
                "channel_scaling": self.scaling.as_dict(),
                "extras": None if self.extras is None else list(self.extras), **self.options}

    @classmethod
    def from_description(cls, description: dict) -> "Dataset":
        return cls(**description)

    def subset(self, names) -> "Dataset":
        """The same data set restricted to the given stems (folds)."""
        return Dataset(**self._source, channels=self.channels, names=list(names),
                       cache=self._cache is not None, channel_scaling=self.scaling,
                       extras=self.extras, **self.options)

    def check(self, progress: bool = False) -> None:
        """Read every sample once (filling the cache), so a bad file stops training before it
        starts; the error lists every unusable pair, not just the first."""
        from tqdm import tqdm

        problems = []
        for index in tqdm(range(len(self)), desc="check data", unit="image",
                          disable=not progress or len(self) < 2):
            try:
                self.load(index)
            except (InputError, ValueError, OSError) as exc:
                problems.append(str(exc))
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ValueError(f"{len(problems)} of {len(self)} training images are unusable: "
                             + "; ".join(problems[:5]) + more)

    def load(self, index: int) -> Sample:
        if self._cache is not None:
            with self._lock:
                hit = self._cache.get(index)
            if hit is not None:
                return hit
        sample = self._read(index)
        if self._cache is not None:
            with self._lock:
                self._cache[index] = sample
        return sample

    def _read(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        rgb = read_rgb(image_path)
        labels = read_labels(label_path).astype(np.int32)
        if labels.shape != rgb.shape[:2]:
            raise InputError(label_path, f"label map is {labels.shape[0]}x{labels.shape[1]} but "
                                         f"its image is {rgb.shape[0]}x{rgb.shape[1]}")
        name = image_path.stem
        classes = dict(self.class_table.get(name, {}))
        if self._source["classes"] is not None:
            ids = np.unique(labels)
            unclassed = [int(i) for i in ids[ids > 0] if int(i) not in classes]
            if unclassed:
                raise InputError(self._source["classes"], f"no class for {len(unclassed)} "
                                 f"nucleus label(s) of image {name} (first: {unclassed[0]})")
        if self.options["fill_holes"]:
            labels = fill_holes(labels)
        if self.options["split_components"]:
            labels, classes = split_components(labels, classes)
        hstain = distance = None
        if name in self.hstain:
            hstain = self._map(self.hstain[name], rgb.shape[:2])
        if name in self.distance:
            distance = self._map(self.distance[name], rgb.shape[:2])
        image = compose_channels(rgb, labels, self.channels, hstain, distance, self.scaling,
                                 self.extras)
        return Sample(name, image, labels, classes)

    @staticmethod
    def _map(path, shape) -> np.ndarray:
        data = read_float_map(path)
        if data.shape != tuple(shape):
            raise InputError(path, f"map is {data.shape[0]}x{data.shape[1]}, its image "
                                   f"{shape[0]}x{shape[1]}")
        return data
