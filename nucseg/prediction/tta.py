"""Test-time augmentation views and their exact inverses on detections.

The Mask R-CNN+ views: the original, a horizontal flip, a vertical flip and a hue/saturation/
value shift (limits 20, as albumentations' HueSaturationValue) of the RGB channels only. Flips
move every channel (the distance and hematoxylin maps too). A flipped view's detections are
flipped back, boxes and soft masks exactly, so every member lives in the original frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nucseg.prediction.members import Member

VIEW_NAMES = ("identity", "hflip", "vflip", "hsv")
HSV_SHIFT_LIMIT = 20


@dataclass(frozen=True)
class View:
    """One TTA view: how to make it from the model input, how to map detections back."""

    name: str
    hsv_shift: tuple = (0, 0, 0)          # hue, saturation, value (OpenCV 8-bit HSV units)

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.name == "identity":
            return image
        if self.name == "hflip":
            return np.ascontiguousarray(image[:, ::-1])
        if self.name == "vflip":
            return np.ascontiguousarray(image[::-1])
        if self.name == "hsv":
            out = image.copy()
            out[..., :3] = shift_hsv(image[..., :3], *self.hsv_shift)
            return out
        raise ValueError(f"unknown TTA view {self.name!r}")

    def invert(self, member: Member) -> Member:
        """Detections made on the view, in the original image's frame."""
        height, width = member.image_shape
        rois = member.rois.copy()
        masks = member.masks
        if self.name == "hflip":
            rois[:, 1], rois[:, 3] = width - member.rois[:, 3], width - member.rois[:, 1]
            masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
        elif self.name == "vflip":
            rois[:, 0], rois[:, 2] = height - member.rois[:, 2], height - member.rois[:, 0]
            masks = [np.ascontiguousarray(m[::-1]) for m in masks]
        return Member(rois, member.scores, member.class_ids, masks, member.image_shape,
                      member.model, self.name, dict(member.extra), member.image)


def shift_hsv(rgb: np.ndarray, hue: int, saturation: int, value: int) -> np.ndarray:
    """Shift an RGB uint8 image in OpenCV's HSV (hue wraps at 180, the others saturate)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    lut_h = ((np.arange(256) + hue) % 180).astype(np.uint8)
    lut_s = np.clip(np.arange(256) + saturation, 0, 255).astype(np.uint8)
    lut_v = np.clip(np.arange(256) + value, 0, 255).astype(np.uint8)
    hsv = np.stack([cv2.LUT(hsv[..., 0], lut_h), cv2.LUT(hsv[..., 1], lut_s),
                    cv2.LUT(hsv[..., 2], lut_v)], axis=-1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def make_views(tta: bool, seed: int = 0) -> list[View]:
    """[identity] or the four TTA views; the HSV shift is drawn once from `seed`."""
    if not tta:
        return [View("identity")]
    rng = np.random.default_rng(seed)
    shift = tuple(int(v) for v in rng.integers(-HSV_SHIFT_LIMIT, HSV_SHIFT_LIMIT + 1, 3))
    return [View("identity"), View("hflip"), View("vflip"), View("hsv", shift)]
