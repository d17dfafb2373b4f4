"""MoNuSeg / Aperio ImageScope XML annotations -> instance label maps.

The published MoNuSeg annotations are Aperio XML files: one <Region> per nucleus, each a polygon
of <Vertex X=".." Y=".."/> in 1-based pixel coordinates. Regions become ids 1..N in file order
(skipped regions take no id); where polygons overlap, the region drawn first keeps the pixel.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.io import InputError

DEFAULT_SHAPE = (1000, 1000)  # MoNuSeg tiles


@dataclass
class ImportResult:
    labels: np.ndarray
    n_regions: int                      # <Region> elements in the file
    n_nuclei: int                       # ids written (regions that left at least one pixel)
    skipped_few_vertices: int           # regions with fewer than 3 vertices
    empty_regions: list[int] = field(default_factory=list)  # region indices that drew nothing


def read_aperio_polygons(path) -> list[np.ndarray]:
    """Every Region's vertices as an (n, 2) float64 array of (x, y), 1-based, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(path, f"not a valid XML file ({exc})") from None
    regions = root.findall(".//Region")
    if not regions and root.tag != "Annotations":
        raise InputError(path, "no Aperio <Annotations>/<Region> elements found")
    polygons = []
    for number, region in enumerate(regions, start=1):
        try:
            vertices = [(float(v.attrib["X"]), float(v.attrib["Y"]))
                        for v in region.iter("Vertex")]
        except (KeyError, ValueError):
            raise InputError(path, f"region {number} has a vertex without numeric X/Y") \
                from None
        polygons.append(np.array(vertices, dtype=np.float64).reshape(-1, 2))
    return polygons


def polygons_to_labels(polygons: list[np.ndarray], shape: tuple[int, int]) -> ImportResult:
    """Fill 1-based (x, y) polygons into a label map; the first polygon drawn keeps overlaps."""
    from skimage.draw import polygon as fill_polygon

    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    skipped, empty, next_id = 0, [], 1
    for index, vertices in enumerate(polygons):
        if len(vertices) < 3:
            skipped += 1
            continue
        rows, cols = fill_polygon(vertices[:, 1] - 1.0, vertices[:, 0] - 1.0, shape=(height, width))
        free = labels[rows, cols] == 0
        if not free.any():
            empty.append(index + 1)
            continue
        labels[rows[free], cols[free]] = next_id
        next_id += 1
    return ImportResult(labels, len(polygons), next_id - 1, skipped, empty)


def import_monuseg_xml(path, shape: tuple[int, int] = DEFAULT_SHAPE) -> ImportResult:
    """Read one Aperio XML file and rasterise it to an instance label map of `shape` (H, W)."""
    return polygons_to_labels(read_aperio_polygons(path), shape)


def image_shape_for(xml_path, images_dir) -> tuple[int, int]:
    """(H, W) of the tile in `images_dir` with the XML file's stem, read from its header."""
    from nucseg.io import IMAGE_EXTENSIONS

    xml_path = Path(xml_path)
    for ext in IMAGE_EXTENSIONS:
        candidate = Path(images_dir) / f"{xml_path.stem}{ext}"
        if candidate.is_file():
            return _image_size(candidate)
    raise InputError(xml_path, f"no image named {xml_path.stem}.* in {images_dir}")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
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
    """'1000x800' (height x width) or '1000' (square) -> (1000, 800)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 1000x1000") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"size {text!r}: expected two positive numbers, e.g. 1000x1000")
    return values[0], values[1]
