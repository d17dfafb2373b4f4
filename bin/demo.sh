#!/usr/bin/env bash
# The demo chain on the embedded example (examples/monuseg_crop*.png):
#   hstain -> distance labels -> classical baseline segmentation -> score against the labels,
#   then the shipped model (nucseg models list) predicts the crop, with an overlay, and is
#   scored beside the baseline. The crop comes from one of the shipped model's training tiles,
#   so its score there shows the chain working, not accuracy on new tiles (see the model's
#   MODEL.md for held-out figures).
# Without a shipped model (or with DEMO_TRAIN=1) it trains Mask R-CNN+ for DEMO_TRAIN_STEPS
# (default 20) steps instead and predicts with that: a run this short shows the chain, not
# accuracy.
# Usage: bin/demo.sh [OUTDIR]   (default ./demo_out). Needs the `nucseg` command (pip install .).
set -euo pipefail

examples="$(cd "$(dirname "${BASH_SOURCE[0]}")/../examples" && pwd)"
out="${1:-./demo_out}"
if ! command -v nucseg >/dev/null; then
    echo "error: the nucseg command is not on PATH; install it first: python3 -m pip install ." >&2
    exit 2
fi
mkdir -p "$out"

echo "== 1. hematoxylin map        -> $out/hstain/monuseg_crop_hstain.tif"
nucseg hstain "$examples/monuseg_crop.png" -o "$out/hstain"

echo "== 2. distance map (labels)  -> $out/distance/monuseg_crop_dist.tif"
nucseg distance labels "$examples/monuseg_crop_labels.png" -o "$out/distance"

echo "== 3. baseline segmentation  -> $out/baseline/monuseg_crop_labels.tif"
nucseg baseline "$examples/monuseg_crop.png" -o "$out/baseline"

echo "== 4. score baseline vs the published labels -> $out/scores.txt"
nucseg score --gt "$examples/monuseg_crop_labels.png" --pred "$out/baseline" -o "$out/scores.txt"
cat "$out/scores.txt"

if [ "${DEMO_TRAIN:-0}" != 1 ] && nucseg models show >/dev/null 2>&1; then
    echo "== 5. predict with the shipped model (its U-Net and thresholds) -> $out/predict"
    echo "   (the crop comes from one of the model's training tiles)"
    nucseg predict "$examples/monuseg_crop.png" -o "$out/predict" --overlay
else
    echo "== 5. train Mask R-CNN+ (ResNet-50, stage 1, ${DEMO_TRAIN_STEPS:-20} steps) -> $out/run"
    mkdir -p "$out/train/images" "$out/train/labels"
    cp "$examples/monuseg_crop.png" "$out/train/images/monuseg_crop.png"
    cp "$examples/monuseg_crop_labels.png" "$out/train/labels/monuseg_crop.png"
    steps="${DEMO_TRAIN_STEPS:-20}"
    nucseg train -o "$out/run" --images "$out/train/images" --labels "$out/train/labels" \
        --config paper --backbone resnet50 --stage 1 --epochs 1,0,0,0 \
        --steps-per-epoch "$steps" --seed 0 --no-progress
    echo "== 6. predict with TTA (distance channel from the labels) -> $out/predict"
    nucseg predict "$examples/monuseg_crop.png" -m "$out/run" --tta \
        --distance-dir "$out/distance" -o "$out/predict" --overlay
fi

echo "== score the model's nuclei beside the baseline's -> $out/scores_model.txt"
nucseg score --gt "$examples/monuseg_crop_labels.png" --pred "$out/predict" \
    -o "$out/scores_model.txt"
echo "model:";    cat "$out/scores_model.txt"
echo "baseline:"; cat "$out/scores.txt"
echo "overlay: $out/predict/monuseg_crop_overlay.png"
