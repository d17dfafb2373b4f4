"""Peer benchmark: StarDist 0.9.x trained from scratch on MoNuSeg 2018 (Kumar split), on CPU.

StarDist is the tool a user would most likely pick instead of nucseg. This script measures it
on the same data and with the same metric code as the nucseg benchmarks (bench/train_monuseg.py),
so its figures can be put beside the nucseg model's:

1. train a StarDist2D model from scratch on the 16 training tiles of the Kumar split
   (metadata.csv `split_hovernet_kumar == "train"`) for a wall-clock budget;
2. optimise its probability / NMS thresholds with StarDist's own `optimize_thresholds` on
   `--tune-tiles` training tiles (the first ones in metadata order, as train_monuseg.py tunes);
3. predict the 14 held-out tiles (test_same_organ + test_diff_organ; `--eval-tiles N` takes the
   first N in metadata order, the same tiles train_monuseg.py takes);
4. score every tile with nucseg.metrics.score_pair (AJI, AJI+, PQ, DQ, SQ, Dice, Dice2) against
   the label PNGs, and print the per-tile table, the mean, organ and seen/unseen means (the
   table `nucseg score --format table` prints) and the predict time per 1000x1000 tile.

The recipe (StarDist's own 2D training notebook with RGB input, every other setting at its
0.9 default), the tuning-tile choice, the Keras 2 / Keras 3 choice and the figures measured
here are in docs/peer-stardist.md. StarDist and its stack (tf-keras, csbdeep, numba) stay out
of nucseg's environment: the worker (bench/stardist_worker.py) runs in a virtual environment
of its own, as a subprocess, and only plain files are exchanged (.npy tiles, JSON; no
pickles; the held-out tiles' labels are never given to StarDist).

Create the venv once (CPU only, about 2.7 GB, outside the repository; the pip line pins the
versions this script was checked with):

    python3 -m venv /work/venvs/stardist
    /work/venvs/stardist/bin/pip install "stardist==0.9.2" "tensorflow==2.21.0" "tf-keras==2.21.0"

Run (from the repository; the data default is ../shared/data/monuseg2018):

    python bench/peer_stardist.py --budget-minutes 60                 # the full figure
    python bench/peer_stardist.py --budget-minutes 3 --eval-tiles 2   # smoke test
    python bench/peer_stardist.py --budget-minutes 60 --out runs/stardist60 --seed 1
    python bench/peer_stardist.py --report runs/stardist60   # print a finished run again

The output directory keeps the model (`model/stardist_he/`: config.json, weights_best.h5,
thresholds.json), the label maps (`pred/`), `scores.csv` (nucseg's per-image score CSV, which
`nucseg compare` reads, e.g. against a `nucseg score --format csv` table of nucseg's own
predictions of the same tiles), `scores.json`, the worker's record and logs. Times are
wall-clock on this machine (2 cores): another job running at the same time slows training
(fewer steps in the budget) and prediction; the output prints the load average.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "monuseg2018"
DEFAULT_VENV = Path("/work/venvs/stardist")
VENV_HINT = ('python3 -m venv {venv} && {venv}/bin/pip install "stardist==0.9.2" '
             '"tensorflow==2.21.0" "tf-keras==2.21.0"')

# The program run inside the StarDist venv (copied into the output directory with the run).
WORKER = Path(__file__).with_name("stardist_worker.py")


def kumar_split(data: Path):
    with open(data / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r["id"] for r in rows if r["split_hovernet_kumar"] == "train"]
    test = [r["id"] for r in rows if r["split_hovernet_kumar"] in ("test_same_organ",
                                                                   "test_diff_organ")]
    return train, test


def write_inputs(data: Path, inputs: Path, names, with_labels: bool):
    """The tiles as .npy (uint8 RGB; labels int32), read by nucseg's own readers."""
    from nucseg.io import read_labels, read_rgb

    inputs.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for name in names:
        images.append(inputs / f"{name}_image.npy")
        if not images[-1].exists():
            np.save(images[-1], read_rgb(data / "images" / f"{name}.tif"))
        if with_labels:
            labels.append(inputs / f"{name}_gt.npy")
            if not labels[-1].exists():
                np.save(labels[-1], read_labels(data / "labels" / f"{name}.png"))
    return [str(p) for p in images], [str(p) for p in labels]


def worker_env(keras: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg",
               TF_USE_LEGACY_KERAS="1" if keras == "2" else "0", PYTHONUNBUFFERED="1",
               PYTHONNOUSERSITE="1")
    return env


