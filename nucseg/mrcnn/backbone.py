"""ResNet-50/101 backbone, Caffe-style as in Matterport (stride in the first 1x1, biases).

Layer names equal Matterport's (conv1, bn_conv1, res2a_branch2a, bn2a_branch2a, ...,
res5c_out), so Matterport weight files load by name. With IMAGE_CHANNEL_COUNT != 3 a 1x1
conv `PREPROC` (C -> 3, with bias) sits after the 3-px zero padding and before conv1, as in
Mask R-CNN+ (bbanc): the padded border therefore carries the PREPROC bias.
"""
from __future__ import annotations

import keras
from keras import layers as KL

# Identity blocks in stage 4 (letters b, c, ...): ResNet-50 has 5, ResNet-101 has 22.
STAGE4_IDENTITY_BLOCKS = {"resnet50": 5, "resnet101": 22}


@keras.saving.register_keras_serializable(package="nucseg")
class BatchNorm(KL.BatchNormalization):
    """BatchNormalization whose mode is fixed at build time, like Matterport's BatchNorm.

    `train_bn=False` always uses the moving statistics, even when the enclosing model is
    called with training=True (Keras 3 passes the model-level flag down and would otherwise
    override a per-call training=False). `train_bn=None` follows the caller. Epsilon 1e-3 and
    momentum 0.99 are the Keras defaults Matterport relied on.
    """

    def __init__(self, train_bn=False, **kwargs):
        kwargs.setdefault("epsilon", 1e-3)
        super().__init__(**kwargs)
        self.train_bn = train_bn

    def call(self, inputs, training=None, mask=None):
        if self.train_bn is not None:
            training = bool(self.train_bn)
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {**super().get_config(), "train_bn": self.train_bn}


def _bottleneck(x, kernel_size, filters, stage, block, train_bn, strides=None):
    """A conv block (strides given: projection shortcut) or an identity block."""
    f1, f2, f3 = filters
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    shortcut = x
    y = KL.Conv2D(f1, 1, strides=strides or 1, name=conv + "2a", use_bias=True)(x)
    y = BatchNorm(train_bn, name=bn + "2a")(y)
    y = KL.Activation("relu")(y)
    y = KL.Conv2D(f2, kernel_size, padding="same", name=conv + "2b", use_bias=True)(y)
    y = BatchNorm(train_bn, name=bn + "2b")(y)
    y = KL.Activation("relu")(y)
    y = KL.Conv2D(f3, 1, name=conv + "2c", use_bias=True)(y)
    y = BatchNorm(train_bn, name=bn + "2c")(y)
    if strides is not None:
        shortcut = KL.Conv2D(f3, 1, strides=strides, name=conv + "1", use_bias=True)(x)
        shortcut = BatchNorm(train_bn, name=bn + "1")(shortcut)
    y = KL.Add()([y, shortcut])
    return KL.Activation("relu", name=f"res{stage}{block}_out")(y)


def build_resnet_backbone(input_image, config, train_bn=None) -> list:
    """Keras tensor in -> [C1, C2, C3, C4, C5]; `train_bn` defaults to config.TRAIN_BN."""
    architecture = config.BACKBONE
    if architecture not in STAGE4_IDENTITY_BLOCKS:
        raise ValueError(f"BACKBONE must be resnet50 or resnet101, got {architecture!r}")
    if train_bn is None:
        train_bn = config.TRAIN_BN
    x = KL.ZeroPadding2D((3, 3))(input_image)
    if config.IMAGE_CHANNEL_COUNT != 3:
        x = KL.Conv2D(3, 1, name="PREPROC", use_bias=True)(x)
    x = KL.Conv2D(64, 7, strides=2, name="conv1", use_bias=True)(x)
    x = BatchNorm(train_bn, name="bn_conv1")(x)
    x = KL.Activation("relu")(x)
    c1 = x = KL.MaxPooling2D(3, strides=2, padding="same")(x)

    x = _bottleneck(x, 3, [64, 64, 256], 2, "a", train_bn, strides=1)
    x = _bottleneck(x, 3, [64, 64, 256], 2, "b", train_bn)
    c2 = x = _bottleneck(x, 3, [64, 64, 256], 2, "c", train_bn)

    x = _bottleneck(x, 3, [128, 128, 512], 3, "a", train_bn, strides=2)
    for block in "bcd":
        x = _bottleneck(x, 3, [128, 128, 512], 3, block, train_bn)
    c3 = x

    x = _bottleneck(x, 3, [256, 256, 1024], 4, "a", train_bn, strides=2)
    for i in range(STAGE4_IDENTITY_BLOCKS[architecture]):
        x = _bottleneck(x, 3, [256, 256, 1024], 4, chr(ord("b") + i), train_bn)
    c4 = x

    x = _bottleneck(x, 3, [512, 512, 2048], 5, "a", train_bn, strides=2)
    x = _bottleneck(x, 3, [512, 512, 2048], 5, "b", train_bn)
    c5 = _bottleneck(x, 3, [512, 512, 2048], 5, "c", train_bn)
    return [c1, c2, c3, c4, c5]
