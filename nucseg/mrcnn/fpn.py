"""Feature Pyramid Network P2-P6 over the ResNet outputs, with Matterport's layer names."""
from __future__ import annotations

from keras import layers as KL


def build_fpn(c2, c3, c4, c5, depth: int = 256):
    """C2..C5 -> (rpn_feature_maps [P2..P6], mrcnn_feature_maps [P2..P5]).

    Lateral 1x1 convs plus x2 nearest upsampling top-down; a 3x3 conv on every merged map;
    P6 is every other pixel of P5 (max-pool 1, stride 2), used by the RPN only.
    """
    p5 = KL.Conv2D(depth, 1, name="fpn_c5p5")(c5)
    p4 = KL.Add(name="fpn_p4add")([
        KL.UpSampling2D(size=2, name="fpn_p5upsampled")(p5),
        KL.Conv2D(depth, 1, name="fpn_c4p4")(c4)])
    p3 = KL.Add(name="fpn_p3add")([
        KL.UpSampling2D(size=2, name="fpn_p4upsampled")(p4),
        KL.Conv2D(depth, 1, name="fpn_c3p3")(c3)])
    p2 = KL.Add(name="fpn_p2add")([
        KL.UpSampling2D(size=2, name="fpn_p3upsampled")(p3),
        KL.Conv2D(depth, 1, name="fpn_c2p2")(c2)])
    p2 = KL.Conv2D(depth, 3, padding="same", name="fpn_p2")(p2)
    p3 = KL.Conv2D(depth, 3, padding="same", name="fpn_p3")(p3)
    p4 = KL.Conv2D(depth, 3, padding="same", name="fpn_p4")(p4)
    p5 = KL.Conv2D(depth, 3, padding="same", name="fpn_p5")(p5)
    p6 = KL.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6], [p2, p3, p4, p5]
