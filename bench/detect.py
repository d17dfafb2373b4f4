"""Benchmark MaskRCNN.detect() on a 1000x1000 tile (pad64 -> 1024), with a stage breakdown.

Prints, per configuration and detection count: warm median wall time of detect() over
--repeats runs, peak RSS of the process, and the breakdown molding / backbone+FPN /
RPN+proposals / box head (incl. DetectionLayer) / mask head / unmolding. For the breakdown the
graph is cut into four chained models that share the weights (image -> P2..P6 -> rpn_rois ->
detections -> masks), each fed with the previous one's outputs (timed after the detect() runs,
median of --breakdown-repeats passes, each interleaved with a detect() call).

Random weights do not give nuclei-like detections, so the weights are arranged (documented
in the output) to make the detection count controllable:
  * rpn_bbox_pred and mrcnn_bbox_fc are zeroed: proposals are the top-scoring anchors after
    NMS, and detections are those proposals clipped to the window (anchor-sized boxes,
    8-128 px as in the paper config);
  * the mrcnn_class_logits kernel is rescaled so the class-1 logit margin has a std of 2
    over the ROIs, and its class-1 bias is shifted so that about 100 / 700 / 2000 ROIs
    pass DETECTION_MIN_CONFIDENCE (kept at the paper's 0.7) and the per-class NMS.
With anchor-sized boxes the per-class NMS (0.3) leaves at most ~1300-1600 detections, so the
"2000" row shows that maximum. Changing a bias (a variable) needs no re-trace, unlike changing DETECTION_MIN_CONFIDENCE,
which is baked into the compiled graph; the effect on the cost is the same.

Each configuration runs in its own subprocess, so peak RSS is per configuration.

Usage:
    python bench/detect.py --no-breakdown-others   # r101 at 100/700/2000, 5-ch and r50 at 700
    python bench/detect.py --repeats 3 --configs r101
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TILE = SHARED / "data" / "monuseg2018" / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
LABELS = SHARED / "data" / "monuseg2018" / "labels" / "TCGA-18-5592-01Z-00-DX1.png"
CONFIGS = {
    "r101": dict(BACKBONE="resnet101", IMAGE_CHANNEL_COUNT=3),
    "r101-5ch": dict(BACKBONE="resnet101", IMAGE_CHANNEL_COUNT=5),
    "r50": dict(BACKBONE="resnet50", IMAGE_CHANNEL_COUNT=3),
}
MIN_CONFIDENCE = 0.7


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_tile(channels: int) -> np.ndarray:
    sys.path.insert(0, str(REPO))
    from nucseg.io import read_rgb

    rgb = read_rgb(TILE)
    if channels == 3:
        return rgb
    from nucseg.distance import label_distance_map, scale_to_uint8_range
    from nucseg.io import read_labels
    from nucseg.stain import hematoxylin, hematoxylin_model_channel

    distance = scale_to_uint8_range(label_distance_map(read_labels(LABELS)))
    h = hematoxylin_model_channel(hematoxylin(rgb))
    return np.dstack([rgb, distance, h]).astype(np.float32)  # [R, G, B, distance, H]


def arrange_weights(model) -> np.ndarray:
    """Zero the delta layers; return the class-1 logit margins of the ROIs (bias 0)."""
    km = model.keras_model
    rpn = km.get_layer("rpn_model").get_layer("rpn_bbox_pred")
    for layer in (rpn, km.get_layer("mrcnn_bbox_fc")):
        for variable in layer.weights:
            variable.assign(np.zeros(variable.shape, np.float32))
    logits = km.get_layer("mrcnn_class_logits")
    logits.bias.assign(np.zeros(logits.bias.shape, np.float32))
    return logits


def timed(fn, repeats):
    """Warm median: one untimed call first (traces a new graph), then `repeats` timed."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def conv_throughput() -> float:
    """GFLOP/s of one mask-head-sized 3x3 conv right now (the machine is shared: use it to
    compare runs)."""
    import keras
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).random((256, 14, 14, 256), np.float32))
    conv = keras.layers.Conv2D(256, 3, padding="same")
    fn = tf.function(lambda t: conv(t), jit_compile=False)
    seconds, _ = timed(lambda: fn(x).numpy(), 3)
    return 256 * 14 * 14 * 256 * 256 * 9 * 2 / seconds / 1e9


def count_for_bias(margins, rois, window, bias, config):
    """Detections the DetectionLayer would keep if the class-1 bias were `bias` (eager)."""
    import tensorflow as tf

    from nucseg.mrcnn.detection import refine_detections_graph

    z = margins + bias
    probs = np.stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], axis=1).astype(np.float32)
    deltas = np.zeros((len(rois), config.NUM_CLASSES, 4), np.float32)
    det = refine_detections_graph(tf.constant(rois), tf.constant(probs), tf.constant(deltas),
                                  tf.constant(window), tf.constant(config.BBOX_STD_DEV,
                                                                   tf.float32),
                                  config.DETECTION_MAX_INSTANCES, MIN_CONFIDENCE,
                                  config.DETECTION_NMS_THRESHOLD).numpy()
    return int((det[:, 4] > 0).sum())


