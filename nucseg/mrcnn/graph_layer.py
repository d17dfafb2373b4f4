"""The base of the weightless layers that carry graph logic (anchors, boxes, sampling, ROI
pooling, reshapes between the ROI and batch axes)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import keras

PRECISIONS = ("float32", "mixed_bfloat16")


class GraphLayer(keras.layers.Layer):
    """A layer that computes in float32 under any dtype policy.

    With `--precision mixed_bfloat16` only the convolutions and dense layers should run in
    bfloat16: its 8-bit mantissa cannot hold a normalised box coordinate to the pixel (1/1024
    needs 10 bits), and this logic mixes its inputs with float32 constants. Floating inputs
    are cast to float32 on entry (Keras autocasting)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def bfloat16_slow_here() -> bool:
    """True on a CPU-only machine whose CPU lacks bfloat16 instructions (AVX512_BF16 or
    AMX-BF16): there TensorFlow emulates bfloat16 and a Mask R-CNN step ran 3.5 times slower
    than float32 (1.3 s vs 4.5 s, ResNet-50, 2 cores), the opposite of what the option is for."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False                       # not Linux: cannot tell, say nothing
    return "avx512_bf16" not in flags and "amx_bf16" not in flags


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under `precision` ('float32' or 'mixed_bfloat16'), then restore the
    global policy, so that models built later (e.g. for inference) are unaffected."""
    check_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
