"""One ensemble member's raw detections on one image, and its .npz file.

A member is one (model, TTA transform) pair. Its detections are already mapped back to the
original image frame, so members from different models, views or machines merge directly.

Soft masks are kept at 8-bit precision (value / 255) from the moment a member is made, so a
member merged in memory and the same member written to .npz and read back are bit-identical:
`nucseg merge` on saved members gives exactly what `nucseg predict` merges itself.

File format (`save_member`, numpy .npz, no pickled objects):
    format        int, 1
    rois          (N, 4) int32 [y1, x1, y2, x2], original-image pixels, exclusive ends
    scores        (N,) float32
    class_ids     (N,) int32
    mask_data     (sum of box areas,) uint8: each box's soft mask (0-255), row-major,
                  concatenated in detection order; mask i has shape (y2 - y1, x2 - x1)
    image_shape   (2,) int64 (H, W)
    model         str, the model's name or path
    transform     str, the TTA view ("identity", "hflip", "vflip", "hsv", ...)
    image         str, optional: the input image's path, so members can be merged later
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


def quantize_mask(mask: np.ndarray) -> np.ndarray:
    """Soft probabilities rounded to the 256 levels a member file stores (float32)."""
    q = np.rint(np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0) * 255.0)
    return q.astype(np.uint8).astype(np.float32) / np.float32(255.0)


def _mask_bytes(mask: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class Member:
    """Detections of one (model, transform) pair in original-image coordinates."""

    rois: np.ndarray                      # (N, 4) int32
    scores: np.ndarray                    # (N,) float32
    class_ids: np.ndarray                 # (N,) int32
    masks: list                           # N float32 arrays, shape (y2 - y1, x2 - x1)
    image_shape: tuple                    # (H, W)
    model: str = ""
    transform: str = "identity"
    extra: dict = field(default_factory=dict)  # provenance not stored in the file (e.g. splits)
    image: str = ""                       # the input image's path (merging saved members)

    def __post_init__(self):
        self.rois = np.asarray(self.rois, dtype=np.int32).reshape(-1, 4)
        self.image = str(self.image)
        n = len(self.rois)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(n)
        self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))
        if len(self.masks) != n:
            raise ValueError(f"member has {n} boxes but {len(self.masks)} masks")
        for i, (m, (y1, x1, y2, x2)) in enumerate(zip(self.masks, self.rois)):
            if np.shape(m) != (y2 - y1, x2 - x1):
                raise ValueError(f"mask {i} has shape {np.shape(m)}, box {y1, x1, y2, x2} "
                                 f"needs {(y2 - y1, x2 - x1)}")

    def __len__(self) -> int:
        return len(self.rois)

    @classmethod
    def from_detection(cls, result: dict, image_shape, model: str = "",
                       transform: str = "identity") -> "Member":
        """Build from a `MaskRCNN.detect()` result dict; masks are quantised to 8 bits and
        boxes reaching outside the image are cut to it."""
        height, width = int(image_shape[0]), int(image_shape[1])
        rois = np.asarray(result["rois"], dtype=np.int64).reshape(-1, 4)
        clipped = np.clip(rois, 0, [height, width, height, width])
        masks = []
        for (y1, x1, y2, x2), (cy1, cx1, cy2, cx2), m in zip(rois, clipped, result["masks"]):
            m = np.asarray(m)[cy1 - y1:max(cy2 - y1, 0), cx1 - x1:max(cx2 - x1, 0)]
            masks.append(quantize_mask(m).reshape(max(cy2 - cy1, 0), max(cx2 - cx1, 0)))
        clipped[:, 2:] = np.maximum(clipped[:, 2:], clipped[:, :2])
        return cls(clipped, result["scores"], result["class_ids"], masks, (height, width),
                   model, transform)

    @classmethod
    def empty(cls, image_shape, model: str = "", transform: str = "identity") -> "Member":
        return cls(np.zeros((0, 4), np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                   [], image_shape, model, transform)

    def subset(self, keep) -> "Member":
        """The detections selected by an index array or boolean mask."""
        idx = np.arange(len(self))[keep]
        return Member(self.rois[idx], self.scores[idx], self.class_ids[idx],
                      [self.masks[i] for i in idx], self.image_shape, self.model,
                      self.transform, dict(self.extra), self.image)

    @property
    def name(self) -> str:
        return f"{self.model}:{self.transform}"


def save_member(path, member: Member) -> Path:
    """Write a member to .npz atomically (masks as uint8 0-255)."""
    from nucseg.io import atomic_path

    path = Path(path)
    data = (np.concatenate([_mask_bytes(m).ravel() for m in member.masks])
            if len(member) else np.zeros(0, np.uint8))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, format=np.int64(FORMAT_VERSION), rois=member.rois, scores=member.scores,
                class_ids=member.class_ids, mask_data=data,
                image_shape=np.asarray(member.image_shape, np.int64),
                model=np.str_(member.model), transform=np.str_(member.transform),
                image=np.str_(member.image))
    return path


def check_member_arrays(path, rois, scores, class_ids, mask_data, image_shape) -> None:
    """The rules of a member file (docs/formats.md): N x 4 integer boxes inside the image,
    N finite scores in [0, 1], N integer class ids >= 1, 1-D uint8 mask data, a 2-value
    positive image shape. Raises InputError naming the first rule broken."""
    from nucseg.io import InputError

    def fail(problem):
        raise InputError(path, f"member file: {problem}")

    image_shape = np.asarray(image_shape)
    if image_shape.shape != (2,) or image_shape.dtype.kind not in "iu" or image_shape.min() < 1:
        fail(f"image_shape must be 2 positive integers, got {image_shape.tolist()}")
    if rois.ndim != 2 or rois.shape[1] != 4 or rois.dtype.kind not in "iu":
        fail(f"rois must be an N x 4 integer array, got {rois.dtype} {rois.shape}")
    n = rois.shape[0]
    if scores.shape != (n,) or scores.dtype.kind != "f":
        fail(f"scores must be {n} floats (one per box), got {scores.dtype} {scores.shape}")
    if not np.isfinite(scores).all() or (n and (scores.min() < 0 or scores.max() > 1)):
        fail("scores must be finite and within [0, 1]")
    if class_ids.shape != (n,) or class_ids.dtype.kind not in "iu" or \
            (n and class_ids.min() < 1):
        fail(f"class_ids must be {n} integers >= 1, got {class_ids.dtype} {class_ids.shape}")
    if mask_data.ndim != 1:
        fail(f"mask_data must be 1-D, got shape {mask_data.shape}")
    if n and (rois[:, :2].min() < 0 or rois[:, 2].max() > image_shape[0]
              or rois[:, 3].max() > image_shape[1]):
        fail(f"a box lies outside the {image_shape[0]}x{image_shape[1]} image")


def load_member(path) -> Member:
    """Read a member .npz; a malformed file raises InputError naming it."""
    from nucseg.io import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            need = {"rois", "scores", "class_ids", "mask_data", "image_shape"}
            if not need <= keys:
                raise InputError(path, f"not a member file (missing {sorted(need - keys)})")
            version = int(z["format"]) if "format" in keys else FORMAT_VERSION
            if version > FORMAT_VERSION:
                raise InputError(path, f"member format {version} is newer than this nucseg "
                                       f"reads ({FORMAT_VERSION})")
            rois, data = z["rois"], z["mask_data"]
            check_member_arrays(path, rois, z["scores"], z["class_ids"], data,
                                z["image_shape"])
            rois = rois.astype(np.int32)
            fields = (z["scores"].astype(np.float32), z["class_ids"].astype(np.int32),
                      tuple(int(v) for v in z["image_shape"].tolist()),
                      str(z["model"]) if "model" in keys else path.stem,
                      str(z["transform"]) if "transform" in keys else "identity",
                      str(z["image"]) if "image" in keys else "")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt archive is the file's problem
        raise InputError(path, f"cannot read member file ({type(exc).__name__}: {exc})") \
            from None
    heights, widths = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    if np.any(heights < 0) or np.any(widths < 0):
        raise InputError(path, "member file has a box with negative size")
    sizes = heights.astype(np.int64) * widths
    if data.dtype != np.uint8 or data.size != int(sizes.sum()):
        raise InputError(path, f"mask data holds {data.size} values, boxes need "
                               f"{int(sizes.sum())}")
    ends = np.cumsum(sizes)
    scale = np.float32(255.0)
    masks = [(data[e - s:e].astype(np.float32) / scale).reshape(h, w)
             for s, e, h, w in zip(sizes, ends, heights, widths)]
    try:
        return Member(rois, fields[0], fields[1], masks, fields[2], fields[3], fields[4],
                      image=fields[5])
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
