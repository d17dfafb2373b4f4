"""The distance-map U-Net (after Mahbod et al. 2019) and the parameter count of its layer list.

Layer list at base width w with c input channels (f_i = w * 2**i, i = 0..5):

- encoder level i: two 3x3 convolutions with f_i filters ("enc{i}_conv1", "enc{i}_conv2"),
  then a 2x2 max-pooling ("enc{i}_pool") for i = 0..4 (five poolings); level 5 is the bottom;
- decoder level i = 4..0: a 2x2 stride-2 transposed convolution with f_i filters ("dec{i}_up"),
  concatenation with the encoder level-i output ("dec{i}_concat", upsampled first), then two 3x3
  convolutions with f_i filters ("dec{i}_conv1", "dec{i}_conv2");
- output: a 1x1 convolution with one filter and no activation ("distance").

Every convolution except the output one (3x3 and transposed alike) is followed by ReLU and then
Dropout(0.1), so a dropout sits between every pair of consecutive convolutions in both paths.
'same' padding everywhere; kernels He-normal, biases zero. The input's height and width must
be multiples of 32 (the caller pads; see predict.py).
"""
from __future__ import annotations

DEPTH = 5            # number of 2x2 poolings (and of transposed convolutions)
DIVISOR = 2 ** DEPTH  # input height/width must be a multiple of this
DROPOUT = 0.1


def level_widths(width: int) -> list[int]:
    """Filters per level, top to bottom: w, 2w, ..., 32w."""
    return [width * 2 ** i for i in range(DEPTH + 1)]


def expected_param_count(width: int, in_channels: int) -> int:
    """Trainable parameters of the layer list above (weights + biases), in closed form.

    Encoder level i: 9*c_in*f_i + f_i + 9*f_i*f_i + f_i with c_in = c (i = 0) or f_{i-1};
    decoder level i: 4*f_{i+1}*f_i + f_i (transposed) + 9*2f_i*f_i + f_i + 9*f_i*f_i + f_i;
    output: f_0 + 1.
    """
    f = level_widths(width)
    total, c_in = 0, in_channels
    for fi in f:
        total += 9 * c_in * fi + fi + 9 * fi * fi + fi
        c_in = fi
    for i in range(DEPTH - 1, -1, -1):
        total += 4 * f[i + 1] * f[i] + f[i]
        total += 9 * 2 * f[i] * f[i] + f[i] + 9 * f[i] * f[i] + f[i]
    return total + f[0] + 1


def build_unet(width: int = 32, in_channels: int = 3, dropout: float = DROPOUT,
               seed: int | None = None):
    """A Keras model mapping (B, H, W, in_channels) float32 to (B, H, W, 1) distances.

    `seed` fixes the He-normal initialisation and the dropout masks (with the same seed the
    same weights and the same training run on the same hardware).
    """
    import keras
    from keras import layers

    if width < 1 or in_channels < 1:
        raise ValueError(f"width and in_channels must be >= 1 (got {width}, {in_channels})")
    counter = [0]

    def next_seed():
        counter[0] += 1
        return None if seed is None else seed * 1000 + counter[0]

    def conv(x, filters, name, kernel=3):
        x = layers.Conv2D(filters, kernel, padding="same", activation="relu", name=name,
                          kernel_initializer=keras.initializers.HeNormal(seed=next_seed()))(x)
        return layers.Dropout(dropout, seed=next_seed(), name=f"{name}_drop")(x)

    inputs = keras.Input((None, None, in_channels), name="image")
    x, skips = inputs, []
    for i, filters in enumerate(level_widths(width)):
        x = conv(x, filters, f"enc{i}_conv1")
        x = conv(x, filters, f"enc{i}_conv2")
        if i < DEPTH:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    for i in range(DEPTH - 1, -1, -1):
        filters = level_widths(width)[i]
        x = layers.Conv2DTranspose(
            filters, 2, strides=2, activation="relu", name=f"dec{i}_up",
            kernel_initializer=keras.initializers.HeNormal(seed=next_seed()))(x)
        x = layers.Dropout(dropout, seed=next_seed(), name=f"dec{i}_up_drop")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = conv(x, filters, f"dec{i}_conv1")
        x = conv(x, filters, f"dec{i}_conv2")
    outputs = layers.Conv2D(1, 1, activation=None, name="distance",
                            kernel_initializer=keras.initializers.HeNormal(seed=next_seed()))(x)
    return keras.Model(inputs, outputs, name="distance_unet")
