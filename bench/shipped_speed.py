"""Benchmark: what `nucseg predict` with a shipped model costs per 1000x1000 tile, warm, and
where the time goes (hematoxylin + distance U-Net, Mask R-CNN, merging, writing).

Each case is one `nucseg predict` call in a fresh process on two tiles: the first warms the
graphs up, the second's record (its `timings_seconds`) is the figure, and the process's peak
RSS is the case's. With `--labels`, both tiles are scored, so a faster setting (bfloat16)
shows what it costs in AJI on the same tiles.

    python bench/shipped_speed.py [--model monuseg-r50] [--cases one,tta,one-bf16]
                                  [--images DIR --labels DIR]

The default tiles are two MoNuSeg 2018 training tiles from ../shared (the model's own training
data: an AJI difference between cases is meaningful there, an absolute AJI is not). Timings
on a shared CPU machine are noisy: pause other work, compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg2018"
TILES = ("TCGA-18-5592-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1")
CASES = {"one": [], "tta": ["--tta"], "one-bf16": ["--precision", "mixed_bfloat16"],
         "tta-bf16": ["--tta", "--precision", "mixed_bfloat16"]}


def run_case(case: str, args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import yaml

    from nucseg.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    images = [Path(args.images) / f"{t}.tif" for t in args.tiles]
    cli(["predict", *map(str, images), "-o", str(work / "out"), "-m", args.model,
         *CASES[case]], standalone_mode=False)
    record = yaml.safe_load((work / "out" / f"{args.tiles[-1]}_record.yaml").read_text())
    row = {"case": case, **record["timings_seconds"], "nuclei": record["nuclei"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.labels:
        from nucseg.io import read_labels
        from nucseg.metrics import score_pair

        scores = [score_pair(read_labels(Path(args.labels) / f"{t}.png"),
                             read_labels(work / "out" / f"{t}_labels.tif")) for t in args.tiles]
        row["aji"] = sum(s["aji"] for s in scores) / len(scores)
        row["pq"] = sum(s["pq"] for s in scores) / len(scores)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="monuseg-r50", help="shipped model name")
    parser.add_argument("--cases", default="one,tta,one-bf16", help=", ".join(CASES))
    parser.add_argument("--images", default=str(SHARED / "images"))
    parser.add_argument("--labels", default=str(SHARED / "labels"),
                        help="label PNGs <stem>.png to score against ('' to skip)")
    parser.add_argument("--tiles", default=",".join(TILES),
                        help="two or more stems; the last one is timed")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tiles = args.tiles.split(",")
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return 0
    print(f"nucseg predict -m {args.model}, warm, tile {args.tiles[-1]}, {os.cpu_count()} cores")
    print(f"{'case':9s} {'total':>6s} {'U-Net+H':>8s} {'MRCNN':>6s} {'merge':>6s} "
          f"{'write':>6s} {'nuclei':>6s} {'RSS MiB':>8s} {'AJI':>6s} {'PQ':>6s}")
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--model", args.model, "--images",
               args.images, "--labels", args.labels, "--tiles", ",".join(args.tiles)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{case}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        aji = f"{r['aji']:6.3f} {r['pq']:6.3f}" if "aji" in r else ""
        print(f"{case:9s} {r['total']:6.1f} {r.get('channels', 0):8.1f} {r['detect']:6.1f} "
              f"{r['merge']:6.2f} {r['write']:6.2f} {r['nuclei']:6d} "
              f"{r['peak_rss_mib']:8.0f} {aji}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
