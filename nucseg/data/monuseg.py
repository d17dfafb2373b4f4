"""MoNuSeg / Aperio ImageScope XML annotations -> instance label maps.

The published MoNuSeg annotations are Aperio XML files: one <Region> per nucleus, each a polygon
of <Vertex X=".." Y=".."/> in 1-based pixel coordinates. Regions become ids 1..N in file order
(skipped regions take no id); where polygons overlap, the region drawn first keeps the pixel.

Bad input is refused with an `InputError` naming the file (see docs/formats.md): a file that is
not Aperio XML (root element other than <Annotations>), any DOCTYPE (so no entity can expand),
a vertex coordinate that is not a finite number, or a region reaching more than
`BORDER_TOLERANCE_PX` beyond the image.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.io import InputError

DEFAULT_SHAPE = (1000, 1000)  # MoNuSeg tiles

# How far (px) a vertex may lie beyond the first or last pixel centre of the image. Real MoNuSeg
# annotations of nuclei cut by the tile border cross it a little: in the three published files
# checked (../shared), vertices reach 3.9 px before pixel 1 (X = -2.93) and 2.1 px past pixel
# 1000. 8 px is twice that, and a third of a MoNuSeg nucleus diameter (about 24 px), so a vertex
# farther out is not a traced border nucleus but a wrong coordinate (or a wrong image size).
BORDER_TOLERANCE_PX = 8.0  # (quoted in `nucseg import monuseg --help` and docs/formats.md)

# Largest label map the importer allocates (H * W): 100 megapixels, e.g. 10000 x 10000, held as
# an int32 map of 400 MB (a 1000 x 1000 MoNuSeg tile takes 4 MB). A bigger --size is almost
# certainly a typo, and would exhaust memory instead of failing cleanly. (Quoted in --size help.)
MAX_PIXELS = 100_000_000


@dataclass
class ImportResult:
    labels: np.ndarray
    n_regions: int                      # <Region> elements in the file
    n_nuclei: int                       # ids written (regions that left at least one pixel)
    skipped_few_vertices: int           # regions with fewer than 3 vertices
    empty_regions: list[int] = field(default_factory=list)  # region numbers that drew nothing
    # the empty regions by cause (region numbers, 1-based file order):
    hidden_regions: list[int] = field(default_factory=list)   # every pixel taken by earlier ones
    outside_regions: list[int] = field(default_factory=list)  # wholly outside, within tolerance
    no_pixel_regions: list[int] = field(default_factory=list)  # inside, but no pixel centre
    # (degenerate or thinner than a pixel)


class _DoctypeRefused(Exception):
    pass


class _NoDoctypeBuilder(ET.TreeBuilder):
    """Stop parsing at a DOCTYPE: Aperio XML has none, so no entity declaration is accepted
    (entity-expansion "bombs" and external entities are refused whatever expat version runs)."""

    def doctype(self, name, pubid, system):  # called by XMLParser at <!DOCTYPE ...>
        raise _DoctypeRefused(name)


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path, parser=ET.XMLParser(target=_NoDoctypeBuilder())).getroot()
    except _DoctypeRefused:
        raise InputError(path, "has a DOCTYPE (DTD); Aperio XML has none and entity "
                               "declarations are refused") from None
    except ET.ParseError as exc:
        raise InputError(path, f"not a valid XML file ({exc})") from None
    except (OSError, UnicodeError) as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__}: {exc})") from None


def _region_name(region: ET.Element, number: int) -> str:
    """'region 7' (its Id attribute, as ImageScope shows it), with the file position if the Id
    is missing or differs from it."""
    region_id = region.attrib.get("Id")
    if region_id is None:
        return f"region {number} (no Id; <Region> {number} in file order)"
    if region_id.strip() == str(number):
        return f"region {number}"
    return f"region {region_id} (<Region> {number} in file order)"


def read_aperio_regions(path) -> tuple[list[str], list[np.ndarray]]:
    """(names, vertices) of every Region in file order; vertices (n, 2) float64 (x, y), 1-based,
    all finite (a NaN or infinite coordinate is an InputError naming the region)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    root = _parse_xml(path)
    if root.tag != "Annotations":
        raise InputError(path, f"root element is <{root.tag}>, not <Annotations>: not an Aperio "
                               "ImageScope / MoNuSeg annotation file")
    names, polygons = [], []
    for number, region in enumerate(root.iter("Region"), start=1):
        name = _region_name(region, number)
        vertices = [v.attrib for v in region.iter("Vertex")]
        try:
            array = np.array([(float(v["X"]), float(v["Y"])) for v in vertices],
                             dtype=np.float64).reshape(-1, 2)
        except (KeyError, ValueError):
            raise InputError(path, f"{name} has a vertex without numeric X/Y") from None
        if not np.isfinite(array).all():
            bad = vertices[int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])]
            raise InputError(path, f"{name} has a vertex that is not a finite number "
                                   f"(X={bad['X']!r}, Y={bad['Y']!r})")
        names.append(name)
        polygons.append(array)
    return names, polygons


def read_aperio_polygons(path) -> list[np.ndarray]:
    """Every Region's vertices as an (n, 2) float64 array of (x, y), 1-based, in file order."""
    return read_aperio_regions(path)[1]


