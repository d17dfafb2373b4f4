"""`nucseg predict` on a whole slide: tissue blocks at the model's pixel size, streamed outputs.

Per slide: open it (nucseg.prediction.slides.reader), plan the model-resolution frame (frame.py), find the
tissue on the overview (tissue.py), cut the frame into blocks (blocks.py) and run every tissue
block through the same per-image path a tile takes (nucseg.prediction.predict.image_members: channels,
tiles, TTA, ensemble; then nucseg.prediction.merge), keep each block's own nuclei in a block file
(resume.py: --resume re-runs only blocks without one), then write them all in level-0
coordinates (outputs.py). The record is written last, so its presence marks the slide as done.
"""
from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nucseg.io import InputError, make_record, write_record

DEFAULT_BLOCK_SIZE = 2048
DEFAULT_MODEL_MPP = 0.25


@dataclass
class SlideOptions:
    """Slide-only settings (the rest is nucseg.prediction.predict.PredictOptions)."""

    mpp: float | None = None             # overrides the slide's (or a tile's) pixel size
    magnification: float | None = None   # the same as mpp = 10 / magnification
    tissue_mask: str | None = None       # a mask file, or a directory of <stem>_tissue.png
    block_size: int = DEFAULT_BLOCK_SIZE  # core size in model-resolution pixels
    margin: int | None = None            # None: blocks.default_margin

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def pixel_size(self) -> float | None:
        """The given pixel size: --mpp, else from --magnification (nucseg.prediction.resolution)."""
        from nucseg.prediction.resolution import MAGNIFICATION_UM

        if self.mpp:
            return self.mpp
        return MAGNIFICATION_UM / self.magnification if self.magnification else None


def slide_files(outdir, stem: str, opts) -> dict[str, Path]:
    outdir = Path(outdir)
    files = {"labels": outdir / f"{stem}_labels.tif"}
    if opts.geojson:
        files["geojson"] = outdir / f"{stem}.geojson.gz"
    if opts.csv:
        files["csv"] = outdir / f"{stem}_nuclei.csv"
    files["thumbnail"] = outdir / f"{stem}_thumbnail.png"
    files["record"] = outdir / f"{stem}_record.yaml"
    return files


def slide_done(outdir, path, opts) -> bool:
    """True when the slide's record (written last) and all its outputs exist."""
    return all(p.is_file() for p in slide_files(outdir, Path(path).stem, opts).values())


def model_mpp(detectors) -> float:
    """The pixel size the models were trained at (config MODEL_MPP); one for an ensemble."""
    values = {round(float(getattr(d.config, "MODEL_MPP", DEFAULT_MODEL_MPP)), 6)
              for d in detectors}
    if len(values) != 1:
        raise ValueError(f"the models were trained at different pixel sizes "
                         f"({', '.join(map(str, sorted(values)))} um/px); a slide is read at "
                         "one of them")
    return values.pop()


def _warn_scaling(detectors, path) -> None:
    from nucseg.prediction.channels import ChannelScaling
    from nucseg.prediction.predict import detector_name

    for k, d in enumerate(detectors):
        if int(d.config.IMAGE_CHANNEL_COUNT) == 5 and \
                ChannelScaling.from_config(d.config).mode == "per_image":
            warnings.warn(f"{path}: model {detector_name(d, k)} scales its distance and "
                          "hematoxylin channels per image (CHANNEL_SCALING per_image); a slide "
                          "is scaled block by block, which differs from scaling one whole "
                          "image (models trained with CHANNEL_SCALING fixed do not depend on "
                          "the block)", stacklevel=2)


class SlideReader:
    """The open reader, reopened once when a block fails to read (OpenSlide handles stay
    broken after an error): a failed block is retried once, then the slide fails."""

    def __init__(self, path: Path, mpp):
        from nucseg.prediction.slides.reader import open_slide

        self.path, self.mpp = path, mpp
        self.reader = open_slide(path, mpp)

    def read_block(self, frame, block) -> np.ndarray:
        from nucseg.prediction.slides.frame import read_frame_region
        from nucseg.prediction.slides.reader import open_slide

        try:
            return read_frame_region(self.reader, frame, *block.tile)
        except InputError:
            self.reader.close()
            self.reader = open_slide(self.path, self.mpp)
        try:
            return read_frame_region(self.reader, frame, *block.tile)
        except InputError as exc:
            raise InputError(self.path, f"block {block.name} failed twice: "
                                        f"{exc.problem}") from None


def _tissue(slide: SlideReader, slide_opts: SlideOptions, overview, overview_ds):
    """(boolean mask, (level-0 px per mask px along y, x), source)."""
    from nucseg.prediction.slides.tissue import detect_tissue, find_mask, read_mask

    info = slide.reader.info
    if slide_opts.tissue_mask:
        mask_path = find_mask(slide_opts.tissue_mask, slide.path)
        mask = read_mask(mask_path, slide.path, info.width, info.height)
        return mask, (info.height / mask.shape[0], info.width / mask.shape[1]), str(mask_path)
    mpp = float(np.sqrt(info.mpp[0] * info.mpp[1]))
    mask, factor = detect_tissue(overview, mpp * overview_ds)
    return mask, (overview_ds * factor, overview_ds * factor), "otsu on saturation"


