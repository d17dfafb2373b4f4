"""Whole-slide readers: OpenSlide for scanner formats and tiled TIFFs, tifffile for the rest.

Both readers answer the same questions (level-0 size, levels and their downsamples, pixel size
in um/px, magnification, vendor) and read an RGB region at a level, so the slide path never
loads a whole level-0 image. Region coordinates are given as OpenSlide does: the top-left corner
in level-0 pixels, the size in pixels of the level read. Any reader failure becomes one
`InputError` naming the slide.

OpenSlide is tried first except for OME-TIFFs (it reads their first level only and ignores
their pixel size); files OpenSlide does not recognise (plain striped TIFFs, OME-TIFFs) go to
tifffile, which decodes only the tiles or strips a region touches.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.io import InputError

# Scanner formats OpenSlide reads (a TIFF is a slide when pyramidal or large: is_slide).
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
TIFF_EXTENSIONS = (".tif", ".tiff")
# A non-pyramidal TIFF above this many pixels (4096 x 4096) goes the slide way: the tile path
# holds the whole image and its channels in memory.
SLIDE_MIN_PIXELS = 4096 * 4096
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}     # TIFF ResolutionUnit: inch, centimetre
# Resolution tags coarser than this are the 72-300 dpi (85-350 um/px) defaults of image
# writers, not a microscope's pixel size (slides: 0.1-1 um/px, their overviews < 20).
MAX_TAG_MPP = 20.0
_OME_UNITS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


@dataclass
class SlideInfo:
    """What a reader knows about a slide (level 0 = full resolution)."""

    path: str
    reader: str                              # "openslide" or "tifffile"
    vendor: str
    dimensions: list                         # per level: (width, height)
    downsamples: list                        # per level, level-0 px per level px
    mpp: tuple | None                        # (x, y) um/px at level 0, None if unknown
    mpp_source: str = ""
    magnification: float | None = None
    properties: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.dimensions[0][0])

    @property
    def height(self) -> int:
        return int(self.dimensions[0][1])

    def as_dict(self) -> dict:
        return {"path": self.path, "reader": self.reader, "vendor": self.vendor,
                "width": self.width, "height": self.height,
                "levels": [{"width": int(w), "height": int(h), "downsample": round(float(d), 4)}
                           for (w, h), d in zip(self.dimensions, self.downsamples)],
                "mpp": list(self.mpp) if self.mpp else None, "mpp_source": self.mpp_source,
                "magnification": self.magnification}


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class OpenSlideReader:
    """A slide through openslide-python (the openslide-bin wheel provides the library)."""

    name = "openslide"

    def __init__(self, path: Path):
        import openslide

        self.path = path
        try:
            self.slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise InputError(path, f"cannot read slide (OpenSlide: {exc})") from None
        props = self.slide.properties
        mpp = (_positive(props.get(openslide.PROPERTY_NAME_MPP_X)),
               _positive(props.get(openslide.PROPERTY_NAME_MPP_Y)))
        mpp = (mpp[0], mpp[1] or mpp[0]) if mpp[0] and mpp[0] <= MAX_TAG_MPP else None
        self.info = SlideInfo(
            str(path), self.name, str(props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")),
            [tuple(d) for d in self.slide.level_dimensions],
            [float(d) for d in self.slide.level_downsamples], mpp,
            "openslide properties" if mpp else "",
            _positive(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            {k: props[k] for k in props if k.startswith("openslide.")})

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3); transparent (unscanned) pixels become white."""
        import openslide

        try:
            rgba = np.asarray(self.slide.read_region((int(x), int(y)), int(level),
                                                     (int(width), int(height))))
        except openslide.OpenSlideError as exc:
            raise InputError(self.path, f"cannot read the region at level {level}, level-0 "
                                        f"x={x}, y={y} (OpenSlide: {exc})") from None
        alpha = rgba[..., 3:4].astype(np.uint16)
        return (rgba[..., :3] * alpha // 255 + (255 - alpha)).astype(np.uint8)

    def close(self) -> None:
        self.slide.close()


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs broken page chains itself; the caller reports the problem instead."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tiff_pages(path: Path):
    """(TiffFile, the first series' level pages), refusing files whose image data reaches
    past the end of the file (a truncated download or copy)."""
    import tifffile

    with _quiet_tifffile():
        tif = tifffile.TiffFile(str(path))
        try:
            pages = [level.keyframe for level in tif.series[0].levels]
            size = path.stat().st_size
            ends = [int(o) + int(c) for page in pages
                    for o, c in zip(page.dataoffsets, page.databytecounts)]
            if ends and max(ends) > size:
                raise InputError(path, f"truncated file: its image data runs to byte "
                                       f"{max(ends)} but the file has {size} bytes")
        except BaseException:
            tif.close()
            raise
    return tif, pages


class TiffReader:
    """Plain, tiled, pyramidal and OME TIFFs through tifffile, one segment at a time."""

    name = "tifffile"

    def __init__(self, path: Path):
        self.path = path
        try:
            self.tif, self.pages = _tiff_pages(path)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser failure is the file's problem
            raise InputError(path, f"not a slide or TIFF that OpenSlide or tifffile can read "
                                   f"({type(exc).__name__}: {str(exc)[:120]})") from None
        for page in self.pages:
            if page.samplesperpixel not in (3, 4) or page.dtype != np.uint8 \
                    or page.planarconfig != 1 or len(page.shape) != 3:
                raise InputError(path, f"unsupported slide pixels (shape {page.shape}, "
                                       f"{page.dtype}); expected 8-bit RGB")
        dims = [(int(p.imagewidth), int(p.imagelength)) for p in self.pages]
        downsamples = [dims[0][0] / w for w, _ in dims]
        mpp, source, magnification = self._pixel_size()
        self.info = SlideInfo(str(path), self.name, "ome-tiff" if self.tif.is_ome else "tiff",
                              dims, downsamples, mpp, source, magnification)

    def _pixel_size(self):
        """(mpp, source, magnification) from OME-XML, else the level-0 resolution tags."""
        if self.tif.is_ome:
            text = self.tif.ome_metadata or ""
            pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", text)
            found = {}
            if pixels:
                for axis in ("X", "Y"):
                    value = re.search(rf'PhysicalSize{axis}="([^"]+)"', pixels.group(0))
                    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', pixels.group(0))
                    scale = _OME_UNITS.get(unit.group(1) if unit else "µm")
                    if value and scale and _positive(value.group(1)):
                        found[axis] = float(value.group(1)) * scale
            objective = re.search(r'NominalMagnification="([^"]+)"', text)
            magnification = _positive(objective.group(1)) if objective else None
            if "X" in found:
                return (found["X"], found.get("Y", found["X"])), "OME-XML", magnification
        page = self.pages[0]
        unit = page.tags.get("ResolutionUnit")
        per_unit = _UM_PER_UNIT.get(int(unit.value) if unit is not None else 2)
        values = []
        for name in ("XResolution", "YResolution"):
            tag = page.tags.get(name)
            if tag is None or per_unit is None:
                return None, "", None
            num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
            values.append(_positive(per_unit * den / num) if num else None)
        if values[0] is None or values[0] > MAX_TAG_MPP:    # 72-300 dpi: a writer's default
            return None, "", None
        return (values[0], values[1] or values[0]), "TIFF resolution tags", None

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3): only the segments the region touches are decoded;
        outside the image is white."""
        page = self.pages[level]
        scale = self.info.downsamples[level]
        x1, y1 = int(math.floor(x / scale)), int(math.floor(y / scale))
        out = np.full((height, width, 3), 255, np.uint8)
        x2, y2 = min(x1 + width, page.imagewidth), min(y1 + height, page.imagelength)
        ox, oy = max(0, -x1), max(0, -y1)
        x1, y1 = max(x1, 0), max(y1, 0)
        if x2 <= x1 or y2 <= y1:
            return out
        if page.is_tiled:
            seg_h, seg_w = page.tilelength, page.tilewidth
        else:
            seg_h, seg_w = page.rowsperstrip or page.imagelength, page.imagewidth
        across = -(-page.imagewidth // seg_w)
        fh = self.tif.filehandle
        decode = page.decode
        try:
            for ty in range(y1 // seg_h, -(-y2 // seg_h)):
                for tx in range(x1 // seg_w, -(-x2 // seg_w)):
                    index = ty * across + tx
                    offset, count = page.dataoffsets[index], page.databytecounts[index]
                    with fh.lock:
                        fh.seek(offset)
                        data = fh.read(count) if count else None
                    if count and len(data) < count:
                        raise ValueError(f"segment {index} is truncated")
                    segment, _, _ = decode(data, index, jpegtables=page.jpegtables,
                                           _fullsize=True)
                    if segment is None:
                        continue
                    segment = segment.reshape(segment.shape[-3:])[..., :3]
                    sy, sx = ty * seg_h, tx * seg_w
                    a, b = max(y1, sy), min(y2, sy + segment.shape[0])
                    c, d = max(x1, sx), min(x2, sx + segment.shape[1])
                    out[oy + a - y1:oy + b - y1, ox + c - x1:ox + d - x1] = \
                        segment[a - sy:b - sy, c - sx:d - sx]
        except Exception as exc:  # noqa: BLE001 - a bad segment is the file's problem
            raise InputError(self.path, f"cannot read the region at level {level}, level-0 "
                                        f"x={x}, y={y} (tifffile: {str(exc)[:120]})") from None
        return out

    def close(self) -> None:
        self.tif.close()


def _is_ome(path: Path) -> bool:
    return path.name.lower().endswith((".ome.tif", ".ome.tiff"))


def open_slide(path, mpp: float | None = None, require_mpp: bool = True):
    """A reader for `path` (OpenSlide if it knows the format, else tifffile); `mpp` overrides
    the slide's pixel size. Without any pixel size it is an error (unless not `require_mpp`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    reader = None
    if not _is_ome(path):
        import openslide

        try:
            known = openslide.OpenSlide.detect_format(str(path))
        except openslide.OpenSlideError:
            known = None
        if known:
            if known in ("generic-tiff", "aperio", "leica", "ventana", "philips"):
                try:                                # refuse a truncated TIFF-based slide
                    _tiff_pages(path)[0].close()
                except InputError:
                    raise
                except Exception:  # noqa: BLE001 - tifffile's view only; OpenSlide decides
                    pass
            reader = OpenSlideReader(path)
    if reader is None:
        if path.suffix.lower() not in TIFF_EXTENSIONS:
            raise InputError(path, "not a slide OpenSlide can read (unsupported format, or a "
                                   "truncated or corrupted file)")
        reader = TiffReader(path)
    if mpp is not None:
        value = _positive(mpp)
        if value is None:
            raise ValueError(f"--mpp must be a positive number, got {mpp}")
        reader.info.mpp, reader.info.mpp_source = (value, value), "--mpp"
    if require_mpp and reader.info.mpp is None:
        reader.close()
        raise InputError(path, "the slide has no pixel size (um/px): give it with --mpp "
                               "(e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)")
    return reader


def is_slide(path) -> bool:
    """Slide (read in blocks) or tile (read whole): scanner formats by extension; a TIFF when
    it holds several resolution levels or more than SLIDE_MIN_PIXELS pixels (a small tiled
    TIFF stays a tile: it is read whole as before, and needs no pixel size)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_EXTENSIONS:
        return True
    if suffix not in TIFF_EXTENSIONS or not path.is_file():
        return False
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            page = series.levels[0].keyframe
            if len(series.levels) > 1 or \
                    int(page.imagewidth) * int(page.imagelength) > SLIDE_MIN_PIXELS:
                return True
            # a tiled TIFF cut short (its levels lost with the end) is reported as a slide
            ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts)]
            return bool(page.is_tiled and ends and max(ends) > path.stat().st_size)
    except Exception:  # noqa: BLE001 - not readable as a TIFF: the tile path reports it
        return False
