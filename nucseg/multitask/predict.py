"""Prediction: tiles -> three probability maps -> watershed instances -> nucseg's outputs.

Watershed (docs/multitask-unet.md, "From maps to nuclei"), after the DSB2018 solution's
marker recipe (markers = interior and not boundary, inside the foreground):
1. foreground = P_foreground > t_foreground;
2. markers = connected parts of (P_interior > t_interior) & ~(P_boundary > t_boundary) &
   foreground, parts under `min_marker_area` px dropped as noise;
3. watershed of the elevation P_boundary - P_interior (boundaries are ridges, interiors
   basins) from the markers, limited to the foreground;
4. a foreground part no marker reached becomes a nucleus of its own (a small nucleus whose
   interior went unseen), then nuclei under `min_area` px are removed.
Scores: the mean foreground probability over the nucleus; ids 1..K by descending score.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nucseg.multitask.network import DIVISOR, TASKS

MAP_SUFFIXES = {task: f"_{task}.tif" for task in TASKS}


@dataclass
class WatershedOptions:
    t_foreground: float = 0.5
    t_boundary: float = 0.5
    t_interior: float = 0.5
    min_marker_area: int = 2
    min_area: int = 20

    def __post_init__(self):
        for name in ("t_foreground", "t_boundary", "t_interior"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name.replace('t_', '')} threshold must be in (0, 1)")
        if self.min_marker_area < 1 or self.min_area < 1:
            raise ValueError("minimum areas must be >= 1 px")


def predict_maps(loaded, rgb: np.ndarray, tile_size: int = 1024, margin: int = 64) -> np.ndarray:
    """H x W x 3 float32 probabilities (foreground, boundary, interior) of an RGB tile.

    Padded at the bottom/right by reflection to a multiple of 32; images larger than
    `tile_size` are cut into tiles overlapping by 2 * margin that keep their centres
    (nucseg.unet.predict's tiling, shared with the distance U-Net).
    """
    from nucseg.multitask.train import model_input
    from nucseg.unet.predict import _tile_spans, check_tiling, pad_to, padded_size

    check_tiling(tile_size, margin)
    rgb = np.asarray(rgb)
    height, width = rgb.shape[:2]
    x = pad_to(model_input(rgb, loaded.config.network.mean_pixel), padded_size(height, DIVISOR),
               padded_size(width, DIVISOR), "reflect")
    out = np.zeros(x.shape[:2] + (len(TASKS),), np.float32)
    for ys, yk in _tile_spans(x.shape[0], tile_size, margin):
        for xs, xk in _tile_spans(x.shape[1], tile_size, margin):
            pred = loaded.forward(np.ascontiguousarray(x[None, ys, xs]))
            pred = np.concatenate([np.asarray(p)[0] for p in pred], axis=-1)
            out[yk, xk] = pred[yk.start - ys.start:yk.stop - ys.start,
                               xk.start - xs.start:xk.stop - xs.start]
    return out[:height, :width]


def instances(maps: np.ndarray, opts: WatershedOptions | None = None) -> np.ndarray:
    """int32 instance label map (ids 1..K, unordered) from the three probability maps."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    opts = opts or WatershedOptions()
    fg_p, bd_p, in_p = (maps[..., k] for k in range(3))
    foreground = fg_p > opts.t_foreground
    seeds = (in_p > opts.t_interior) & ~(bd_p > opts.t_boundary) & foreground
    markers, n = ndimage.label(seeds)
    if n:
        sizes = np.bincount(markers.ravel(), minlength=n + 1)
        keep = sizes >= opts.min_marker_area
        keep[0] = False
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, int(keep.sum()) + 1)
        markers = remap[markers]
    labels = (watershed(bd_p - in_p, markers, mask=foreground) if markers.any()
              else np.zeros(markers.shape, np.int32)).astype(np.int32)
    missed, n_missed = ndimage.label(foreground & (labels == 0))
    if n_missed:
        labels = np.where(missed > 0, missed + labels.max(), labels)
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < opts.min_area)
    labels[np.isin(labels, small[small > 0])] = 0
    return labels


def scored_nuclei(labels: np.ndarray, fg_p: np.ndarray, min_score: float = 0.0):
    """A nucseg.prediction.merge.Merged of the instances: score = mean foreground probability inside,
    agreement 1, ids renumbered 1..K by descending score (as `nucseg predict` orders them).
    Instances scoring under `min_score` are dropped (--min-confidence)."""
    from scipy import ndimage

    from nucseg.io import label_dtype
    from nucseg.prediction.merge import Merged

    ids = np.unique(labels[labels > 0])
    scores = (np.asarray(ndimage.mean(fg_p, labels, ids), np.float32) if len(ids)
              else np.zeros(0, np.float32))
    keep = scores >= min_score
    ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))
    remap = np.zeros(int(labels.max()) + 1, np.int64)
    remap[ids[order]] = np.arange(1, len(ids) + 1)
    out = remap[labels]
    slices = ndimage.find_objects(out, max_label=len(ids))
    rois = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices],
                    np.int32).reshape(-1, 4)
    return Merged(labels=out.astype(label_dtype(len(ids))), scores=scores[order],
                  agreement=np.ones(len(ids), np.float32), rois=rois,
                  class_ids=np.ones(len(ids), np.int32), n_members=1,
                  info={"method": "multitask-watershed"})


