"""The MoNuSeg 2018 rank-6 multi-task U-Net: foreground, adjacent boundary and interior maps
from one ResNet encoder, watershed into instances, a member for MASK-NMS with Mask R-CNN
(docs/multitask-unet.md).

Importing this package does not import TensorFlow; `network`, `train` and `predict` do.
"""
from nucseg.multitask.targets import TargetOptions, make_targets

__all__ = ["TargetOptions", "make_targets"]
