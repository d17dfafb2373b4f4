"""Bad input to `nucseg import monuseg` (Aperio XML, sizes, tiles, folders) is refused cleanly.

The project's rule: one line `error: <file>: <problem>` on stderr, a non-zero exit (1 when a
batch went on past the bad file, 2 for an error before any work), no traceback, and no output
file under a final or temporary (`.<name>.*.part*`) name for the bad input; in a batch the good
inputs are still written. Every case here was a fault-injection finding or belongs to the same
class (non-finite or out-of-range values, wrong shapes and types, truncated or foreign files).
"""
import zlib

import numpy as np
import pytest
import tifffile
import yaml

from nucseg.data.monuseg import (
    BORDER_TOLERANCE_PX,
    MAX_PIXELS,
    check_shape,
    read_aperio_regions,
)

from import_checks import assert_refused, error_lines, files_under, invoke


# ---------------------------------------------------------------------------------------------
# MoNuSeg / Aperio XML
# ---------------------------------------------------------------------------------------------
SQUARE = [(2, 2), (10, 2), (10, 10), (2, 10)]


def aperio_xml(regions, ids=None) -> str:
    """A minimal Aperio file; `regions` is a list of [(x, y), ...] vertex lists."""
    parts = ['<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>']
    for number, vertices in enumerate(regions, start=1):
        region_id = ids[number - 1] if ids else number
        parts.append(f'<Region Id="{region_id}"><Vertices>')
        parts += [f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices]
        parts.append("</Vertices></Region>")
    parts.append("</Regions></Annotation></Annotations>")
    return "\n".join(parts)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Annotations><Annotation><Regions><Region Id="1"><Vertices><Vertex X="&lol9;" Y="1"/>
