"""Prediction: members (model x TTA view) per image, merged into nuclei, written as files.

A detector is anything with `.detect(list of HxWxC images) -> list of detect() dicts` and a
`.config` carrying IMAGE_CHANNEL_COUNT and DETECTION_MAX_INSTANCES (a nucseg.mrcnn.MaskRCNN, or
a stand-in in tests); its `.name` names it in members and records. Per image, every detector
runs on every view (tiled when the image is larger than the tile size), its detections are
mapped back to the original frame and kept as one Member; the members are merged
(nucseg.prediction.merge) and the result is written by nucseg.prediction.export. The run record is written last, so
its presence marks an image as done for `--resume`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nucseg.prediction.channels import ChannelScaling, ChannelSources, extra_channels, model_input
from nucseg.prediction.export import write_geojson, write_nuclei_csv, write_overlay
from nucseg.io import (InputError, make_record, read_rgb, run_batch, write_labels,
                       write_record)
from nucseg.prediction.members import Member, save_member
from nucseg.prediction.merge import METHODS, merge_members
from nucseg.prediction.tiling import detect_tiled
from nucseg.prediction.tta import make_views

METHOD_DEFAULTS = {"vote": {"iou_threshold": 0.7, "mask_threshold": 0.7},
                   "mask-nms": {"iou_threshold": 0.5, "mask_threshold": 0.5}}
# One member has nothing to vote on: its masks are cut where Matterport's detection cuts them
# (DETECTION_MASK_THRESHOLD), so one model without TTA gives what model.detect gives.
SINGLE_MEMBER_MASK_THRESHOLD = 0.5
# A model call keeps a fixed number of proposals (POST_NMS_ROIS_INFERENCE, 2000 in the paper
# config, which trains on 256 x 256 crops). Over a whole 1000 x 1000 tile that budget is spread
# 16 times thinner than in training, and dense tissue loses nuclei; 512 px tiles recover most
# of them (docs/predict.md, "Tile size").
DEFAULT_TILE_SIZE = 512


@dataclass
class PredictOptions:
    """Everything that shapes a prediction's result (recorded in each image's record)."""

    tta: bool = False
    merge: str = "vote"
    iou_threshold: float | None = None        # None: the method's default (vote 0.7, nms 0.5)
    iou_type: str = "box"                     # vote only: "box" or "mask"
    min_members: int | None = None            # None: a majority of the members
    mask_threshold: float | None = None       # None: the method's default (vote 0.7, nms 0.5;
                                              # 0.5 for a single member)
    min_area: int = 50
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = 128
    batch_size: int = 1
    keep_members: bool = False
    geojson: bool = True
    gzip: bool = False
    csv: bool = True
    overlay: bool = False
    seed: int = 0
    precision: str = "float32"                # or mixed_bfloat16 (Mask R-CNN models)
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.precision not in ("float32", "mixed_bfloat16"):     # graph_layer.PRECISIONS
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.merge not in METHODS:
            raise ValueError(f"unknown merge method {self.merge!r}; choose one of "
                             f"{', '.join(METHODS)}")
        if self.tile_size < 64:
            raise ValueError(f"tile size must be at least 64 px, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size // 2:
            raise ValueError(f"overlap must be in [0, tile size / 2), got {self.overlap}")

    def merge_kwargs(self, n_members: int) -> dict:
        kwargs = dict(METHOD_DEFAULTS[self.merge], min_members=self.min_members,
                      min_area=self.min_area)
        if n_members == 1:
            kwargs["mask_threshold"] = SINGLE_MEMBER_MASK_THRESHOLD
        if self.iou_threshold is not None:
            kwargs["iou_threshold"] = self.iou_threshold
        if self.mask_threshold is not None:
            kwargs["mask_threshold"] = self.mask_threshold
        if self.merge == "vote":
            kwargs["iou_type"] = self.iou_type
        return kwargs


def detector_name(detector, index: int) -> str:
    return str(getattr(detector, "name", None) or f"model{index}")


# ---------------------------------------------------------------------------------------------
# members
# ---------------------------------------------------------------------------------------------
def image_members(detectors, rgb: np.ndarray, stem: str, opts: PredictOptions,
                  sources: ChannelSources | None = None, image_path: str = "",
                  timings: dict | None = None) -> list[Member]:
    """One Member per (detector, view), in the original image's frame."""
    from tqdm import tqdm

    timings = timings if timings is not None else {}
    views = make_views(opts.tta, opts.seed)
    inputs: dict = {}
    members = []
    total = len(detectors) * len(views)
    bar = tqdm(total=total, desc=stem, unit="member", leave=False,
               disable=not opts.progress or total < 2)
    for k, detector in enumerate(detectors):
        channels = int(detector.config.IMAGE_CHANNEL_COUNT)
        scaling = ChannelScaling.from_config(detector.config)
        extras = extra_channels(detector.config)
        key = (channels, scaling, extras)
        if key not in inputs:
            t0 = time.perf_counter()
            inputs[key] = model_input(rgb, channels, stem, sources, scaling, extras)[0]
            timings["channels"] = timings.get("channels", 0.0) + time.perf_counter() - t0
        for view in views:
            t0 = time.perf_counter()
            image = view.apply(inputs[key])
            tile_size = max(image.shape[:2]) if getattr(detector, "tiles_itself", False) \
                else opts.tile_size                 # e.g. the multi-task U-Net
            found, info = detect_tiled(
                detector, image, tile_size, opts.overlap,
                int(getattr(detector.config, "DETECTION_MAX_INSTANCES", 0) or 0),
                opts.batch_size)
            seen = Member.from_detection(found, rgb.shape[:2], detector_name(detector, k),
                                         view.name)
            member = view.invert(seen)
            member.image = image_path
            member.extra = dict(info, seconds=round(time.perf_counter() - t0, 3))
            if view.name == "hsv":
                member.extra["hsv_shift"] = list(view.hsv_shift)
            members.append(member)
            bar.update()
    bar.close()
    return members


