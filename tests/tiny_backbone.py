"""A reduced backbone for the learning test ONLY (see docs/training.md, "Tests").

ResNet-50 is the smallest Matterport backbone and one of its training steps takes seconds on
the CI's two CPU cores, so the learning test substitutes this 5-conv pyramid (same strides 4-32
for C2..C5, same builder signature, PREPROC kept for 5 channels) by monkeypatching
`build_resnet_backbone` where the training and inference graphs look it up. Everything else
(FPN, RPN, proposals, ROI sampling, heads, losses, detection) is the production code.
"""
from keras import layers as KL


def build_tiny_backbone(input_image, config, train_bn=None):
    x = KL.ZeroPadding2D((3, 3))(input_image)
    if config.IMAGE_CHANNEL_COUNT != 3:
        x = KL.Conv2D(3, 1, name="PREPROC")(x)
    x = KL.Conv2D(32, 7, strides=2, activation="relu", name="conv1",
                  kernel_initializer="he_normal")(x)
    c1 = x = KL.MaxPooling2D(3, strides=2, padding="same")(x)
    c2 = x = KL.Conv2D(32, 3, padding="same", activation="relu", name="res2a_branch2a",
                       kernel_initializer="he_normal")(x)
    c3 = x = KL.Conv2D(64, 3, strides=2, padding="same", activation="relu",
                       name="res3a_branch2a", kernel_initializer="he_normal")(x)
    c4 = x = KL.Conv2D(64, 3, strides=2, padding="same", activation="relu",
                       name="res4a_branch2a", kernel_initializer="he_normal")(x)
    c5 = KL.Conv2D(128, 3, strides=2, padding="same", activation="relu",
                   name="res5a_branch2a", kernel_initializer="he_normal")(x)
    return [c1, c2, c3, c4, c5]