</Vertices></Region></Regions></Annotation></Annotations>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [ <!ENTITY x SYSTEM "file:///etc/hostname"> ]>
<Annotations><Annotation><Regions><Region Id="1"><Vertices><Vertex X="&x;" Y="1"/>
</Vertices></Region></Regions></Annotation></Annotations>"""

OUT = f"more than {BORDER_TOLERANCE_PX:g} px outside the 40x40 image"
BAD_XML = {
    # the fault-injection findings: non-finite and far-away vertices
    "nan": (aperio_xml([SQUARE, [(2, 2), ("nan", 2), (10, 10)]]),
            "region 2 has a vertex that is not a finite number (X='nan'"),
    "inf": (aperio_xml([[(2, 2), (10, "inf"), (10, 10)]]),
            "region 1 has a vertex that is not a finite number"),
    "minus_infinity": (aperio_xml([[(2, 2), ("-Infinity", 2), (10, 10)]]),
                       "region 1 has a vertex that is not a finite number"),
    "overflow": (aperio_xml([[(2, 2), ("1e999", 2), (10, 10)]]),
                 "region 1 has a vertex that is not a finite number"),
    "nan_in_short_region": (aperio_xml([SQUARE, [(2, 2), ("nan", 3)]]),
                            "region 2 has a vertex that is not a finite number"),
    "huge_nucleus": (aperio_xml([SQUARE, [(-1e6, -1e6), (1e6, -1e6), (1e6, 1e6)]]),
                     f"region 2 has vertex X=-1e+06, Y=-1e+06 {OUT}"),
    "beyond_tolerance": (aperio_xml([SQUARE, [(5, 5), (9, 5), (9, 40 + BORDER_TOLERANCE_PX
                                                                + 0.5)]]),
                         f"region 2 has vertex X=9, Y=48.5 {OUT}"),
    "wholly_outside_far": (aperio_xml([[(-30, 3), (-20, 3), (-20, 8)]]),
                           f"region 1 has vertex X=-30, Y=3 {OUT}"),
    "region_id_named": (aperio_xml([SQUARE, [(2, 2), (100, 2), (10, 10)]], ids=[1, 57]),
                        f"region 57 (<Region> 2 in file order) has vertex X=100, Y=2 {OUT}"),
    # entity expansion and external entities stay refused, before any expansion
    "billion_laughs": (BILLION_LAUGHS, "has a DOCTYPE (DTD)"),
    "external_entity": (EXTERNAL_ENTITY, "has a DOCTYPE (DTD)"),
    # not MoNuSeg-shaped, not XML at all
    "svg": ('<svg><Region><Vertex X="1" Y="1"/></Region></svg>',
            "root element is <svg>, not <Annotations>"),
    "empty": ("", "not a valid XML file"),
    "truncated": (aperio_xml([SQUARE])[:60], "not a valid XML file"),
    "binary": ("\x00\x01\x02PNG\x00", "not a valid XML file"),
    "no_y": ('<Annotations><Region Id="1"><Vertex X="1"/></Region></Annotations>',
             "region 1 has a vertex without numeric X/Y"),
}


@pytest.mark.parametrize("name", sorted(BAD_XML))
def test_bad_xml_is_one_line_and_the_batch_goes_on(tmp_path, name):
    text, problem = BAD_XML[name]
    good = tmp_path / "good.xml"
    good.write_text(aperio_xml([SQUARE]))
    bad = tmp_path / f"{name}.xml"
    bad.write_text(text)
    out = tmp_path / "out"
    result = invoke("import", "monuseg", good, bad, "--size", "40x40", "-o", out)
    assert_refused(result, bad, problem, exit_code=1)
    assert "1 of 2 inputs failed" in result.stderr
    assert files_under(out) == {"good_labels.tif", "import_monuseg_record.yaml"}
    assert tifffile.imread(out / "good_labels.tif").max() == 1
    record = yaml.safe_load((out / "import_monuseg_record.yaml").read_text())
    assert len(record["failures"]) == 1 and record["failures"][0].startswith(f"{bad}: ")


def test_several_bad_xml_files_each_reported_once(tmp_path):
    names = ["nan", "huge_nucleus", "billion_laughs", "svg"]
    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.xml")
        paths[-1].write_text(BAD_XML[name][0])
    good = tmp_path / "z_good.xml"
    good.write_text(aperio_xml([SQUARE]))
    out = tmp_path / "out"
    result = invoke("import", "monuseg", *paths, good, "--size", "40x40", "-o", out)
    for name, path in zip(names, paths):
        assert_refused(result, path, BAD_XML[name][1], exit_code=1)
    assert len(error_lines(result)) == len(names)
    assert files_under(out) == {"z_good_labels.tif", "import_monuseg_record.yaml"}


def test_vertices_within_the_border_tolerance_import(tmp_path):
    """Regions may cross the border by up to the tolerance (real annotations do); a region
    wholly outside the image within it is reported as outside, not as hidden."""
    tol = BORDER_TOLERANCE_PX
    crossing = [(1 - tol, 3), (10, 3), (10, 40 + tol), (1 - tol, 40 + tol)]
    outside = [(-5, 3), (-2, 3), (-2, 8)]           # no pixel centre: x < 1
    hidden = [(3, 5), (6, 5), (6, 8)]               # inside the first region
    xml = tmp_path / "edge.xml"
    xml.write_text(aperio_xml([crossing, outside, hidden]))
    out = tmp_path / "out"
    result = invoke("import", "monuseg", xml, "--size", "40x40", "-o", out)
    assert result.exit_code == 0, result.output
    assert error_lines(result) == []
    assert ("1 hidden by earlier regions, 1 outside the image (within the 8 px tolerance)"
            in result.output)
    labels = tifffile.imread(out / "edge_labels.tif")
    assert set(np.unique(labels)) == {0, 1} and labels[2:, :10].all() and not labels[:2].any()
    entry = yaml.safe_load((out / "import_monuseg_record.yaml").read_text())["files"][0]
    assert (entry["nuclei"], entry["hidden_by_earlier_regions"], entry["outside_image"]) == \
        (1, 1, 1)


def test_published_annotations_cross_the_border_by_well_under_the_tolerance(data_dir):
    """The justification of BORDER_TOLERANCE_PX: the three published MoNuSeg files reach at
    most 3.9 px beyond the first or last pixel centre of their 1000 x 1000 tiles."""
    worst = 0.0
    for xml in sorted((data_dir / "annotations_xml").glob("*.xml")):
        _, polygons = read_aperio_regions(xml)
        vertices = np.concatenate(polygons)
        worst = max(worst, float(np.max(1 - vertices)), float(np.max(vertices - 1000)))
    assert 3.0 < worst < BORDER_TOLERANCE_PX / 2


def test_annotation_larger_than_its_tile_is_refused(tmp_path):
    """With --images, the vertices are checked against the tile's own size."""
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "small.tif", np.zeros((30, 40, 3), np.uint8))
    tifffile.imwrite(images / "ok.tif", np.zeros((30, 40, 3), np.uint8))
    small = tmp_path / "small.xml"
    small.write_text(aperio_xml([[(500, 500), (600, 500), (600, 600)]]))  # a 1000 px tile's
    ok = tmp_path / "ok.xml"
    ok.write_text(aperio_xml([SQUARE]))
    out = tmp_path / "out"
    result = invoke("import", "monuseg", small, ok, "--images", images, "-o", out)
    assert_refused(result, small, "px outside the 30x40 image", exit_code=1)
    assert files_under(out) == {"ok_labels.tif", "import_monuseg_record.yaml"}


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR and an empty IDAT chunk: the size without the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