def member_file(outdir, stem: str, index: int) -> Path:
    return Path(outdir) / f"{stem}_member{index:02d}.npz"


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def output_files(outdir, stem: str, opts: PredictOptions) -> dict[str, Path]:
    """The files one image produces (the record last)."""
    outdir = Path(outdir)
    files = {"labels": outdir / f"{stem}_labels.tif"}
    if opts.geojson:
        files["geojson"] = outdir / (f"{stem}.geojson" + (".gz" if opts.gzip else ""))
    if opts.csv:
        files["csv"] = outdir / f"{stem}_nuclei.csv"
    if opts.overlay:
        files["overlay"] = outdir / f"{stem}_overlay.png"
    files["record"] = outdir / f"{stem}_record.yaml"
    return files


def is_complete(outdir, stem: str, opts: PredictOptions) -> bool:
    """True when the record (written last) and every output it lists exist."""
    import yaml

    files = output_files(outdir, stem, opts)
    if not all(p.is_file() for p in files.values()):
        return False
    try:
        record = yaml.safe_load(files["record"].read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False
    return all((Path(outdir) / name).is_file() for name in record.get("outputs", []))


def write_outputs(files: dict, merged, rgb: np.ndarray | None,
                  hstain: np.ndarray | None) -> list[str]:
    """Label map, GeoJSON, CSV and overlay (those named in `files`); returns file names."""
    write_labels(files["labels"], merged.labels)
    if "geojson" in files:
        write_geojson(files["geojson"], merged)
    if "csv" in files:
        write_nuclei_csv(files["csv"], merged, hstain)
    if "overlay" in files and rgb is not None:
        write_overlay(files["overlay"], rgb, merged.labels)
    return [p.name for key, p in files.items() if key != "record" and p.exists()]


def _hstain_for_table(rgb, stem, sources: ChannelSources | None):
    from nucseg.prediction.channels import hematoxylin_map

    return hematoxylin_map(rgb, stem, sources or ChannelSources())


def member_summary(members: list[Member]) -> list[dict]:
    return [dict({"model": m.model, "transform": m.transform, "detections": len(m)}, **m.extra)
            for m in members]


def predict_image(image_path, detectors, outdir, opts: PredictOptions,
                  sources: ChannelSources | None = None, models: list | None = None,
                  slide_opts=None) -> dict:
    """Predict one image and write all its outputs; returns the run record. A tile at another
    pixel size than the model's is predicted resampled to it (nucseg.prediction.resolution)."""
    from nucseg.prediction.resolution import member_at, resize_rgb, tile_resolution
    from nucseg.prediction.slides.predict import model_mpp

    start = time.perf_counter()
    timings: dict = {}
    image_path = Path(image_path)
    stem = image_path.stem
    rgb = read_rgb(image_path)
    resolution = tile_resolution(image_path, model_mpp(detectors),
                                 getattr(slide_opts, "mpp", None),
                                 getattr(slide_opts, "magnification", None))
    seen = rgb
    if resolution.factor != 1.0:
        if sources is not None and (sources.distance_dir or sources.hstain_dir):
            raise InputError(image_path, f"is at {resolution.mpp:g} um/px, the model at "
                                         f"{resolution.model_mpp:g}: its maps are computed "
                                         "after resampling, so --distance-dir/--hstain-dir "
                                         "cannot be used (give --distance-model)")
        seen = resize_rgb(rgb, resolution.factor)
    timings["read"] = time.perf_counter() - start
    members = image_members(detectors, seen, stem, opts, sources, str(image_path), timings)
    if seen is not rgb:
        members = [member_at(m, rgb.shape[:2]) for m in members]
    timings["detect"] = sum(m.extra.get("seconds", 0.0) for m in members)
    files = output_files(outdir, stem, opts)
    kept = []
    if opts.keep_members:
        for k, member in enumerate(members):
            kept.append(save_member(member_file(outdir, stem, k), member).name)
    t0 = time.perf_counter()
    merged = merge_members(members, opts.merge, **opts.merge_kwargs(len(members)))
    timings["merge"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hstain = _hstain_for_table(rgb, stem, sources) if opts.csv else None
    outputs = write_outputs(files, merged, rgb, hstain)
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    record = make_record(
        "predict", inputs=[image_path], checksums=True, options=asdict(opts),
        merge=dict(merged.info), models=models or [detector_name(d, k)
                                                    for k, d in enumerate(detectors)],
        image_shape=list(rgb.shape[:2]), resolution=resolution.as_dict(), nuclei=len(merged),
        members=member_summary(members),
        splits_after_max_detections=sum(m.extra.get("splits", 0) for m in members),
        member_files=kept, outputs=outputs,
        timings_seconds={k: round(v, 3) for k, v in timings.items()})
    write_record(files["record"], record)
    return record


def predict_images(image_paths, detectors, outdir, opts: PredictOptions,
                   sources: ChannelSources | None = None, models: list | None = None,
                   log=print, slide_opts=None, dask=None) -> tuple[list[str], int]:
    """Predict a batch of tiles and slides (nucseg.prediction.slides: read in blocks); a bad
    image is reported and skipped. Returns (failures, skipped). With `dask`
    (nucseg.prediction.distributed.DaskWork) tiles are tasks and slides are spread block by
    block over its workers."""
    from nucseg.prediction.slides import is_done, is_slide, predict_slide

    image_paths = [Path(p) for p in image_paths]
    if not detectors:
        raise ValueError("no model: give -m MODEL or --ensemble RUN_DIR")
    stems = [p.stem for p in image_paths]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"several inputs share the name {dup[0]!r}: their outputs would "
                         "overwrite each other")
    todo = image_paths
    if opts.resume:
        todo = [p for p in image_paths if not is_done(outdir, p, opts)]
        if len(todo) < len(image_paths):
            log(f"resume: {len(image_paths) - len(todo)} of {len(image_paths)} images already "
                "done")
    if dask is None:
        failures = run_batch(todo, lambda p: (
            predict_slide(p, detectors, outdir, opts, sources, models, slide_opts)
            if is_slide(p) else predict_image(p, detectors, outdir, opts, sources, models,
                                              slide_opts)),
            desc="predict", progress=opts.progress)
    else:
        tiles = [p for p in todo if not is_slide(p)]
        failures = dask.tiles(tiles, outdir, replace(opts, progress=False), models,
                              slide_opts, opts.progress) if tiles else []
        failures += run_batch([p for p in todo if is_slide(p)], lambda p: predict_slide(
            p, detectors, outdir, opts, sources, models, slide_opts, dask=dask),
            desc="predict", progress=opts.progress)
    return failures, len(image_paths) - len(todo)


# ---------------------------------------------------------------------------------------------
# from command-line arguments
# ---------------------------------------------------------------------------------------------
SETTINGS_FILE = "predict_settings.yaml"


def predict_from_paths(images, model_paths, ensemble, outdir, opts: PredictOptions,
                       sources: ChannelSources, config_overrides: dict | None = None,
                       distance_model=None, log=print, slide_opts=None,
                       dask: str | None = None) -> tuple[list[str], int]:
    """`nucseg predict`: resolve models, skip finished images (--resume) before loading any
    model, load the models, predict (on a Dask cluster with `dask`, a --dask value).
    Returns (failures, number of images)."""
    from nucseg.io import IMAGE_EXTENSIONS, expand_inputs, sha256
    from nucseg.model_files import ensemble_models, resolve_model_or_name
    from nucseg.outdir import same_settings_or_refuse
    from nucseg.prediction.slides import SLIDE_EXTENSIONS, is_done, is_slide

    paths = expand_inputs(images, IMAGE_EXTENSIONS + SLIDE_EXTENSIONS)
    if not paths:
        raise ValueError("no input images")
    if not model_paths and not ensemble:
        from nucseg.models import DEFAULT_MODEL

        model_paths = [DEFAULT_MODEL]
    resolved = [resolve_model_or_name(p) for p in model_paths]
    specs = [spec for spec, _ in resolved]
    shipped = [model for _, model in resolved if model is not None]
    if ensemble:
        specs += ensemble_models(ensemble)
    if len(specs) == 1 and shipped:     # one shipped model: its tuned settings are the defaults
        opts, config_overrides = shipped_defaults(shipped[0], opts, config_overrides)
    if distance_model is None and sources.distance_dir is None and shipped \
            and shipped[0].unet_dir is not None:
        distance_model = shipped[0].unet_dir
    settings = {
        "options": {k: v for k, v in asdict(opts).items() if k not in ("resume", "progress")},
        "models": [sha256(spec.weights) for spec in specs],
        "config_overrides": {k: v for k, v in (config_overrides or {}).items() if v is not None},
        "distance": str(sources.distance_dir or distance_model or ""),
        "hstain": str(sources.hstain_dir or "")}
    if slide_opts is not None and any(is_slide(p) for p in paths):
        settings["slides"] = slide_opts.as_dict()
    same_settings_or_refuse(outdir, SETTINGS_FILE, settings, opts.resume, write=False)
    if opts.resume:
        todo = [p for p in paths if not is_done(outdir, p, opts)]
        if not todo:
            log(f"resume: all {len(paths)} images already done")
            return [], len(paths)
    from contextlib import ExitStack

    with ExitStack() as stack:      # a --dask scheduler is reached before any model loads
        client = None
        if dask is not None:
            from nucseg.prediction.distributed import dask_client

            client = stack.enter_context(dask_client(dask))
        return _load_and_predict(paths, specs, shipped, outdir, opts, sources, config_overrides,
                                 distance_model, settings, log, slide_opts, client), len(paths)


def _load_and_predict(paths, specs, shipped, outdir, opts, sources, config_overrides,
                      distance_model, settings, log, slide_opts, client) -> list[str]:
    from nucseg.io import sha256
    from nucseg.model_files import load_model
    from nucseg.outdir import same_settings_or_refuse

    if distance_model is not None:
        from nucseg.unet import load_unet

        sources.distance_model = load_unet(distance_model)
    if opts.precision == "mixed_bfloat16":
        from nucseg.mrcnn.graph_layer import bfloat16_slow_here

        if bfloat16_slow_here():
            log("warning: this CPU has no bfloat16 instructions (AVX512_BF16/AMX): "
                "mixed_bfloat16 runs slower here than float32")
    detectors = [load_model(spec, opts.batch_size, opts.precision, **(config_overrides or {}))
                 for spec in specs]
    for detector in detectors:
        if "distance" in extra_channels(detector.config) and sources.distance_dir is None \
                and sources.distance_model is None:
            raise ValueError(f"model {detector.name} takes a distance channel (RGB, distance, "
                             "...): give --distance-model DIR or --distance-dir DIR")
    same_settings_or_refuse(outdir, SETTINGS_FILE, settings, opts.resume)   # models loaded
    models = [{"name": s.name, "weights": str(s.weights), "weights_sha256": sha256(s.weights),
               "config": str(s.config), "rois": getattr(d.config, "POST_NMS_ROIS_INFERENCE", 0),
               "min_confidence": float(d.config.DETECTION_MIN_CONFIDENCE),
               "channel_scaling": ChannelScaling.from_config(d.config).mode}
              for s, d in zip(specs, detectors)]
    if shipped:
        models[0]["shipped_model"] = shipped[0].name
    for entry, detector in zip(models, detectors):
        if "distance" in extra_channels(detector.config) and sources.distance_model is not None:
            entry["distance_model"] = str(sources.distance_model.model_dir)
    work = None
    if client is not None:
        from nucseg.prediction.distributed import DaskWork, ModelSet

        model_set = ModelSet((tuple(specs), opts.batch_size,
                              tuple(sorted((k, v) for k, v in (config_overrides or {}).items()
                                           if v is not None)),
                              None if distance_model is None else str(distance_model),
                              opts.precision))
        work = DaskWork(client, model_set, replace(sources, distance_model=None))
        log(f"dask: {work.workers()} worker(s)")
    return predict_images(paths, detectors, outdir, opts, sources, models, log, slide_opts,
                          dask=work)[0]


def shipped_defaults(model, opts: PredictOptions, config_overrides: dict | None):
    """Fill the settings the user left unset with a shipped model's tuned thresholds."""

    thresholds = model.thresholds
    overrides = model.config_overrides(config_overrides)
    changes = {}
    if opts.tta:
        for key in ("min_members", "mask_threshold"):
            if getattr(opts, key) is None and key in thresholds:
                changes[key] = thresholds[key]
    elif opts.mask_threshold is None and "mask_threshold_one_pass" in thresholds:
        changes["mask_threshold"] = float(thresholds["mask_threshold_one_pass"])
    return (replace(opts, **changes) if changes else opts), overrides