def check_shape(shape) -> tuple[int, int]:
    """(H, W) as ints if both are positive and H * W <= MAX_PIXELS, else ValueError."""
    height, width = (int(v) for v in shape)
    if min(height, width) < 1:
        raise ValueError(f"label map size {height}x{width}: both sides must be at least 1 px")
    if height * width > MAX_PIXELS:
        raise ValueError(f"label map size {height}x{width} is {height * width / 1e6:,.0f} "
                         f"megapixels, more than the {MAX_PIXELS // 1_000_000} allowed "
                         "(MoNuSeg tiles are 1000x1000)")
    return height, width


def check_regions(path, names: list[str], polygons: list[np.ndarray],
                  shape: tuple[int, int]) -> None:
    """Every vertex finite and at most BORDER_TOLERANCE_PX beyond the image's first or last
    pixel centre (1-based 1..W, 1..H); otherwise an InputError naming the region."""
    height, width = shape
    tol = BORDER_TOLERANCE_PX
    for name, vertices in zip(names, polygons):
        if not len(vertices):
            continue
        if not np.isfinite(vertices).all():
            raise InputError(path, f"{name} has a vertex that is not finite")
        x, y = vertices[:, 0], vertices[:, 1]
        outside = (x < 1 - tol) | (x > width + tol) | (y < 1 - tol) | (y > height + tol)
        if outside.any():
            bx, by = vertices[int(np.flatnonzero(outside)[0])]
            raise InputError(path, f"{name} has vertex X={bx:g}, Y={by:g} more than {tol:g} px "
                                   f"outside the {height}x{width} image (1-based X 1..{width}, "
                                   f"Y 1..{height}); wrong coordinates or image size?")


def polygons_to_labels(polygons: list[np.ndarray], shape: tuple[int, int], path=None,
                       names: list[str] | None = None) -> ImportResult:
    """Fill 1-based (x, y) polygons into a label map; the first polygon drawn keeps overlaps.

    The polygons are checked first (check_regions): `path` and `names` name the file and the
    regions in the error (default: '<polygons>', 'region 1'...).
    """
    from skimage.draw import polygon as fill_polygon

    try:
        shape = check_shape(shape)
    except ValueError as exc:
        if path is None:
            raise
        raise InputError(path, str(exc)) from None
    if names is None:
        names = [f"region {i}" for i in range(1, len(polygons) + 1)]
    check_regions(path if path is not None else "<polygons>", names, polygons, shape)
    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    result = ImportResult(labels, len(polygons), 0, 0)
    next_id = 1
    for number, vertices in enumerate(polygons, start=1):
        if len(vertices) < 3:
            result.skipped_few_vertices += 1
            continue
        rows, cols = fill_polygon(vertices[:, 1] - 1.0, vertices[:, 0] - 1.0, shape=(height, width))
        if not len(rows):
            result.empty_regions.append(number)
            x, y = vertices[:, 0], vertices[:, 1]
            if x.max() < 1 or x.min() > width or y.max() < 1 or y.min() > height:
                result.outside_regions.append(number)
            else:
                result.no_pixel_regions.append(number)
            continue
        free = labels[rows, cols] == 0
        if not free.any():
            result.empty_regions.append(number)
            result.hidden_regions.append(number)
            continue
        labels[rows[free], cols[free]] = next_id
        next_id += 1
    result.n_nuclei = next_id - 1
    return result


def import_monuseg_xml(path, shape: tuple[int, int] = DEFAULT_SHAPE) -> ImportResult:
    """Read one Aperio XML file and rasterise it to an instance label map of `shape` (H, W)."""
    names, polygons = read_aperio_regions(path)
    return polygons_to_labels(polygons, shape, path=path, names=names)


def image_shape_for(xml_path, images_dir) -> tuple[int, int]:
    """(H, W) of the tile in `images_dir` with the XML file's stem, read from its header."""
    from nucseg.io import IMAGE_EXTENSIONS

    xml_path = Path(xml_path)
    for ext in IMAGE_EXTENSIONS:
        candidate = Path(images_dir) / f"{xml_path.stem}{ext}"
        if candidate.is_file():
            try:
                return check_shape(_image_size(candidate))
            except ValueError as exc:
                raise InputError(candidate, str(exc)) from None
    raise InputError(xml_path, f"no image named {xml_path.stem}.* in {images_dir}")


def _image_size(path: Path) -> tuple[int, int]:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # only the header is read: no decompression bomb here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's problem
        raise InputError(path, f"cannot read image size ({type(exc).__name__})") from None
    return height, width


def import_monuseg_file(xml_path, outdir, images_dir=None,
                        shape: tuple[int, int] = DEFAULT_SHAPE) -> tuple[Path, ImportResult]:
    """Rasterise one XML file to `<outdir>/<stem>_labels.tif` (uint16/uint32)."""
    from nucseg.io import output_path, write_labels

    if images_dir is not None:
        shape = image_shape_for(xml_path, images_dir)
    result = import_monuseg_xml(xml_path, shape)
    return write_labels(output_path(outdir, xml_path, "_labels.tif"), result.labels), result


def parse_size(text: str) -> tuple[int, int]:
    """'1000x800' (height x width) or '1000' (square) -> (1000, 800); at most MAX_PIXELS."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 1000x1000") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"size {text!r}: expected two positive numbers, e.g. 1000x1000")
    try:
        return check_shape(values)
    except ValueError as exc:
        raise ValueError(f"size {text!r}: {exc}; give --images to size each map from "
                         "its tile") from None


def check_images_dir(images_dir) -> None:
    """--images must be an existing directory."""
    path = Path(images_dir)
    if not path.is_dir():
        raise InputError(path, "not a directory" if path.exists() else "directory not found")
