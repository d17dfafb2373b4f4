"""Benchmark: whole-slide prediction (`predict_slide`) on synthetic slides of growing size,
single-process and on a local Dask cluster: wall time, throughput, peak memory, time shares.

The slides are pyramidal tiled TIFFs (0.25 um/px, zlib, resolution tags; OpenSlide reads them as
generic TIFF) of purple nucleus-like blobs on pink tissue, with a glass border and a glass
notch in the top-right quarter so that tissue detection skips blocks. They are written tile by
tile (every level rendered directly from the same nucleus field), so no level is ever held
whole in memory; they are kept in --workdir and reused.

The default detector is a stand-in (dark connected components with soft masks, as the tests'
BlobDetector): it costs almost nothing, so the figures are those of reading, tissue, channels,
merging, block ownership and writing. `--model` runs a real model (directory or shipped name).
Each (size, mode) runs in a fresh process of this script, so its peak RSS is its own: the main
process' (RUSAGE_SELF) and the largest Dask worker's (RUSAGE_CHILDREN, after the cluster is
closed). With Dask the read/channels/detect/merge times are summed over the workers (worker
seconds), so their shares of the wall time may add up past 100 %. The last lines compare the
main process' peak RSS on the largest and smallest slide; below ~4096 px a side it still grows
with the overview and thumbnail (capped at 2048 px a side), so compare sizes above that.

    python bench/slide.py [--sizes 4096,8192,16384] [--block-size 2048] [--workdir DIR]
                          [--model stand-in|PATH|NAME] [--distance-model DIR]
                          [--dask local:2 | --no-dask] [--keep]

Timings on a shared CPU machine are noisy; compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

MPP = 0.25
TILE = 512                      # TIFF tile side
CELL = 32                       # level-0 px per possible nucleus (apart: blobs never touch)
SHARES = ("read", "channels", "detect", "merge", "write")


# ---------------------------------------------------------------------------------------------
# synthetic slides
# ---------------------------------------------------------------------------------------------
def _uniform(a, b, salt: int) -> np.ndarray:
    """A reproducible uniform [0, 1) value per integer pair (a, b): a random field that any
    tile of any level can evaluate on its own, without a shared RNG state."""
    h = (np.asarray(a).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ \
        (np.asarray(b).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)) ^ \
        np.uint64(salt * 0x165667B19E3779F9 % 2 ** 64)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def _tissue(u, v):
    """Tissue at normalised slide coordinates: all but a 4 % glass border and the glass
    notch u > 0.45, v < 0.55 (the top-right quarter's blocks hold no tissue)."""
    inside = (u > 0.04) & (u < 0.96) & (v > 0.04) & (v < 0.96)
    return inside & ~((u > 0.45) & (v < 0.55))


_T = np.clip((225 - np.arange(256.0)) / 185, 0, 1)[:, None]       # grey -> H&E colour
_COLOURS = (np.array([235, 200, 225]) * (1 - _T) + np.array([70, 40, 140]) * _T).astype(np.uint8)


def render_tile(side: int, level: int, y0: int, x0: int) -> np.ndarray:
    """The TILE x TILE RGB tile at (y0, x0) of `level` (level-0 px / 2**level) of a slide
    `side` px a side: soft dark disks (radius 5-9 level-0 px) on pink, glass outside tissue."""
    import cv2

    s = 2 ** level
    grey = np.full((TILE, TILE), 225, np.uint8)
    Y0, X0, span = y0 * s, x0 * s, TILE * s
    cy, cx = np.mgrid[(Y0 - 16) // CELL:(Y0 + span + 16) // CELL + 1,
                      (X0 - 16) // CELL:(X0 + span + 16) // CELL + 1]
    py = (cy + 0.5) * CELL + (_uniform(cy, cx, 1) - 0.5) * 10
    px = (cx + 0.5) * CELL + (_uniform(cy, cx, 2) - 0.5) * 10
    radius = 5 + 4 * _uniform(cy, cx, 3)
    keep = (_uniform(cy, cx, 0) < 0.55) & _tissue(px / side, py / side)
    centres = np.rint(np.stack([px[keep] / s - x0, py[keep] / s - y0], 1) * 16).astype(int)
    for (x, y), r in zip(centres.tolist(), radius[keep].tolist()):
        steps = max(1, int(r / s))
        for j in range(steps):                  # concentric: darker towards the centre
            rj = r * (1 - j / steps)            # (cv2 fixed point: 4 fractional bits)
            cv2.circle(grey, (x, y), int(rj / s * 16), int(40 + 60 * rj / r), -1, shift=4)
    rgb = _COLOURS[grey]
    u = (x0 + np.arange(TILE) + 0.5) * s / side
    v = (y0 + np.arange(TILE) + 0.5) * s / side
    rgb[~_tissue(u[None, :], v[:, None])] = (243, 241, 243)
    return rgb


def write_slide(path: Path, side: int) -> Path:
    """A pyramidal tiled TIFF `side` px a side (levels halve down to ~1024 px), tile by tile;
    an existing file is reused (written under a temporary name, so it is complete)."""
    import tifffile

    if path.is_file():
        return path
    levels = max(2, int(np.ceil(np.log2(side / 1024))) + 1)
    part = path.with_suffix(".part.tif")
    with tifffile.TiffWriter(part, bigtiff=side * side * 3 > 2 ** 31) as tw:
        for k in range(levels):
            n = side // 2 ** k
            tiles = (render_tile(side, k, y, x) for y in range(0, n, TILE)
                     for x in range(0, n, TILE))
            res = 1e4 / (MPP * 2 ** k)
            tw.write(tiles, shape=(n, n, 3), dtype=np.uint8, tile=(TILE, TILE),
                     photometric="rgb", compression="zlib", subfiletype=1 if k else 0,
                     resolution=(res, res), resolutionunit="CENTIMETER")
    part.rename(path)
    return path


# ---------------------------------------------------------------------------------------------
# the stand-in detector (module level: Dask workers import it)
# ---------------------------------------------------------------------------------------------
class StandInDetector:
    """Dark connected blobs with soft masks (darkness): no network, so a run measures the
    slide machinery. Has the config attributes `predict_slide` reads."""

    name = "stand-in"

    def __init__(self, max_instances: int = 1000):
        self.config = SimpleNamespace(IMAGE_CHANNEL_COUNT=3, DETECTION_MAX_INSTANCES=max_instances,
                                      DETECTION_MIN_CONFIDENCE=0.5, MODEL_MPP=MPP)

    def detect(self, images):
        import cv2

        results = []
        for image in images:
            grey = image[..., :3].astype(np.float32).mean(-1)
            count, comp, stats, _ = cv2.connectedComponentsWithStats(
                (grey < 120).astype(np.uint8), connectivity=4)
            order = sorted(range(1, count), key=lambda k: -stats[k][4])
            order = order[:self.config.DETECTION_MAX_INSTANCES]
            rois, scores, masks = [], [], []
            for k in order:
                x, y, w, h, area = stats[k]
                rois.append([y, x, y + h, x + w])
                scores.append(area / (area + 50.0))
                masks.append(np.where(comp[y:y + h, x:x + w] == k,
                                      1 - grey[y:y + h, x:x + w] / 400, 0).astype(np.float32))
            results.append({"rois": np.array(rois, np.int32).reshape(-1, 4),
                            "scores": np.array(scores, np.float32),
                            "class_ids": np.ones(len(rois), np.int32), "masks": masks})
        return results


def stand_in_models():
    """ModelSet loader for the workers: (detectors, no distance U-Net)."""
    return [StandInDetector()], None


# ---------------------------------------------------------------------------------------------
# one run, in its own process
# ---------------------------------------------------------------------------------------------
def run_one(size: int, mode: str, args) -> dict:
    """predict_slide on the slide of `size`; the record's figures and this process' peaks."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from contextlib import ExitStack

    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.predict import PredictOptions, shipped_defaults
    from nucseg.prediction.slides.predict import SlideOptions, predict_slide, slide_files

    opts, sources, overrides = PredictOptions(progress=False), ChannelSources(), {}
    if args.model == "stand-in":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [sys.path[0]] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        import slide as importable             # the workers import the loader by this name

        detectors, model_args, distance = [importable.StandInDetector()], None, None
    else:                                      # as nucseg.prediction.predict.predict_from_paths
        from nucseg.model_files import load_model, resolve_model_or_name

        spec, shipped = resolve_model_or_name(args.model)
        if shipped is not None:
            opts, overrides = shipped_defaults(shipped, opts, overrides)
        distance = args.distance_model or (shipped.unet_dir if shipped is not None else None)
        if distance is not None:
            from nucseg.unet import load_unet

            sources.distance_model = load_unet(distance)
        detectors = [load_model(spec, 1, **overrides)]
        model_args = ((spec,), 1, tuple(sorted(overrides.items())),
                      None if distance is None else str(distance))
    path = Path(args.workdir) / f"slide_{size}.tif"
    outdir = Path(args.workdir) / f"out_{size}_{mode}"
    shutil.rmtree(outdir, ignore_errors=True)
    with ExitStack() as stack:
        work = None
        if mode == "dask":
            from nucseg.prediction.distributed import DaskWork, ModelSet, dask_client

            client = stack.enter_context(dask_client(args.dask))
            models = ModelSet((), loader=importable.stand_in_models) if model_args is None \
                else ModelSet(model_args)
            work = DaskWork(client, models, ChannelSources())
        record = predict_slide(path, detectors, outdir, opts, sources,
                               slide_opts=SlideOptions(block_size=args.block_size), dask=work)
    missing = [p.name for p in slide_files(outdir, path.stem, opts).values() if not p.is_file()]
    if missing:
        raise RuntimeError(f"{outdir}: missing outputs {missing}")
    if not args.keep:
        shutil.rmtree(outdir, ignore_errors=True)
    return {"size": size, "mode": mode, "timings": record["timings_seconds"],
            "blocks": record["blocks"], "nuclei": record["nuclei"],
            "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def print_row(r: dict) -> None:
    t = r["timings"]
    wall, mpx = t["total"], r["size"] ** 2 / 1e6
    blocks = f"{r['blocks']['with_tissue']}/{r['blocks']['total']}"
    workers = f"{r['workers_mib']:7.0f}" if r["mode"] == "dask" else f"{'-':>7}"
    shares = " ".join(f"{100 * t.get(k, 0.0) / wall:5.1f}" for k in SHARES)
    print(f"{r['size']:6d} {mpx:7.1f} {r['mode']:>6} {wall:8.1f} {60 * mpx / wall:8.1f} "
          f"{blocks:>8} {r['nuclei']:8d} {r['main_mib']:7.0f} {workers} {shares}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192,16384", help="slide sides in px")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--workdir", default=None, help="where the slides are kept (reused)")
    parser.add_argument("--model", default="stand-in", help="stand-in, a model dir or name")
    parser.add_argument("--distance-model", default=None, help="U-Net dir (5-channel models)")
    parser.add_argument("--dask", default="local:2", help="the Dask mode's --dask value")
    parser.add_argument("--no-dask", action="store_true", help="single-process runs only")
    parser.add_argument("--keep", action="store_true", help="keep the prediction outputs")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args)))
        return
    temporary = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_slide_")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = ["single"] + ([] if args.no_dask else ["dask"])
    for size in sizes:
        write_slide(Path(args.workdir) / f"slide_{size}.tif", size)
    print(f"slides in {args.workdir}, model {args.model}, block {args.block_size} px, "
          f"dask {'off' if args.no_dask else args.dask}, {os.cpu_count()} CPU cores")
    print("with dask, read/chan/detect/merge are worker seconds summed over the workers; "
          "shares are % of wall; workers MiB = the largest worker's peak")
    print(f"{'side':>6} {'Mpx':>7} {'mode':>6} {'wall s':>8} {'Mpx/min':>8} {'blocks':>8} "
          f"{'nuclei':>8} {'mainMiB':>7} {'wrkMiB':>7} " + " ".join(f"{k[:5]:>5}" for k in SHARES))
    rows = []
    for size in sizes:
        for mode in modes:
            cmd = [sys.executable, __file__, "--one", str(size), mode, "--workdir", args.workdir,
                   "--block-size", str(args.block_size), "--model", args.model,
                   "--dask", args.dask] + (["--keep"] if args.keep else []) + \
                (["--distance-model", args.distance_model] if args.distance_model else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{size} {mode} failed:\n{out.stderr[-2000:]}")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print_row(rows[-1])
    for mode in modes:
        runs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["size"])
        if len(runs) > 1:
            ratio = runs[-1]["main_mib"] / runs[0]["main_mib"]
            grew = (runs[-1]["size"] / runs[0]["size"]) ** 2
            print(f"{mode}: main-process peak RSS x{ratio:.2f} from {runs[0]['size']} to "
                  f"{runs[-1]['size']} px (pixels x{grew:.0f}): "
                  f"{'flat' if ratio < 1.25 else 'NOT flat'}")
    if temporary and not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
