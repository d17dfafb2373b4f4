"""The Matterport-faithful Mask R-CNN(+) model: `from nucseg.mrcnn import Config, MaskRCNN`.

MaskRCNN is imported lazily so that reading a config does not load TensorFlow.
"""
from nucseg.mrcnn.config import Config

__all__ = ["Config", "MaskRCNN"]


def __getattr__(name):
    if name == "MaskRCNN":
        from nucseg.mrcnn.model import MaskRCNN

        return MaskRCNN
    raise AttributeError(f"module 'nucseg.mrcnn' has no attribute {name!r}")
