#!/usr/bin/env bash
# The demo chain on the embedded example (examples/monuseg_crop*.png):
#   hstain -> distance labels -> classical baseline segmentation -> score against the labels.
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