def run_worker(python: Path, job_path: Path, log_path: Path, env: dict) -> int:
    """Run the worker; its stdout is echoed, its stderr (TF noise, warnings) goes to the log."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(python), str(job_path.parent / "stardist_worker.py"),
                                 str(job_path)], stdout=subprocess.PIPE, stderr=log, text=True,
                                env=env, cwd=job_path.parent)
        for line in proc.stdout:
            print(line, end="", flush=True)
            log.write(line)
        return proc.wait()


def nucseg_figures() -> list[tuple[str, dict]]:
    """The shipped model's recorded Kumar held-out figures (model.yaml), for the side-by-side
    table: its Kumar twin was trained with the shipped recipe on the same 16 tiles and scored
    on the same 14 with the same metric code."""
    import re

    from nucseg import models

    try:
        manifest = models.show()
    except Exception as exc:  # no shipped model installed: print StarDist alone
        print(f"(no shipped nucseg model to compare with: {exc})")
        return []
    text = str(manifest.get("figures", {}).get("held_out_kumar_twin_14", ""))
    speed = str(manifest.get("figures", {}).get("predict_1000px_tile_2_cpu_cores", ""))
    number = r"([0-9.]+)"
    rows = []
    for label, pattern in (("one pass", r"one pass"), ("--tta", r"TTA"),
                           ("nucseg baseline", r"baseline")):
        m = re.search(pattern + rf" AJI {number} PQ {number} DQ {number} SQ {number}", text)
        if m:
            rows.append((label, dict(zip(("aji", "pq", "dq", "sq"), map(float, m.groups())))))
    seconds = dict(zip(("one pass", "--tta"), re.findall(r"([0-9.]+) s", speed)))
    for label, row in rows:
        row["seconds"] = seconds.get(label)
    return [(f"nucseg {manifest['name']} Kumar twin, {label}" if label != "nucseg baseline"
             else label, row) for label, row in rows]


def report(out: Path, data: Path, seen_organs: str, venv: Path, wall: float | None = None):
    """Score a finished run's label maps and print its figures beside nucseg's."""
    from nucseg.io import read_labels
    from nucseg.metrics import score_pair
    from nucseg.score_formats import to_csv, to_json, to_table
    from nucseg.scoring import organ_table, summarize

    job = json.loads((out / "job.json").read_text())
    res = json.loads((out / "result.json").read_text())
    tune, norm, augment = job["tune_images"], job["norm"], job["augment"]

    organs = organ_table(data / "metadata.csv")
    rows = []
    for tile in res["tiles"]:
        gt = read_labels(data / "labels" / f"{tile['image']}.png")
        pred = np.load(out / "pred" / f"{tile['image']}_labels.npy", allow_pickle=False)
        rows.append({"image": tile["image"], **score_pair(gt, pred)})
    result = summarize(rows, {r["image"]: organs[r["image"]] for r in rows},
                       [o for o in seen_organs.split(",") if o.strip()])
    (out / "scores.csv").write_text(to_csv(result))
    (out / "scores.json").write_text(to_json(result))

    v, cfg = res["versions"], res["config"]
    steps, train_s = res["steps"], res["train_s"]
    print()
    print(f"StarDist {v['stardist']}, csbdeep {v['csbdeep']}, TensorFlow {v['tensorflow']}, "
          f"{v['keras']}, numpy {v['numpy']} (venv {venv}, CPU only)")
    print(f"recipe: n_rays {cfg['n_rays']}, grid {tuple(cfg['grid'])}, patch "
          f"{tuple(cfg['train_patch_size'])}, batch {cfg['train_batch_size']}, lr "
          f"{cfg['train_learning_rate']:g}, U-Net depth {cfg['unet_n_depth']} / "
          f"{cfg['unet_n_filter_base']} filters; normalize 1/99.8 "
          f"({'per channel' if norm == 'channel' else 'channels jointly'}); augmentation "
          f"{augment}; median nucleus extent {res['median_extent']} px, field of view "
          f"{res['field_of_view']} px")
    epochs_note = (f"{res['epochs']} epochs of {cfg['train_steps_per_epoch']} steps"
                   + (" (the last one partial)" if res["stopped_by_budget"]
                      and steps % cfg["train_steps_per_epoch"] else ""))
    print(f"training: {steps} steps = {epochs_note} in {train_s / 60:.1f} min "
          f"({'stopped by the budget' if res['stopped_by_budget'] else 'all epochs done'}); "
          f"{train_s / max(steps, 1):.2f} s/step overall (first step "
          f"{res['first_step_s'] or 0:.1f} s, with tracing); "
          f"{steps * cfg['train_batch_size']} patches seen")
    if res["history"]:
        first, last = res["history"][0], res["history"][-1]
        nan = float("nan")
        print(f"  loss {first.get('loss', nan):.4f} -> {last.get('loss', nan):.4f}"
              f", val_loss {first.get('val_loss', nan):.4f} -> "
              f"{last.get('val_loss', nan):.4f}; weights used: best val_loss, epoch "
              f"{res['best_epoch']} (StarDist's checkpoint)")
    th = res["thresholds"]
    if res["tune_error"]:
        print(f"thresholds: optimize_thresholds FAILED ({res['tune_error']}); StarDist's "
              f"defaults used: prob {th['prob']:.3f}, nms {th['nms']:.2f}")
    else:
        print(f"thresholds (optimize_thresholds on {len(tune)} training tiles, "
              f"{res['tune_s']:.0f} s): prob {th['prob']:.3f}, nms {th['nms']:.2f}")
    if wall is not None:
        print(f"worker wall time {wall / 60:.1f} min; load average now "
              f"{os.getloadavg()[0]:.2f}")
    print()
    print(f"held-out tiles, scored with nucseg.metrics.score_pair:")
    print(to_table(result), end="")
    times = np.array([t["seconds"] for t in res["tiles"]])
    shapes = sorted({"x".join(str(s) for s in t["shape"]) for t in res["tiles"]})
    print()
    print(f"predict time per tile ({', '.join(shapes)} px; normalize + predict_instances with "
          f"n_tiles {tuple(res['tiles'][0]['n_tiles'][:2])}, after a warm-up): "
          f"mean {times.mean():.1f} s, median {np.median(times):.1f} s, "
          f"min {times.min():.1f} s, max {times.max():.1f} s")
    for t in res["tiles"]:
        print(f"  {t['image']}  {t['seconds']:6.1f} s")
    m = result["mean"]
    print(f"StarDist held-out mean over {len(rows)} tiles: AJI {m['aji']:.4f}, PQ {m['pq']:.4f},"
          f" DQ {m['dq']:.4f}, SQ {m['sq']:.4f} after {train_s / 60:.0f} min / {steps} steps "
          f"of training; {np.median(times):.1f} s per tile (median)")
    print(f"per-image scores: {out / 'scores.csv'} (nucseg compare reads it); model: "
          f"{out / 'model' / 'stardist_he'}")

    print()
    title = f"{len(rows)} held-out Kumar tiles (means)"
    print(f"{title:<46} {'AJI':>6} {'PQ':>6} {'DQ':>6} {'SQ':>6} {'s/tile':>7}")
    ours = [(f"StarDist {v['stardist']}, {train_s / 60:.0f} min of training",
             {**m, "seconds": float(np.median(times))})] + nucseg_figures()
    for label, row in ours:
        sec = f"{float(row['seconds']):7.1f}" if row.get("seconds") is not None else f"{'-':>7}"
        print(f"{label:<46} {row['aji']:6.3f} {row['pq']:6.3f} {row['dq']:6.3f} "
              f"{row['sq']:6.3f} {sec}")
    print("(nucseg rows: the 14 tiles, recorded in the shipped model's model.yaml; its Kumar "
          "twin trained 3.3 h of step time on the same 16 tiles; seconds: the shipped model, "
          "the same network)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="virtual environment with stardist (default %(default)s)")
    parser.add_argument("--budget-minutes", type=float, default=60.0,
                        help="training wall-clock budget (default %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="MoNuSeg 2018 folder with metadata.csv, images/, labels/ "
                             "(default ../shared/data/monuseg2018 beside the repository)")
    parser.add_argument("--out", type=Path,
                        help="output directory; keeps the model (default: a new temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-tiles", type=int, default=3,
                        help="training tiles for optimize_thresholds (and StarDist's "
                             "validation images; default %(default)s)")
    parser.add_argument("--eval-tiles", type=int, default=0,
                        help="held-out tiles to predict, first N in metadata order (0 = all 14)")
    parser.add_argument("--holdout-tune", action="store_true",
                        help="do not train on the tuning tiles (the notebook's train/validation "
                             "split) instead of training on all 16")
    parser.add_argument("--keras", choices=("2", "3"), default="2",
                        help="run StarDist on tf-keras (2, default) or Keras 3")
    parser.add_argument("--norm", choices=("channel", "joint"), default="channel",
                        help="percentile normalisation per channel (the notebook's default) or "
                             "over the three channels together")
    parser.add_argument("--augment", choices=("notebook", "fliprot"), default="notebook",
                        help="the notebook's augmentation (flips/rotations, intensity, noise) or "
                             "flips/rotations only")
    parser.add_argument("--steps-per-epoch", type=int, default=100,
                        help="StarDist's train_steps_per_epoch (default %(default)s)")
    parser.add_argument("--max-epochs", type=int, default=400,
                        help="StarDist's train_epochs, if the budget lasts (default %(default)s)")
    parser.add_argument("--progress-every", type=int, default=25,
                        help="print a progress line every N training steps")
    parser.add_argument("--seen-organs", default="breast,kidney,liver,prostate",
                        help="organs of the training tiles, for the seen/unseen means")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="train nothing: score and print the finished run in DIR again")
    args = parser.parse_args()

    from nucseg import __version__ as nucseg_version

    data = args.data.resolve()
    if args.report:
        if not (args.report / "result.json").is_file():
            sys.exit(f"error: {args.report}: no result.json of a finished run")
        return report(args.report.resolve(), data, args.seen_organs, args.venv)
    python = args.venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"error: {python}: no StarDist venv; create it with\n  "
                 + VENV_HINT.format(venv=args.venv))
    if not (data / "metadata.csv").is_file():
        sys.exit(f"error: {data / 'metadata.csv'}: not found (pass --data)")
    train, test = kumar_split(data)
    if not train or not test:
        sys.exit(f"error: {data / 'metadata.csv'}: no Kumar split (split_hovernet_kumar)")
    most = len(train) - (1 if args.holdout_tune else 0)
    if not 1 <= args.tune_tiles <= most:
        sys.exit(f"error: --tune-tiles must be 1..{most}")
    tune = train[:args.tune_tiles]
    fit = train[args.tune_tiles:] if args.holdout_tune else train
    evaluate = test[:args.eval_tiles] if args.eval_tiles > 0 else test

    out = (args.out or Path(tempfile.mkdtemp(prefix="peer_stardist_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").exists() or (out / "model").exists():
        sys.exit(f"error: {out}: holds an earlier run (result.json / model); pick another --out")
    load = os.getloadavg()
    print(f"peer benchmark: StarDist on MoNuSeg 2018, Kumar split; nucseg {nucseg_version} "
          f"metrics; python {platform.python_version()}; {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} at start")
    print(f"training tiles: {len(fit)}{' (tuning tiles held out)' if args.holdout_tune else ''};"
          f" tuning (optimize_thresholds) on {len(tune)} training tiles: {', '.join(tune)}; "
          f"held-out tiles predicted: {len(evaluate)} of {len(test)}")
    print(f"budget {args.budget_minutes:g} min of training; seed {args.seed}; keras "
          f"{args.keras}; normalisation {args.norm}; augmentation {args.augment}; output {out}")

    inputs = out / "inputs"
    fit_x, fit_y = write_inputs(data, inputs, fit, True)
    tune_x, tune_y = write_inputs(data, inputs, tune, True)
    test_x, _ = write_inputs(data, inputs, evaluate, False)
    job = {"out": str(out), "seed": args.seed, "norm": args.norm, "augment": args.augment,
           "budget_s": args.budget_minutes * 60.0, "steps_per_epoch": args.steps_per_epoch,
           "max_epochs": args.max_epochs, "progress_every": max(1, args.progress_every),
           "train_images": fit_x, "train_labels": fit_y, "tune_images": tune_x,
           "tune_labels": tune_y, "test_names": evaluate, "test_images": test_x}
    job_path = out / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    shutil.copyfile(WORKER, out / "stardist_worker.py")

    t0 = time.perf_counter()
    rc = run_worker(python, job_path, out / "worker.log", worker_env(args.keras))
    wall = time.perf_counter() - t0
    if rc != 0 or not (out / "result.json").exists():
        tail = (out / "worker.log").read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"error: StarDist worker failed (exit {rc}); log: {out / 'worker.log'}")
    shutil.rmtree(inputs, ignore_errors=True)
    report(out, data, args.seen_organs, args.venv, wall)


if __name__ == "__main__":
    main()