def find_bias(margins, rois, window, target, config):
    low, high = -15.0, 15.0
    for _ in range(18):
        mid = (low + high) / 2
        if count_for_bias(margins, rois, window, mid, config) < target:
            low = mid
        else:
            high = mid
    return high


def stage_models(model):
    """The graph cut into four chained models (sharing the weights): each stage is timed on
    the previous stage's outputs, in the same repeat as the full detect(), so machine load
    affects both alike."""
    import keras
    import tensorflow as tf

    t = model.tensors
    image, meta, anchors = model.keras_model.inputs
    levels = [t[k] for k in ("P2", "P3", "P4", "P5", "P6")]
    specs = {
        "backbone_fpn": ([image], levels),
        "rpn_proposals": (levels + [anchors], [t["rpn_rois"]]),
        "box_head": ([t["rpn_rois"]] + levels[:4] + [meta], [t["detections"]]),
        "mask_head": ([t["detections"]] + levels[:4] + [meta], [t["mrcnn_mask"]]),
    }
    functions = {}
    for name, (inputs, outputs) in specs.items():
        sub = keras.Model(inputs, outputs)
        functions[name] = tf.function(lambda *args, sub=sub: sub(list(args), training=False),
                                      jit_compile=False)
    return functions


def run_stages(functions, image, meta, anchors):
    """One staged pass; returns ({stage: seconds}, detections, masks)."""
    import tensorflow as tf

    def sync(outputs):
        if hasattr(tf.experimental, "sync_devices"):
            tf.experimental.sync_devices()
        return outputs

    times = {}
    start = time.perf_counter()
    levels = sync(functions["backbone_fpn"](image))
    times["backbone_fpn"] = time.perf_counter() - start
    start = time.perf_counter()
    rois = sync(functions["rpn_proposals"](*levels, anchors))
    times["rpn_proposals"] = time.perf_counter() - start
    start = time.perf_counter()
    detections = sync(functions["box_head"](rois, *levels[:4], meta))
    times["box_head"] = time.perf_counter() - start
    start = time.perf_counter()
    masks = sync(functions["mask_head"](detections, *levels[:4], meta))
    times["mask_head"] = time.perf_counter() - start
    return times, detections.numpy(), masks.numpy()


def set_class1_bias(logits, bias: float) -> None:
    vector = np.zeros(logits.bias.shape, np.float32)
    vector[1] = bias
    logits.bias.assign(vector)


def run_config(name: str, targets: list[int], repeats: int, breakdown: int,
               seed: int = 0) -> dict:
    import tensorflow as tf

    from nucseg.mrcnn import Config, MaskRCNN
    from nucseg.mrcnn.anchors import get_anchors
    from nucseg.mrcnn.boxes import norm_boxes
    from nucseg.mrcnn.molding import mold_inputs, unmold_detections

    import keras

    keras.utils.set_random_seed(seed)  # the random initial weights, hence the detections
    config = Config.preset("paper", inference=True, DETECTION_MIN_CONFIDENCE=MIN_CONFIDENCE,
                           **CONFIGS[name])
    image = load_tile(config.IMAGE_CHANNEL_COUNT)
    start = time.perf_counter()
    model = MaskRCNN(config)
    build_s = time.perf_counter() - start
    logits = arrange_weights(model)
    molded, metas, windows = mold_inputs([image], config)
    args = (tf.constant(molded, tf.float32), tf.constant(metas, tf.float32),
            tf.constant(get_anchors(config, molded.shape[1:3])[None]))

    # Calibrate: logit margins of the ROIs with the bias at 0, kernel rescaled to std 2.
    start = time.perf_counter()
    calibration = model.submodel(["rpn_rois", "mrcnn_class_logits"])
    calibrate = tf.function(lambda a, b, c: calibration([a, b, c], training=False),
                            jit_compile=False)  # eager would hold every activation at once
    rois, class_logits = [x.numpy() for x in calibrate(*args)]
    calibrate_s = time.perf_counter() - start
    margins = class_logits[0, :, 1] - class_logits[0, :, 0]
    scale = 2.0 / max(float(margins.std()), 1e-6)
    logits.kernel.assign(logits.kernel.numpy() * scale)
    margins = margins * scale
    window = norm_boxes(windows[0], molded.shape[1:3])
    out = {"config": name, "backbone": config.BACKBONE, "channels": config.IMAGE_CHANNEL_COUNT,
           "molded_shape": list(molded.shape[1:]), "build_s": build_s,
           "calibration_run_s": calibrate_s, "rows": []}
    biases = {}
    for target in targets:  # detect() alone first, so peak RSS is that of detect()
        biases[target] = find_bias(margins, rois[0], window, target, config)
        set_class1_bias(logits, biases[target])
        start = time.perf_counter()
        warm = model.detect([image])[0]  # the first call per shape traces the graph
        first_s = time.perf_counter() - start
        detect_t = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = model.detect([image])[0]
            detect_t.append(time.perf_counter() - start)
        assert len(warm["rois"]) == len(result["rois"])
        row = {"target": target, "class1_bias": round(float(biases[target]), 3),
               "detections": int(len(result["rois"])),
               "detect_median_s": statistics.median(detect_t), "first_call_s": first_s}
        out["rows"].append(row)
        print(json.dumps({"progress": name, **row}), file=sys.stderr, flush=True)
    out["peak_rss_mb"] = peak_rss_mb()

    if breakdown:
        functions = stage_models(model)
        for row in out["rows"]:
            set_class1_bias(logits, biases[row["target"]])
            run_stages(functions, *args)  # traces the stage models once
            stage_t, detect_t = [], []
            for _ in range(breakdown):  # interleaved with detect(): same machine load
                start = time.perf_counter()
                model.detect([image])
                detect_t.append(time.perf_counter() - start)
                t0 = time.perf_counter()
                molded_i, metas_i, windows_i = mold_inputs([image], config)
                t1 = time.perf_counter()
                times, detections, masks = run_stages(functions, *args)
                t2 = time.perf_counter()
                unmold_detections(detections[0], masks[0], image.shape, molded_i[0].shape,
                                  windows_i[0], config)
                times.update(molding=t1 - t0, unmolding=time.perf_counter() - t2)
                stage_t.append(times)
            for key in stage_t[0]:
                row[key + "_s"] = statistics.median(t[key] for t in stage_t)
            row["staged_total_s"] = statistics.median(sum(t.values()) for t in stage_t)
            row["detect_interleaved_s"] = statistics.median(detect_t)
            print(json.dumps({"progress": name, **row}), file=sys.stderr, flush=True)
    out["conv_gflops"] = conv_throughput()
    return out