def predict_block(slide: SlideReader, frame, block, detectors, opts, sources, timings: dict):
    """One block through the per-image path (channels, tiles, TTA, ensemble, merge):
    (Merged in block coordinates, number of member detections). Adds to `timings`."""
    from nucseg.prediction.merge import merge_members
    from nucseg.prediction.predict import image_members

    t0 = time.perf_counter()
    rgb = slide.read_block(frame, block)
    timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
    members = image_members(detectors, rgb, Path(slide.path).stem, opts, sources,
                            str(slide.path), timings)
    timings["detect"] = timings.get("detect", 0.0) + sum(m.extra.get("seconds", 0.0)
                                                         for m in members)
    t0 = time.perf_counter()
    merged = merge_members(members, opts.merge, **opts.merge_kwargs(len(members)))
    timings["merge"] = timings.get("merge", 0.0) + time.perf_counter() - t0
    return merged, sum(len(m) for m in members)


def predict_slide(path, detectors, outdir, opts, sources=None, models=None,
                  slide_opts: SlideOptions | None = None, dask=None) -> dict:
    """Predict one slide and write its outputs; returns the run record. With `dask` (a
    nucseg.prediction.distributed.DaskWork) the blocks run as tasks on its workers; the
    ownership of nuclei and the files are still done here, in block order, so the files
    are the same."""
    from tqdm import tqdm

    from nucseg.prediction.channels import ChannelSources
    from nucseg.prediction.predict import detector_name
    from nucseg.prediction.slides.blocks import Owner, default_margin, grid_shape, plan_blocks
    from nucseg.prediction.slides.frame import plan_frame, read_overview
    from nucseg.prediction.slides.outputs import SlideOutputs
    from nucseg.prediction.slides.resume import load_block, open_work_dir, save_block, work_dir
    from nucseg.prediction.slides.tissue import region_has_tissue

    start = time.perf_counter()
    path, slide_opts = Path(path), slide_opts or SlideOptions()
    sources = sources or ChannelSources()
    if sources.hstain_dir is not None or sources.distance_dir is not None:
        raise InputError(path, "--hstain-dir and --distance-dir hold maps of tiles; a slide's "
                               "channels are made block by block (use --distance-model)")
    if opts.keep_members:
        warnings.warn(f"{path}: --keep-members is not supported for slides; no member files "
                      "are written", stacklevel=2)
    _warn_scaling(detectors, path)
    target_mpp = model_mpp(detectors)
    timings = {"read": 0.0}
    slide = SlideReader(path, slide_opts.pixel_size())
    try:
        info = slide.reader.info
        frame = plan_frame(info, target_mpp)
        t0 = time.perf_counter()
        overview, overview_ds = read_overview(slide.reader)
        mask, mask_ds, tissue_source = _tissue(slide, slide_opts, overview, overview_ds)
        timings["tissue"] = time.perf_counter() - t0
        margin = slide_opts.margin if slide_opts.margin is not None \
            else default_margin(target_mpp, opts.overlap)
        blocks = plan_blocks(frame.width, frame.height, slide_opts.block_size, margin)
        k = frame.level0_per_px
        todo = [b for b in blocks if region_has_tissue(mask, mask_ds, [v * k for v in b.core])]
        block_opts = replace(opts, progress=False)
        owner = Owner(frame.width, frame.height)
        files = slide_files(outdir, path.stem, opts)
        folder = work_dir(outdir, path.stem)
        finished, discarded = open_work_dir(folder, _manifest(path, frame, blocks, opts,
                                                              slide_opts), opts.resume)
        if discarded:
            warnings.warn(f"{path}: the slide or its settings changed since the interrupted "
                          "run; all its blocks run again", stacklevel=2)
        counts = {"detections": 0, "duplicates": 0, "cut": 0, "nuclei": 0, "resumed": 0}
        merge_info: dict = {}
        pending = [b for b in todo if b.name not in finished]
        if dask is None:
            results = (predict_block(slide, frame, b, detectors, block_opts, sources, timings)
                       for b in pending)
        else:
            results = dask.blocks(path, slide_opts.pixel_size(), frame, pending, block_opts,
                                  timings)
        bar = tqdm(todo, desc=path.stem, unit="block", disable=not opts.progress, leave=False)
        for block in bar:
            block_file = folder / f"{block.name}.npz"
            if block.name in finished:
                nuclei, stats = load_block(block_file)
                owner.remember(block, [d["frame_box"] for d in nuclei],
                               [d["mask"] for d in nuclei])
                counts["resumed"] += 1
            else:
                before = (owner.duplicates, owner.cut)
                merged, detections = next(results)
                nuclei = _own_nuclei(owner, block, merged, k)
                stats = {"detections": detections,
                         "duplicates": owner.duplicates - before[0],
                         "cut": owner.cut - before[1], "merge": dict(merged.info)}
                save_block(block_file, nuclei, stats)
            for key in ("detections", "duplicates", "cut"):
                counts[key] += stats[key]
            counts["nuclei"] += len(nuclei)
            merge_info = stats["merge"]
            bar.set_postfix(nuclei=counts["nuclei"])
        bar.close()
        t0 = time.perf_counter()
        with SlideOutputs(files, info.mpp, overview, overview_ds, frame,
                          (info.width, info.height)) as out:
            for block in todo:                      # assembled in block order
                for d in load_block(folder / f"{block.name}.npz")[0]:
                    out.add(d["rings"], d["score"], d["agreement"], d["centroid"], d["area"],
                            d["bbox"], d["frame_box"], d["mask"])
            outputs = out.finish()                  # the label image and the thumbnail
        timings["write"] = time.perf_counter() - t0
    finally:
        slide.reader.close()
    timings["total"] = time.perf_counter() - start
    rows, cols = grid_shape(blocks)
    record = make_record(
        "predict", inputs=[path], checksums=True, options=asdict(opts),
        slide_options=slide_opts.as_dict(), slide=info.as_dict(), model_mpp=target_mpp,
        frame=frame.as_dict(),
        blocks={"block_size": slide_opts.block_size, "margin": margin, "rows": rows,
                "cols": cols, "total": len(blocks), "with_tissue": len(todo),
                "skipped_without_tissue": len(blocks) - len(todo),
                "resumed": counts["resumed"],
                "seam_duplicates_dropped": counts["duplicates"],
                "nuclei_touching_block_edge": counts["cut"]},
        tissue={"source": tissue_source, "fraction": round(float(mask.mean()), 6),
                "mask_shape": list(mask.shape)},
        overview_downsample=round(overview_ds, 6),
        merge=merge_info, models=models or [detector_name(d, i)
                                            for i, d in enumerate(detectors)],
        detections=counts["detections"], nuclei=out.count, outputs=outputs,
        timings_seconds={key: round(v, 3) for key, v in timings.items()})
    write_record(files["record"], record)
    shutil.rmtree(folder, ignore_errors=True)
    return record


