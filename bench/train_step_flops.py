"""How close one ResNet-101 training step is to what this machine's CPU can do.

Issue 4 aims at 1.0 s for a ResNet-101 step at 256 x 256 with the paper config and 64 training
ROIs. This script says whether that is reachable here without changing the architecture:

1. it counts the forward multiply-adds of the step's convolutions and dense layers on a real
   batch (every Conv2D / Conv2DTranspose / Dense call, with the shapes the batch produces,
   grouped into backbone, FPN, RPN and heads);
2. it times the training step (fused Adam, all layers trainable, as `nucseg train` runs it);
3. it times forward + backward of single convolutions shaped like the step's largest ones,
   which gives the dense throughput TensorFlow reaches on this CPU;
4. it prints the step's achieved throughput and the step time at the best measured
   throughput (the floor for this graph on this machine).

Forward + backward is counted as 3 x forward (input and weight gradients each cost about one
forward); all numbers come from one run, since timings on these machines swing between runs.

    python bench/train_step_flops.py [--rois 64] [--steps 5] [--precision mixed_bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from train_monuseg import DATA, kumar_split  # noqa: E402


def part_of(layer_name: str) -> str:
    if layer_name.startswith(("fpn_",)):
        return "FPN"
    if layer_name.startswith("rpn_"):
        return "RPN"
    if layer_name.startswith("mrcnn_mask"):
        return "mask head"
    if layer_name.startswith("mrcnn_"):
        return "box head"
    return "backbone"


def forward_macs(model, batch) -> tuple[dict, dict]:
    """Multiply-adds per part for one forward pass of `model` on `batch` (eager, real shapes),
    and how often each Conv2D configuration (input shape, filters, kernel, strides, padding)
    was called."""
    import tensorflow as tf
    from keras import layers as KL

    macs = defaultdict(float)
    conv_calls = defaultdict(int)

    def counting(cls, count):
        original = cls.call

        def call(self, inputs, *args, **kwargs):
            outputs = original(self, inputs, *args, **kwargs)
            macs[part_of(self.name)] += count(self, inputs, outputs)
            return outputs
        return cls, original, call

    def conv(layer, x, y):
        kh, kw = layer.kernel_size
        conv_calls[(tuple(x.shape), y.shape[-1], layer.kernel_size, layer.strides,
                    layer.padding)] += 1
        return float(np.prod(y.shape[:-1])) * y.shape[-1] * kh * kw * x.shape[-1]

    def window_conv(layer, x, y):     # the box head's convolutions, run as matrix products
        kh, kw = layer.kernel_size
        return float(np.prod(y.shape[:-1])) * y.shape[-1] * kh * kw * x.shape[-1]

    def conv_transpose(layer, x, y):
        kh, kw = layer.kernel_size
        return float(np.prod(x.shape[:-1])) * x.shape[-1] * kh * kw * y.shape[-1]

    def dense(layer, x, y):
        return float(np.prod(x.shape[:-1])) * x.shape[-1] * y.shape[-1]

    from nucseg.mrcnn.heads import WindowConv2D

    patches = [counting(KL.Conv2D, conv), counting(WindowConv2D, window_conv),
               counting(KL.Conv2DTranspose, conv_transpose), counting(KL.Dense, dense)]
    try:
        for cls, _, call in patches:
            cls.call = call
        model({k: tf.convert_to_tensor(v) for k, v in batch.items()}, training=True)
    finally:
        for cls, original, _ in patches:
            cls.call = original
    return dict(macs), dict(conv_calls)


def conv_seconds(shape, filters, kernel, strides=(1, 1), padding="same", dtype="float32",
                 repeats=5):
    """Median seconds of forward + input and weight gradients of one convolution, alone."""
    import tensorflow as tf

    x = tf.cast(tf.random.normal(shape), dtype)
    w = tf.Variable(tf.cast(tf.random.normal([*kernel, shape[-1], filters], stddev=0.01), dtype))

    @tf.function(jit_compile=False)
    def fwd_bwd(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, w, strides, padding.upper())
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(loss, [x, w])

    fwd_bwd(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        [g.numpy() for g in fwd_bwd(x)]
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def conv_throughput(shape, filters, kernel, dtype):
    """GFLOP/s of forward + input and weight gradients of one stride-1 'same' convolution."""
    flops = 3 * 2 * np.prod(shape[:-1]) * shape[-1] * filters * kernel * kernel
    return flops / conv_seconds(shape, filters, (kernel, kernel), dtype=dtype) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rois", type=int, default=64, help="TRAIN_ROIS_PER_IMAGE")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                        help="as `nucseg train --precision` (the single-convolution probes "
                             "then run in bfloat16)")
    args = parser.parse_args()

    import keras

    from nucseg.data.dataset import Dataset
    from nucseg.data.loader import LoaderOptions, TrainingLoader
    from nucseg.mrcnn import Config
    from nucseg.mrcnn.training import Trainer, build_training_model, make_optimizer, \
        set_trainable

    train, _ = kumar_split()
    config = Config.preset("paper", BACKBONE=args.backbone, TRAIN_ROIS_PER_IMAGE=args.rois)
    keras.utils.set_random_seed(0)
    model = build_training_model(config, args.precision)
    set_trainable(model, "all")
    loader = TrainingLoader(Dataset(DATA / "images", DATA / "labels", names=train[:1]), config,
                            options=LoaderOptions(seed=0))
    batches = [loader.batch(0, i) for i in range(args.steps + 1)]

    macs, conv_calls = forward_macs(model, batches[0])
    forward_gflop = 2 * sum(macs.values()) / 1e9
    step_gflop = 3 * forward_gflop
    print(f"{args.backbone}, 256 x 256, paper config, {args.rois} training ROIs, all layers, "
          f"{args.precision}")
    print("forward GFLOP by part (convolutions and dense layers, this batch):")
    for part, value in sorted(macs.items(), key=lambda kv: -kv[1]):
        print(f"  {part:10s} {2 * value / 1e9:6.2f}  ({value / sum(macs.values()):.0%})")
    print(f"  total      {forward_gflop:6.2f}; training step (x3) {step_gflop:.1f} GFLOP")

    trainer = Trainer(model, config, make_optimizer("adam", 1e-4, config))
    trainer.step(batches[0])
    step_times = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        out = trainer.step(batch)
        step_times.append(time.perf_counter() - t0)
    step = float(np.median(step_times))
    print(f"training step: median {step:.2f} s over {len(step_times)} steps "
          f"(last batch {out['positive_rois']:.0f} positive ROIs) -> "
          f"{step_gflop / step:.0f} GFLOP/s")

    probes = {
        "rpn_conv_shared at P2: 64x64x256, 3x3 -> 512": ((1, 64, 64, 256), 512, 3),
        "fpn_p2: 64x64x256, 3x3 -> 256": ((1, 64, 64, 256), 256, 3),
        "res4 3x3: 16x16x256, 3x3 -> 256": ((1, 16, 16, 256), 256, 3),
        "res4 1x1: 16x16x1024, 1x1 -> 256": ((1, 16, 16, 1024), 256, 1),
        "res2 1x1: 64x64x64, 1x1 -> 256": ((1, 64, 64, 64), 256, 1),
    }
    dtype = "bfloat16" if args.precision == "mixed_bfloat16" else "float32"
    print(f"single convolutions in {dtype}, forward + both gradients:")
    rates = {}
    for label, (shape, filters, kernel) in probes.items():
        rates[label] = conv_throughput(shape, filters, kernel, dtype)
        print(f"  {label:46s} {rates[label]:5.0f} GFLOP/s")
    best = max(rates.values())
    print(f"step at the best measured rate ({best:.0f} GFLOP/s): {step_gflop / best:.2f} s; "
          f"the step runs at {step_gflop / step / best:.0%} of it")
    alone = sum(count * conv_seconds(shape, filters, kernel, strides, padding, dtype)
                for (shape, filters, kernel, strides, padding), count in conv_calls.items())
    print(f"the step's {sum(conv_calls.values())} Conv2D calls ({len(conv_calls)} shapes), "
          f"each timed alone (forward + both gradients): {alone:.2f} s together, "
          f"{alone / step:.0%} of the step")


if __name__ == "__main__":
    main()
