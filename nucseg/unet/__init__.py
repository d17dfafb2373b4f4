"""The distance-map U-Net: architecture, training, model files and prediction (docs/unet.md).

Importing this package does not import TensorFlow; the functions below do when called.
"""
from nucseg.unet.files import LoadedUNet, UNetConfig, load_unet
from nucseg.unet.predict import predict_distance

__all__ = ["LoadedUNet", "UNetConfig", "load_unet", "predict_distance"]
