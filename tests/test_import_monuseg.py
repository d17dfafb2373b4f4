"""import monuseg: Aperio XML polygons -> label maps, agreement with the published labels."""
import csv

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from PIL import Image

from nucseg.cli import main
from nucseg.data.monuseg import import_monuseg_xml, polygons_to_labels
from nucseg.io import InputError

STEMS = ["TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1"]
# tests/data/monuseg2018 holds the central 512 x 512 px of each published 1000 x 1000 label map
CROP = (slice(244, 756), slice(244, 756))


def aperio_xml(regions):
    """A minimal Aperio file; `regions` is a list of [(x, y), ...] vertex lists."""
    parts = ['<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>']
    for number, vertices in enumerate(regions, start=1):
        parts.append(f'<Region Id="{number}"><Vertices>')
        parts += [f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices]
        parts.append("</Vertices></Region>")
    parts.append("</Regions></Annotation></Annotations>")
    return "\n".join(parts)


@pytest.mark.parametrize("stem", STEMS)
def test_agrees_with_published_labels(data_dir, stem):
    root = data_dir
    result = import_monuseg_xml(root / "annotations_xml" / f"{stem}.xml")
    expected = np.asarray(Image.open(root / "labels" / f"{stem}_r244-755_c244-755.png")
                          ).astype(np.int32)
    assert result.labels.shape == (1000, 1000)
    agreement = float(np.mean(result.labels[CROP] == expected))
    print(f"{stem}: {agreement:.4%} of pixels agree")
    assert agreement >= 0.985
    with open(root / "metadata.csv", newline="") as fh:  # nuclei in the published label map
        published = {row["id"]: int(row["n_nuclei"]) for row in csv.DictReader(fh)}
    assert result.n_nuclei == published[stem]


def test_vertices_are_one_based():
    square = [(2, 2), (4, 2), (4, 4), (2, 4)]  # 1-based pixels 2..4 -> 0-based 1..3
    labels = polygons_to_labels([np.array(square, float)], (6, 6)).labels
    expected = np.zeros((6, 6), np.int32)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(labels, expected)


def test_first_region_keeps_overlaps_and_short_regions_are_skipped():
    first = np.array([(1, 1), (5, 1), (5, 5), (1, 5)], float)
    line = np.array([(1, 1), (8, 8)], float)
    second = np.array([(4, 4), (8, 4), (8, 8), (4, 8)], float)
    hidden = np.array([(2, 2), (3, 2), (3, 3)], float)
    result = polygons_to_labels([first, line, second, hidden], (8, 8))
    assert result.labels[4, 4] == 1  # in both squares: the first region keeps it
    assert result.labels[3, 5] == 2 and result.labels[6, 6] == 2
    assert set(np.unique(result.labels)) == {0, 1, 2}
    assert result.skipped_few_vertices == 1 and result.empty_regions == [4]
    assert (result.n_regions, result.n_nuclei) == (4, 2)


def test_cli_with_images_dir_and_skipped_report(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "tile.tif", np.zeros((30, 40, 3), np.uint8))
    xml = tmp_path / "tile.xml"
    xml.write_text(aperio_xml([[(2, 2), (10, 2), (10, 10)], [(1, 1), (3, 3)]]))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["import", "monuseg", str(xml), "--images", str(images),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 region(s) with < 3 vertices skipped" in result.output
    labels = tifffile.imread(out / "tile_labels.tif")
    assert labels.shape == (30, 40) and labels.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1}
    record = yaml.safe_load((out / "import_monuseg_record.yaml").read_text())
    assert record["files"][0]["skipped_fewer_than_3_vertices"] == 1


def test_cli_size_option_and_errors(tmp_path):
    good = tmp_path / "good.xml"
    good.write_text(aperio_xml([[(2, 2), (10, 2), (10, 10)]]))
    broken = tmp_path / "broken.xml"
    broken.write_text("<Annotations><Region>")
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["import", "monuseg", str(good), str(broken), "--size", "20x25",
                                  "-o", str(out)])
    assert result.exit_code == 1
    assert f"{broken}: not a valid XML file" in result.output
    assert tifffile.imread(out / "good_labels.tif").shape == (20, 25)
    assert not (out / "broken_labels.tif").exists()

    result = runner.invoke(main, ["import", "monuseg", str(good), "--size", "big", "-o", str(out)])
    assert result.exit_code == 2 and "expected HEIGHTxWIDTH" in result.output

    images = tmp_path / "images"
    images.mkdir()
    result = runner.invoke(main, ["import", "monuseg", str(good), "--images", str(images),
                                  "-o", str(out)])
    assert result.exit_code == 1 and f"no image named good.* in {images}" in result.output


def test_bad_vertex_is_an_input_error(tmp_path):
    xml = tmp_path / "bad.xml"
    xml.write_text(aperio_xml([[(2, 2), (10, "x"), (10, 10)]]))
    with pytest.raises(InputError, match="region 1 has a vertex without numeric X/Y"):
        import_monuseg_xml(xml)
