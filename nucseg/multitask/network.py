"""The multi-task U-Net: a Matterport ResNet encoder and three decoders with skip connections.

Encoder: nucseg.mrcnn.backbone.build_resnet_backbone (looked up at build time, so tests can
swap in a tiny one), RGB input molded as Matterport does (minus MEAN_PIXEL, no scaling), layer
names conv1, bn_conv1, res2a_branch2a, ... res5c_out, so any Matterport-layout Mask R-CNN file
initialises it by name (`load_backbone`). Skips: C5 (stride 32) feeds the decoders, C4, C3, C2
(strides 16, 8, 4) and the conv1 stage's activation (stride 2) are concatenated on the way up.

Decoder per task (foreground, boundary, interior), widths f_i = w * 2^i: at levels 4..1 a 2x2
stride-2 transposed convolution with f_i filters, concatenation with the skip of that stride,
two 3x3 convolutions; level 0 upsamples to full resolution, one 3x3 convolution with f_0
filters and a 1x1 convolution [`<task>_logits`] with a sigmoid (the output, named after the
task; the loss works on the logits, so saturated outputs still get gradients). ReLU,
He-normal kernels, 'same' padding; the input's sides must be multiples of 32. The output
kernels start at zero, so an untrained network says 0.5 everywhere instead of saturating on
the unscaled (Matterport-molded) input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

from nucseg.io import InputError

TASKS = ("foreground", "boundary", "interior")
BACKBONES = ("resnet50", "resnet101")
DIVISOR = 32
MATTERPORT_MEAN_PIXEL = (123.7, 116.8, 103.9)   # Matterport Config.MEAN_PIXEL (RGB)


@dataclass
class NetworkConfig:
    backbone: str = "resnet101"
    decoder_width: int = 16
    train_bn: bool = False            # Matterport's TRAIN_BN: frozen statistics (small batches)
                                      # (the commands freeze them only with --init-backbone)
    mean_pixel: tuple = MATTERPORT_MEAN_PIXEL

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got "
                             f"{self.backbone!r}")
        if not isinstance(self.decoder_width, int) or self.decoder_width < 1:
            raise ValueError(f"decoder width must be a positive integer, got "
                             f"{self.decoder_width!r}")
        self.mean_pixel = tuple(float(v) for v in self.mean_pixel)
        if len(self.mean_pixel) != 3:
            raise ValueError(f"mean_pixel needs 3 values (R, G, B), got {self.mean_pixel}")

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_pixel": list(self.mean_pixel)}


def build_network(config: NetworkConfig, seed: int | None = None):
    """The Keras model: RGB minus MEAN_PIXEL in, [foreground, boundary, interior] out."""
    import keras
    from keras import layers as KL

    from nucseg.mrcnn import backbone

    counter = [0]

    def init():
        counter[0] += 1
        return keras.initializers.HeNormal(None if seed is None else seed * 1000 + counter[0])

    image = keras.Input((None, None, 3), name="input_image")
    # train_bn True -> None: batch statistics when called with training=True, the moving ones
    # at prediction (nucseg's BatchNorm(True) would use batch statistics even then)
    bn_mode = None if config.train_bn else False
    settings = SimpleNamespace(BACKBONE=config.backbone, TRAIN_BN=bn_mode, IMAGE_CHANNEL_COUNT=3)
    _, c2, c3, c4, c5 = backbone.build_resnet_backbone(image, settings, train_bn=bn_mode)
    graph = keras.Model(image, c5)
    names = {layer.name for layer in graph.layers}
    stem = graph.get_layer("bn_conv1" if "bn_conv1" in names else "conv1").output
    s2 = KL.Activation("relu", name="mt_stride2_relu")(stem)
    skips = {1: s2, 2: c2, 3: c3, 4: c4}

    outputs = []
    for task in TASKS:
        x = c5
        for level in (4, 3, 2, 1, 0):
            filters = config.decoder_width * 2 ** level
            x = KL.Conv2DTranspose(filters, 2, strides=2, activation="relu",
                                   kernel_initializer=init(), name=f"{task}_up{level}")(x)
            if level:
                x = KL.Concatenate(name=f"{task}_concat{level}")([x, skips[level]])
            for part in ("ab" if level else "a"):
                x = KL.Conv2D(filters, 3, padding="same", activation="relu",
                              kernel_initializer=init(), name=f"{task}_conv{level}{part}")(x)
        logits = KL.Conv2D(1, 1, kernel_initializer="zeros", name=f"{task}_logits",
                           dtype="float32")(x)
        outputs.append(KL.Activation("sigmoid", name=task, dtype="float32")(logits))
    return keras.Model(image, outputs, name="multitask_unet")


def logits_model(keras_model):
    """The same network (shared weights) returning the three logits, for the loss."""
    import keras

    return keras.Model(keras_model.inputs,
                       [keras_model.get_layer(f"{task}_logits").output for task in TASKS])


def encoder_layer_names(keras_model) -> list[str]:
    """Names of the encoder's weighted layers (everything that is not a decoder's)."""
    return [layer.name for layer in keras_model.layers if layer.weights
            and not layer.name.startswith(tuple(f"{t}_" for t in TASKS))
            and layer.name not in TASKS]


def load_backbone(keras_model, path, config: NetworkConfig) -> dict:
    """Initialise the encoder by layer name from a Matterport-layout HDF5 file.

    Only encoder layers are read (the decoders have no counterpart). Every encoder layer must
    be in the file with the same shapes, and all values finite (nucseg.mrcnn.weights
    .load_weights checks before assigning anything); otherwise one InputError naming the file.
    """
    from nucseg.mrcnn.weights import WeightMismatchError, file_architecture, load_weights
    from nucseg.mrcnn.weights_h5 import read_weight_shapes

    shapes = read_weight_shapes(path)
    encoder = encoder_layer_names(keras_model)
    present = [name for name in encoder if shapes.get(name)]
    if not present:
        raise InputError(path, "holds no ResNet backbone (none of conv1, res2a_branch2a, ..., "
                               "res5c_branch2c): not a Matterport-layout Mask R-CNN weight file")
    missing = [name for name in encoder if not shapes.get(name)]
    if missing:
        found = file_architecture(shapes)["backbone"]
        what = f"a {found} backbone" if found else "no complete ResNet-50/101 backbone"
        hint = f"; use --backbone {found}" if found and found != config.backbone else ""
        raise InputError(path, f"holds {what}: {len(missing)} of the {len(encoder)} layers of the "
                               f"{config.backbone} encoder are missing "
                               f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
                               f"{hint}")
    decoders = [layer.name for layer in keras_model.layers if layer.name not in set(encoder)]
    try:
        report = load_weights(keras_model, path, by_name=True, exclude=decoders)
    except WeightMismatchError as exc:
        bad = exc.report.mismatched
        raise InputError(path, f"{len(bad)} backbone layer(s) do not match the "
                               f"{config.backbone} encoder, nothing was loaded (first: "
                               f"{bad[0][0]}: {bad[0][1]})") from None
    return {"path": str(path), "layers_loaded": len(report.loaded),
            "values_loaded": report.n_values, "file_backbone": file_architecture(shapes)
            ["backbone"]}


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------
@dataclass
class LossWeights:
    bce: float = 1.0
    dice: float = 1.0
    tasks: tuple = (1.0, 1.0, 1.0)    # foreground, boundary, interior

    def __post_init__(self):
        self.tasks = tuple(float(v) for v in self.tasks)
        if len(self.tasks) != 3 or min(self.tasks) < 0 or self.bce < 0 or self.dice < 0:
            raise ValueError("loss weights must be >= 0, with one weight per task (3)")
        if self.bce + self.dice == 0 or sum(self.tasks) == 0:
            raise ValueError("loss weights are all zero: nothing would be learnt")

    def to_dict(self) -> dict:
        return {"bce": self.bce, "dice": self.dice, "tasks": list(self.tasks)}


def task_losses(targets, logits, mask, weights: LossWeights):
    """Per task: bce * BCE + dice * (1 - soft Dice), both over the valid pixels (mask 1) of
    the whole batch; Dice smoothed by 1 so a batch without positives costs ~0. BCE is taken
    from the logits (exact, and never without gradient). Returns the weighted total and the
    three per-task losses (tensors)."""
    import tensorflow as tf

    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    per_task = []
    for k, z in enumerate(logits):
        y = targets[..., k:k + 1]
        z = tf.cast(z, tf.float32)
        p = tf.sigmoid(z)
        bce = tf.reduce_sum(mask * tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z))
        bce = bce / count
        overlap = tf.reduce_sum(mask * p * y)
        dice = 1.0 - (2.0 * overlap + 1.0) / (tf.reduce_sum(mask * p)
                                              + tf.reduce_sum(mask * y) + 1.0)
        per_task.append(weights.bce * bce + weights.dice * dice)
    total = tf.add_n([w * t for w, t in zip(weights.tasks, per_task)])
    return total, per_task