@pytest.mark.parametrize("content, problem", [
    (_png_header(10_001, 10_000), f"more than the {MAX_PIXELS // 1_000_000} allowed"),
    (b"not an image at all", "cannot read image size"),
], ids=["header_claims_110_megapixels", "not_an_image"])
def test_bad_tile_for_the_size_is_one_line(tmp_path, content, problem):
    images = tmp_path / "images"
    images.mkdir()
    (images / "tile.png").write_bytes(content)
    xml = tmp_path / "tile.xml"
    xml.write_text(aperio_xml([SQUARE]))
    out = tmp_path / "out"
    result = invoke("import", "monuseg", xml, "--images", images, "-o", out)
    assert_refused(result, images / "tile.png", problem, exit_code=1)
    assert files_under(out) == {"import_monuseg_record.yaml"}


@pytest.mark.parametrize("size", ["200000", "200000x50000", "10001x10000", "0x5", "-3"])
def test_unreasonable_size_stops_before_any_work(tmp_path, size):
    xml = tmp_path / "a.xml"
    xml.write_text(aperio_xml([SQUARE]))
    out = tmp_path / "out"
    result = invoke("import", "monuseg", xml, "--size", size, "-o", out)
    problem = "allowed" if size[0] not in "0-" else "expected two positive numbers"
    assert_refused(result, f"size {size!r}", problem, exit_code=2)
    assert not out.exists()


def test_size_bound():
    assert check_shape((10_000, 10_000)) == (10_000, 10_000)
    assert check_shape((1, MAX_PIXELS)) == (1, MAX_PIXELS)
    with pytest.raises(ValueError, match="more than the 100 allowed"):
        check_shape((10_000, 10_001))


def test_monuseg_output_directory_and_images_dir_problems(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(aperio_xml([SQUARE]))
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")

    for outdir in (blocker, blocker / "sub"):
        result = invoke("import", "monuseg", xml, "--size", "40x40", "-o", outdir)
        assert_refused(result, blocker, "exists and is not a directory", exit_code=2)
        assert blocker.read_text() == "not a directory"

    out = tmp_path / "out"
    for images in (tmp_path / "missing", blocker):
        result = invoke("import", "monuseg", xml, "--images", images, "-o", out)
        problem = "directory not found" if images.name == "missing" else "not a directory"
        assert_refused(result, images, problem, exit_code=2)
        assert files_under(out) == set()
