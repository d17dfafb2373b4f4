"""Augmentation that is safe for the 5-channel input (albumentations 2.0).

RGB goes in as the albumentations `image`, so photometric transforms touch only RGB; the extra
channels (distance, hematoxylin) and the label map go in as mask targets, so geometric
transforms move them with the image using nearest-neighbour interpolation and photometric ones
leave them alone. Instances cut away entirely simply vanish from the label map. With stain
augmentation the training loader recomputes the hematoxylin channel from the augmented RGB
(nucseg.data.loader), as prediction computes it from the RGB it is given.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class AugmentOptions:
    crop_size: int | None = None      # None: the loader uses the config's (IMAGE_MIN_DIM)
    flips: bool = True
    rotate: bool = True               # Rotate(limit 180, p 0.5), as Mask R-CNN+ (limit 359)
    brightness_contrast: bool = True  # RandomBrightnessContrast(0.5, 0.5, by max, p 0.4)
    blur: bool = False                # GaussianBlur(sigma 0-2, p 0.3), Matterport nucleus style
    stain: bool = False               # HEStain(random_preset, p 0.5): other labs' H&E colours

    def to_dict(self) -> dict:
        return asdict(self)


def build_pipeline(options: AugmentOptions, seed: int | None = None):
    """The albumentations Compose: crop, then geometric, then photometric (RGB only)."""
    import albumentations as A
    import cv2

    size = int(options.crop_size or 256)
    steps = [A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
             A.RandomCrop(size, size)]
    if options.flips:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if options.rotate:
        # Constant border: a reflected border would duplicate instance ids across the edge.
        steps.append(A.Rotate(limit=180, p=0.5, border_mode=cv2.BORDER_CONSTANT, fill=0,
                              fill_mask=0, interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST))
    if options.stain:
        # a random one of albumentations' 8 reference H&E stain matrices, with stain
        # intensities scaled by 0.7-1.3 and shifted by +-0.2 (its defaults)
        steps.append(A.HEStain(method="random_preset", p=0.5))
    if options.brightness_contrast:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.5, contrast_limit=0.5,
                                                brightness_by_max=True, p=0.4))
    if options.blur:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 2.0), p=0.3))
    return A.Compose(steps, additional_targets={"extra": "mask"},
                     mask_interpolation=cv2.INTER_NEAREST, seed=seed)


def augment(image: np.ndarray, labels: np.ndarray, options: AugmentOptions,
            seed: int, return_valid: bool = False):
    """One augmented (image H x W x C uint8, labels H x W int32) pair, reproducible by seed.

    With `return_valid`, also a bool map of the pixels that came from the image (not from
    padding or rotated-in corners), so per-image standardisation can zero the rest as
    inference zero-pads.
    """
    image = np.asarray(image)
    pipeline = build_pipeline(options, seed=int(seed))
    kwargs = dict(image=np.ascontiguousarray(image[..., :3]),
                  mask=np.ascontiguousarray(labels.astype(np.int32)))
    extra = [image[..., 3:]] if image.shape[-1] > 3 else []
    if return_valid:
        extra.append(np.ones(image.shape[:2] + (1,), image.dtype))
    if extra:
        kwargs["extra"] = np.ascontiguousarray(np.dstack(extra))
    out = pipeline(**kwargs)
    result = out["image"]
    if extra:
        more = out["extra"]
        result = np.dstack([result, more.reshape(more.shape[:2] + (-1,))])
    valid = None
    if return_valid:
        result, valid = result[..., :-1], result[..., -1] > 0
    result = result.astype(image.dtype)
    labels = out["mask"].astype(np.int32)
    return (result, labels, valid) if return_valid else (result, labels)