def print_table(results: list[dict], repeats: int) -> None:
    print(f"\nMaskRCNN.detect() on a 1000x1000 tile (pad64 -> 1024), paper inference config "
          f"(POST_NMS_ROIS_INFERENCE 2000, DETECTION_MAX_INSTANCES 2000, "
          f"DETECTION_MIN_CONFIDENCE {MIN_CONFIDENCE}); warm median of {repeats}")
    head = (f"{'config':9} {'dets':>5} {'detect s':>9} {'mold':>6} {'bb+fpn':>7} {'rpn+prop':>8} "
            f"{'box':>6} {'mask':>6} {'unmold':>7} {'staged':>7} {'(detect)':>8} "
            f"{'peak RSS MB':>12}")
    print(head)
    print("-" * len(head))
    for res in results:
        for row in res["rows"]:
            def f(key):
                value = row.get(key)
                return "-" if value is None else f"{value:.2f}"
            print(f"{res['config']:9} {row['detections']:>5} {row['detect_median_s']:>9.2f} "
                  f"{f('molding_s'):>6} {f('backbone_fpn_s'):>7} {f('rpn_proposals_s'):>8} "
                  f"{f('box_head_s'):>6} {f('mask_head_s'):>6} {f('unmolding_s'):>7} "
                  f"{f('staged_total_s'):>7} {f('detect_interleaved_s'):>8} "
                  f"{res['peak_rss_mb']:>12.0f}")
    for res in results:
        print(f"{res['config']}: build {res['build_s']:.1f} s, first detect() (trace) "
              f"{res['rows'][0]['first_call_s']:.1f} s, class-1 biases "
              f"{[r['class1_bias'] for r in res['rows']]}, 3x3-conv throughput at the time "
              f"{res['conv_gflops']:.0f} GFLOP/s")
    print("Stages: medians of the graph cut into chained models, each pass interleaved with a "
          "detect() call; 'staged' is the summed median, '(detect)' the median of those "
          "interleaved detect() calls. The mask head costs ~1 GFLOP per detection: compare "
          "with the conv throughput (the machine is shared). Peak RSS is taken after the "
          "detect() runs, before the stage models exist.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="r101,r101-5ch,r50",
                        help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--targets", default="100,700,2000",
                        help="detection counts for the first (r101) configuration")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--breakdown-repeats", type=int, default=3,
                        help="staged passes per detection count (0: no breakdown)")
    parser.add_argument("--no-breakdown-others", action="store_true",
                        help="time only the totals for configurations after the first")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-targets", help=argparse.SUPPRESS)
    parser.add_argument("--child-breakdown", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        targets = [int(t) for t in args.child_targets.split(",")]
        result = run_config(args.child, targets, args.repeats, args.child_breakdown, args.seed)
        print(json.dumps(result))
        return 0

    if not TILE.is_file():
        print(f"tile not found: {TILE}", file=sys.stderr)
        return 0
    results = []
    for i, name in enumerate(n.strip() for n in args.configs.split(",") if n.strip()):
        targets = args.targets if i == 0 else "700"
        breakdown = args.breakdown_repeats if i == 0 or not args.no_breakdown_others else 0
        cmd = [sys.executable, __file__, "--child", name, "--child-targets", targets,
               "--repeats", str(args.repeats), "--child-breakdown", str(breakdown),
               "--seed", str(args.seed)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            print(f"{name}: failed (exit {proc.returncode})", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print_table(results, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