def as_member(merged, model: str, image: str = ""):
    """The nuclei as an ensemble member (nucseg.prediction.members.Member): tight boxes, binary masks
    (1 inside), score = mean foreground probability; what `nucseg merge` combines."""
    from nucseg.prediction.members import Member

    masks = [(merged.labels[y1:y2, x1:x2] == k).astype(np.float32)
             for k, (y1, x1, y2, x2) in enumerate(merged.rois, start=1)]
    return Member(merged.rois, merged.scores, merged.class_ids, masks, merged.labels.shape,
                  model=model, transform="identity", image=str(image))


def output_files(outdir, stem: str, maps: bool, keep_member: bool, member_index: int,
                 geojson: bool = True, csv: bool = True) -> dict[str, Path]:
    outdir = Path(outdir)
    files = {"labels": outdir / f"{stem}_labels.tif"}
    if geojson:
        files["geojson"] = outdir / f"{stem}.geojson"
    if csv:
        files["csv"] = outdir / f"{stem}_nuclei.csv"
    if maps:
        files.update({task: outdir / f"{stem}{suffix}" for task, suffix in MAP_SUFFIXES.items()})
    if keep_member:
        files["member"] = outdir / f"{stem}_member{member_index:02d}.npz"
    files["record"] = outdir / f"{stem}_record.yaml"
    return files


@dataclass
class PredictSettings:
    watershed: WatershedOptions
    tile_size: int = 1024
    margin: int = 64
    maps: bool = True
    keep_member: bool = False
    member_index: int = 99             # predict numbers its members from 00
    geojson: bool = True
    csv: bool = True
    min_confidence: float = 0.0        # drop nuclei with a lower mean foreground probability

    def to_dict(self) -> dict:
        return {**asdict(self), "watershed": asdict(self.watershed)}


def model_entry(loaded) -> dict:
    """What a record says of the run that predicted: run, weights and checksum, network."""
    from nucseg.io import sha256

    return {"run_dir": str(loaded.run_dir), "weights": str(loaded.weights),
            "weights_sha256": sha256(loaded.weights), "name": loaded.name,
            "network": loaded.config.network.to_dict()}


def predict_image(image_path, loaded, outdir, settings: PredictSettings) -> dict:
    """Predict one tile and write its files (the record last); returns the record."""
    from nucseg.prediction.export import write_geojson, write_nuclei_csv
    from nucseg.io import make_record, read_rgb, write_float_map, write_labels, \
        write_record
    from nucseg.prediction.members import save_member
    from nucseg.stain import hematoxylin

    start = time.perf_counter()
    image_path = Path(image_path)
    rgb = read_rgb(image_path)
    maps = predict_maps(loaded, rgb, settings.tile_size, settings.margin)
    t_net = time.perf_counter() - start
    merged = scored_nuclei(instances(maps, settings.watershed), maps[..., 0],
                           settings.min_confidence)
    files = output_files(outdir, image_path.stem, settings.maps, settings.keep_member,
                         settings.member_index, settings.geojson, settings.csv)
    write_labels(files["labels"], merged.labels)
    if "geojson" in files:
        write_geojson(files["geojson"], merged)
    if "csv" in files:
        write_nuclei_csv(files["csv"], merged, hematoxylin(rgb))
    for k, task in enumerate(TASKS):
        if task in files:
            write_float_map(files[task], maps[..., k])
    if "member" in files:
        save_member(files["member"], as_member(merged, loaded.name, str(image_path)))
    record = make_record(
        "multitask predict", inputs=[image_path], checksums=True, options=settings.to_dict(),
        model=model_entry(loaded),
        image_shape=list(rgb.shape[:2]), nuclei=len(merged),
        outputs=[p.name for key, p in files.items() if key != "record"],
        timings_seconds={"network": round(t_net, 3),
                         "total": round(time.perf_counter() - start, 3)})
    write_record(files["record"], record)
    return record


def is_complete(outdir, stem: str, settings: PredictSettings) -> bool:
    """The record (written last) and every output it lists exist."""
    import yaml

    files = output_files(outdir, stem, settings.maps, settings.keep_member,
                         settings.member_index, settings.geojson, settings.csv)
    if not all(p.is_file() for p in files.values()):
        return False
    try:
        record = yaml.safe_load(files["record"].read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return all((Path(outdir) / name).is_file() for name in record.get("outputs", []))


def slide_options_for(settings: PredictSettings, resume: bool = False):
    """The nucseg.prediction.PredictOptions of a slide: one member (the U-Net), its nuclei
    kept down to the watershed's --min-area, the tile outputs' GeoJSON / CSV choices."""
    from nucseg.prediction.predict import PredictOptions

    return PredictOptions(min_area=settings.watershed.min_area, geojson=settings.geojson,
                          csv=settings.csv, resume=resume)


def predict_slide(slide_path, loaded, outdir, settings: PredictSettings, slide_opts=None,
                  resume: bool = False) -> dict:
    """One slide through nucseg's block path (nucseg.prediction.slides, docs/slides.md) with
    the U-Net + watershed as its detector: the slide outputs of `nucseg predict` (GeoJSON.gz,
    CSV, pyramidal labels, thumbnail, record). No probability maps or member: at slide size
    they would outweigh the labels, and `merge` takes tiles."""
    from nucseg.multitask.detector import MultitaskDetector
    from nucseg.prediction.slides import predict_slide as predict_in_blocks

    detector = MultitaskDetector(loaded, settings.watershed, settings.min_confidence,
                                 tile_size=settings.tile_size, margin=settings.margin)
    model = {**model_entry(loaded), "watershed": asdict(settings.watershed)}
    return predict_in_blocks(slide_path, [detector], outdir, slide_options_for(settings, resume),
                             models=[model], slide_opts=slide_opts)