def _manifest(path: Path, frame, blocks, opts, slide_opts) -> dict:
    """What a finished block's result depends on (resume.open_work_dir)."""
    stat = path.stat()
    return {"slide": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "frame": frame.as_dict(), "blocks": [b.tile for b in blocks],
            "options": {k: v for k, v in asdict(opts).items() if k not in ("resume", "progress")},
            "slide_options": slide_opts.as_dict()}


def _own_nuclei(owner, block, merged, k: float) -> list[dict]:
    """The nuclei this block owns, in level-0 coordinates (k = level-0 px per frame px), with
    their frame boxes and masks (for the label image)."""
    from skimage.measure import regionprops_table

    from nucseg.prediction.export import label_rings

    if not len(merged):
        return []
    oy, ox = block.tile[0], block.tile[1]
    table = regionprops_table(merged.labels.astype(np.int32, copy=False),
                              properties=("label", "centroid", "area"))
    index = table["label"].astype(np.int64) - 1            # row of each label
    centroids = np.zeros((len(merged), 2))
    areas = np.zeros(len(merged))
    centroids[index] = np.stack([table["centroid-0"] + oy, table["centroid-1"] + ox], 1)
    areas[index] = table["area"]
    rois = merged.rois.astype(np.int64)
    masks = [merged.labels[y1:y2, x1:x2] == i + 1 for i, (y1, x1, y2, x2) in enumerate(rois)]
    frame_rois = rois + [oy, ox, oy, ox]
    nuclei = []
    for i in owner.select(block, frame_rois, centroids, masks):
        rings = [[[round((x + ox) * k, 3), round((y + oy) * k, 3)] for x, y in ring]
                 for ring in label_rings(merged.labels, i + 1, rois[i])]
        if not rings:
            continue
        y1, x1, y2, x2 = frame_rois[i]
        cy, cx = centroids[i]
        nuclei.append({"rings": rings, "score": float(merged.scores[i]),
                       "agreement": float(merged.agreement[i]),
                       "centroid": ((cx + 0.5) * k - 0.5, (cy + 0.5) * k - 0.5),
                       "area": float(areas[i] * k * k),
                       "bbox": (x1 * k, y1 * k, x2 * k, y2 * k),
                       "frame_box": tuple(int(v) for v in frame_rois[i]), "mask": masks[i]})
    return nuclei


def is_done(outdir, path, opts) -> bool:
    """--resume: a slide's or a tile's outputs are complete."""
    from nucseg.prediction.predict import is_complete
    from nucseg.prediction.slides.reader import is_slide

    return slide_done(outdir, path, opts) if is_slide(path) else \
        is_complete(outdir, Path(path).stem, opts)
