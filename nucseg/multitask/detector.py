"""The multi-task U-Net + watershed as a detector of `nucseg predict`.

`nucseg predict -m mrcnn_run/ -m multitask_run/ --merge mask-nms --min-members 1` then runs
both kinds of model on every image (and every TTA view, and every block of a slide) and merges
them in one call, which is the method's ensemble. `.detect(images)` returns what
MaskRCNN.detect returns: tight boxes, scores (mean foreground probability), class 1, and the
binary masks in their boxes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucseg.multitask.predict import WatershedOptions, instances, predict_maps, scored_nuclei


@dataclass
class MultitaskModelConfig:
    """The config attributes `nucseg predict` reads from a model."""

    NAME: str = "multitask"
    IMAGE_CHANNEL_COUNT: int = 3            # RGB: the network molds its input itself
    DETECTION_MAX_INSTANCES: int = 0        # no cap, so predict never splits its tiles
    DETECTION_MIN_CONFIDENCE: float = 0.0   # nuclei with a lower score are dropped
    MODEL_MPP: float = 0.25                 # trained on 40x MoNuSeg tiles


class MultitaskDetector:
    """A loaded multi-task run (nucseg.multitask.files.LoadedRun) that detects like Mask R-CNN.

    It tiles each image itself (predict_maps: 1024 px tiles with a 64 px margin, so the
    watershed sees whole nuclei), so `nucseg predict` hands it whole images
    (`tiles_itself`)."""

    tiles_itself = True

    def __init__(self, loaded, watershed: WatershedOptions | None = None,
                 min_confidence: float | None = None, tile_size: int = 1024, margin: int = 64):
        self.loaded = loaded
        self.watershed = watershed or WatershedOptions()
        self.tile_size, self.margin = tile_size, margin
        self.config = MultitaskModelConfig(
            NAME=loaded.name, DETECTION_MIN_CONFIDENCE=float(min_confidence or 0.0))

    @property
    def name(self) -> str:
        return self.loaded.name

    def detect(self, images) -> list[dict]:
        results = []
        for image in images:
            maps = predict_maps(self.loaded, np.ascontiguousarray(image[..., :3]),
                                self.tile_size, self.margin)
            nuclei = scored_nuclei(instances(maps, self.watershed), maps[..., 0],
                                   self.config.DETECTION_MIN_CONFIDENCE)
            results.append({
                "rois": nuclei.rois.reshape(-1, 4),
                "scores": nuclei.scores,
                "class_ids": nuclei.class_ids,
                "masks": [(nuclei.labels[y1:y2, x1:x2] == k).astype(np.float32)
                          for k, (y1, x1, y2, x2) in enumerate(nuclei.rois, start=1)]})
        return results
