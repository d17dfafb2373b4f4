"""GeoJSON (schema, closed rings, pixel coordinates, read back), nucleus CSV, overlay."""
from __future__ import annotations

import csv

import cv2
import jsonschema
import numpy as np
import pytest
from PIL import Image

from nucseg.prediction.export import (CSV_COLUMNS, read_geojson, write_geojson, write_nuclei_csv,
                           write_overlay)
from nucseg.prediction.merge import Merged

POSITION = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}
RING = {"type": "array", "minItems": 4, "items": POSITION}
POLYGON = {"type": "object", "required": ["type", "coordinates"],
           "properties": {"type": {"const": "Polygon"},
                          "coordinates": {"type": "array", "minItems": 1, "items": RING}}}
MULTIPOLYGON = {"type": "object", "required": ["type", "coordinates"],
                "properties": {"type": {"const": "MultiPolygon"},
                               "coordinates": {"type": "array", "minItems": 1,
                                               "items": {"type": "array", "minItems": 1,
                                                         "items": RING}}}}
QUPATH_FEATURE_COLLECTION = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "geometry": {"oneOf": [POLYGON, MULTIPOLYGON]},
                "properties": {
                    "type": "object",
                    "required": ["objectType", "classification", "measurements"],
                    "properties": {
                        "objectType": {"const": "detection"},
                        "classification": {
                            "type": "object", "required": ["name", "color"],
                            "properties": {"name": {"type": "string"},
                                           "color": {"type": "array", "minItems": 3,
                                                     "maxItems": 3,
                                                     "items": {"type": "integer", "minimum": 0,
                                                               "maximum": 255}}}},
                        "measurements": {
                            "type": "object", "required": ["score", "agreement"],
                            "properties": {"score": {"type": "number"},
                                           "agreement": {"type": "number", "minimum": 0,
                                                         "maximum": 1}}},
                    }},
            }}},
    },
}


@pytest.fixture
def merged():
    """Disks (one cut by the image border), a square, and a nucleus in two parts."""
    h, w = 80, 100
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.uint16)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 64] = 1
    labels[(yy - 3) ** 2 + (xx - 70) ** 2 <= 49] = 2            # touches the top edge
    labels[50:60, 10:22] = 3
    labels[50:60, 60:66] = 4
    labels[50:60, 70:74] = 4                                     # second part of nucleus 4
    rois = []
    for k in range(1, 5):
        ys, xs = np.nonzero(labels == k)
        rois.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return Merged(labels=labels, scores=np.array([0.9, 0.8, 0.7, 0.95], np.float32),
                  agreement=np.array([1.0, 0.6, 0.8, 0.4], np.float32),
                  rois=np.array(rois, np.int32), class_ids=np.ones(4, np.int32), n_members=5)


def rasterise(polygons, shape):
    canvas = np.zeros(shape, np.uint8)
    for ring in polygons:
        points = np.rint(np.asarray(ring)[:-1] - 0.5).astype(np.int32)
        cv2.fillPoly(canvas, [points], 1)
    return canvas.astype(bool)


@pytest.mark.parametrize("name", ["t.geojson", "t.geojson.gz"])
def test_geojson_is_a_valid_qupath_feature_collection(tmp_path, merged, name):
    path = write_geojson(tmp_path / name, merged)
    doc = read_geojson(path)
    jsonschema.validate(doc, QUPATH_FEATURE_COLLECTION)
    features = doc["features"]
    assert len(features) == 4
    h, w = merged.labels.shape
    for k, feature in enumerate(features, start=1):
        geometry = feature["geometry"]
        polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                    else geometry["coordinates"])
        rings = [ring for polygon in polygons for ring in polygon]
        for ring in rings:
            assert ring[0] == ring[-1]                               # closed
            xy = np.asarray(ring)
            assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= w     # x within the width
            assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= h     # y within the height
        # the polygon covers exactly the nucleus' pixels (these shapes have no holes)
        np.testing.assert_array_equal(rasterise(rings, (h, w)), merged.labels == k)
        m = feature["properties"]["measurements"]
        assert m["score"] == pytest.approx(merged.scores[k - 1], abs=1e-6)
        assert m["agreement"] == pytest.approx(merged.agreement[k - 1], abs=1e-6)
    assert features[3]["geometry"]["type"] == "MultiPolygon"
    assert features[0]["properties"]["classification"]["name"] == "Nucleus"


def test_empty_result_is_still_a_feature_collection(tmp_path, merged):
    empty = Merged(np.zeros((5, 5), np.uint16), np.zeros(0), np.zeros(0),
                   np.zeros((0, 4), np.int32), np.zeros(0, np.int32))
    doc = read_geojson(write_geojson(tmp_path / "e.geojson", empty))
    jsonschema.validate(doc, QUPATH_FEATURE_COLLECTION)
    assert doc["features"] == []


def test_nuclei_csv_rows_match_the_label_map(tmp_path, merged):
    hstain = np.random.default_rng(0).random(merged.labels.shape).astype(np.float32)
    path = write_nuclei_csv(tmp_path / "t_nuclei.csv", merged, hstain)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [int(r["id"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        k = int(r["id"])
        ys, xs = np.nonzero(merged.labels == k)
        assert int(r["area"]) == len(ys)
        assert float(r["centroid_x"]) == pytest.approx(xs.mean(), abs=1e-4)
        assert float(r["centroid_y"]) == pytest.approx(ys.mean(), abs=1e-4)
        assert float(r["mean_hematoxylin"]) == pytest.approx(hstain[ys, xs].mean(), rel=1e-5)
        assert float(r["score"]) == pytest.approx(merged.scores[k - 1], abs=1e-6)
        assert float(r["agreement"]) == pytest.approx(merged.agreement[k - 1], abs=1e-6)
        assert 0 < float(r["solidity"]) <= 1 and 0 <= float(r["eccentricity"]) < 1
    assert float(rows[2]["solidity"]) == pytest.approx(1.0)          # the square


def test_overlay_outlines_nuclei_and_keeps_the_rest(tmp_path, merged):
    rgb = np.full(merged.labels.shape + (3,), 90, np.uint8)
    out = np.asarray(Image.open(write_overlay(tmp_path / "o.png", rgb, merged.labels)))
    changed = (out != 90).any(-1)
    assert changed[50, 10] and changed[50, 15]                       # square's edge
    assert not changed[55, 15]                                       # its interior
    assert not changed[merged.labels == 0].any()
