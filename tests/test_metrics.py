"""nucseg.metrics: reference values, edge cases, and a slow per-instance cross-check."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from nucseg import metrics
from nucseg.metrics import METRIC_NAMES, aji, aji_plus, dice, dice2, pq, remap_label, score_pair

FIXTURE_METRICS = ("aji", "aji_plus", "dq", "sq", "pq", "dice", "dice2")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metrics"
EXPECTED_JSON = FIXTURES / "expected.json"
# a crop of case monuseg_TCGA-G9-6336 (its whole-tile maps are only in ../shared)
G9_6336_CROP = (Path(__file__).resolve().parent / "data" / "monuseg2018" / "pairs"
                / "TCGA-G9-6336-01Z-00-DX1_r244-755_c244-755.npz")


def _cases(folder):
    cases = json.loads(EXPECTED_JSON.read_text())["cases"]
    with np.load(folder / "pairs.npz", allow_pickle=False) as pairs:
        maps = {name: pairs[name] for name in pairs.files}
    return {c["name"]: (maps[c["gt"]], maps[c["pred"]], c["expected"]) for c in cases
            if c["gt"] in maps}


@pytest.fixture(scope="module")
def fixture_cases():
    """The cases in tests/fixtures: all but the two on whole MoNuSeg tiles."""
    return _cases(FIXTURES)


@pytest.fixture(scope="module")
def tile_cases(shared_dir):
    """The cases on whole 1000x1000 MoNuSeg tiles (published label maps: ../shared only)."""
    return _cases(shared_dir / "fixtures" / "metrics")


def pytest_generate_tests(metafunc):
    """One test per fixture case, so a failure names the case."""
    if "case_name" in metafunc.fixturenames:
        cases = json.loads(EXPECTED_JSON.read_text())["cases"]
        metafunc.parametrize("case_name", [c["name"] for c in cases])


def test_every_fixture_case_matches_reference(fixture_cases, case_name, request):
    if case_name not in fixture_cases:  # a whole MoNuSeg tile: its maps are only in ../shared
        fixture_cases = request.getfixturevalue("tile_cases")
    gt, pred, expected = fixture_cases[case_name]
    got = score_pair(gt, pred)
    for name in FIXTURE_METRICS:
        if expected[name] is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(expected[name], abs=1e-9, rel=0), name


def test_counts_are_instances_not_ids(fixture_cases):
    gt, pred, _ = fixture_cases["synthetic_101"]
    got = score_pair(gt, pred)
    assert got["n_true"] == len(np.unique(gt)) - 1
    assert got["n_pred"] == len(np.unique(pred)) - 1


def test_single_metric_functions_agree_with_score_pair():
    with np.load(G9_6336_CROP, allow_pickle=False) as pair:
        gt, pred = pair["gt"], pair["pred"]
    full = score_pair(gt, pred)
    assert aji(gt, pred) == full["aji"]
    assert aji_plus(gt, pred) == full["aji_plus"]
    assert dice(gt, pred) == full["dice"]
    assert dice2(gt, pred) == full["dice2"]
    assert pq(gt, pred) == {"dq": full["dq"], "sq": full["sq"], "pq": full["pq"]}
    table = metrics.overlap_table(gt, pred)
    assert aji(table) == full["aji"]


def test_fallback_paths_give_identical_results(fixture_cases, monkeypatch):
    """Huge id ranges (np.unique counting) and huge tables (per-component assignment)."""
    gt, pred, _ = fixture_cases["synthetic_102"]
    expected = score_pair(gt, pred)
    monkeypatch.setattr(metrics, "_MAX_DENSE_SLOTS", 0)
    monkeypatch.setattr(metrics, "_MAX_DENSE_ASSIGNMENT", 0)
    assert score_pair(gt, pred) == expected


# --- edge cases --------------------------------------------------------------------------------
def test_both_empty_is_undefined_not_zero():
    empty = np.zeros((8, 8), np.int32)
    got = score_pair(empty, empty)
    assert all(got[m] is None for m in METRIC_NAMES)
    assert got["n_true"] == got["n_pred"] == 0


@pytest.mark.parametrize("which", ["gt", "pred"])
def test_one_empty_map_scores_zero(which):
    labels = np.zeros((8, 8), np.int32)
    labels[2:5, 2:5] = 3
    empty = np.zeros_like(labels)
    gt, pred = (empty, labels) if which == "gt" else (labels, empty)
    got = score_pair(gt, pred)
    assert all(got[m] == 0.0 for m in METRIC_NAMES)


def test_no_overlap_scores_zero():
    gt = np.zeros((10, 10), np.int32)
    pred = np.zeros_like(gt)
    gt[0:3, 0:3] = 1
    pred[6:9, 6:9] = 1
    assert all(score_pair(gt, pred)[m] == 0.0 for m in METRIC_NAMES)


def test_perfect_prediction():
    gt = np.zeros((10, 10), np.int32)
    gt[0:3, 0:3], gt[5:9, 5:9] = 1, 2
    got = score_pair(gt, gt * 7)  # same instances, other ids
    assert got["aji"] == got["aji_plus"] == got["dq"] == got["dice"] == got["dice2"] == 1.0
    assert got["sq"] == pytest.approx(1.0, abs=1e-6)  # the reference's 1e-6 guard


def test_non_contiguous_and_wide_ids_do_not_change_scores(fixture_cases):
    gt, pred, _ = fixture_cases["edge_small_perturbed"]
    expected = score_pair(gt, pred)
    # order-preserving renumbering into sparse, huge uint32 ids (forces the np.unique path)
    wide_gt = np.where(gt > 0, gt.astype(np.uint32) * 40_000_000 + 5, 0).astype(np.uint32)
    wide_pred = np.where(pred > 0, pred.astype(np.int64) * 977 + 3, 0)
    assert score_pair(wide_gt, wide_pred) == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int16, bool])
def test_any_integer_dtype_scores_the_same(fixture_cases, dtype):
    gt, pred, _ = fixture_cases["edge_small_perturbed"]
    if dtype is bool:  # one foreground "instance" per map
        gt, pred = gt > 0, pred > 0
    assert pred.max() < 256  # the ids fit every dtype tested
    expected = score_pair(gt.astype(np.int64), pred.astype(np.int64))
    assert score_pair(gt.astype(dtype), pred.astype(dtype)) == expected


def test_split_nucleus_aji_counts_the_shared_prediction_once_in_aji_plus():
    gt = np.zeros((4, 8), np.int32)
    gt[:, :4], gt[:, 4:] = 1, 2
    pred = (gt > 0).astype(np.int32)  # one prediction covering both nuclei
    got = score_pair(gt, pred)
    assert got["aji"] == pytest.approx(32 / 64)   # both pair with it: 16+16 / 32+32
    assert got["aji_plus"] == pytest.approx(16 / 48)  # one pair, 16 px of gt unpaired
    assert got["dq"] == 0.0  # IoU 0.5 is not a match (strictly greater)


def test_remap_label_keeps_order_and_background():
    labels = np.array([[0, 40, 40], [7, 0, 900]])
    assert remap_label(labels).tolist() == [[0, 2, 2], [1, 0, 3]]
    assert remap_label(np.array([[5, 5], [9, 9]])).tolist() == [[1, 1], [2, 2]]


@pytest.mark.parametrize("bad, message", [
    (np.ones((4, 4), np.float32), "integers"),
    (-np.ones((4, 4), np.int32), "negative"),
    (np.ones((4, 5), np.int32), "shape"),
])
def test_bad_label_maps_are_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        score_pair(np.ones((4, 4), np.int32), bad)


# --- independent slow implementation, one boolean mask per nucleus ------------------------------
def _slow_scores(gt, pred, threshold=0.5):
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [i for i in np.unique(pred) if i]
    inter = np.array([[np.sum((gt == g) & (pred == p)) for p in p_ids] for g in g_ids],
                     dtype=float).reshape(len(g_ids), len(p_ids))
    area_g = np.array([np.sum(gt == g) for g in g_ids], dtype=float)
    area_p = np.array([np.sum(pred == p) for p in p_ids], dtype=float)
    union = np.where(inter > 0, area_g[:, None] + area_p[None, :] - inter, 0)
    iou_eps = inter / (union + 1e-6)

    def aji_from(pairs):
        used_g = {g for g, _ in pairs}
        used_p = {p for _, p in pairs}
        num = sum(inter[g, p] for g, p in pairs)
        den = (sum(union[g, p] for g, p in pairs)
               + sum(area_g[i] for i in range(len(g_ids)) if i not in used_g)
               + sum(area_p[j] for j in range(len(p_ids)) if j not in used_p))
        return num / den

    greedy = [(g, int(np.argmax(iou_eps[g]))) for g in range(len(g_ids))
              if len(p_ids) and iou_eps[g].max() > 0]
    rows, cols = linear_sum_assignment(-iou_eps)
    hungarian = [(g, p) for g, p in zip(rows, cols) if iou_eps[g, p] > 0]
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if threshold >= 0.5:
        matches = [(g, p) for g, p in zip(*np.nonzero(iou > threshold))]
    else:
        r, c = linear_sum_assignment(-iou)
        matches = [(g, p) for g, p in zip(r, c) if iou[g, p] > threshold]
    tp = len(matches)
    dq = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(g_ids) - tp))
    sq = sum(iou[g, p] for g, p in matches) / (tp + 1e-6)
    overlapping = inter > 0
    markup = (area_g[:, None] + area_p[None, :])[overlapping].sum()
    return {
        "aji": aji_from(greedy), "aji_plus": aji_from(hungarian),
        "dq": dq, "sq": sq, "pq": dq * sq,
        "dice": 2 * np.sum((gt > 0) & (pred > 0)) / (np.sum(gt > 0) + np.sum(pred > 0)),
        "dice2": 2 * inter[overlapping].sum() / markup if markup else 0.0,
    }


def _random_instances(rng, shape, n, max_size):
    labels = np.zeros(shape, np.int64)
    ids = rng.choice(np.arange(1, 10 * n), size=n, replace=False)
    for i in ids:
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, max_size, size=2)
        labels[y:y + h, x:x + w] = i
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_per_instance_implementation(seed):
    rng = np.random.default_rng(seed)
    gt = _random_instances(rng, (64, 64), 16, 14)
    pred = np.roll(gt, rng.integers(-2, 3, size=2), axis=(0, 1))
    pred = np.where(rng.random(gt.shape) < 0.05, 0, pred)  # some holes
    pred[rng.integers(0, 56):, :5] = 999  # and a spurious prediction
    expected = _slow_scores(gt, pred)
    got = score_pair(gt, pred)
    for name in FIXTURE_METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_low_iou_threshold_uses_one_to_one_assignment():
    rng = np.random.default_rng(11)
    gt = _random_instances(rng, (40, 40), 10, 12)
    pred = np.roll(gt, (4, 3), axis=(0, 1))
    expected = _slow_scores(gt, pred, threshold=0.2)
    got = pq(gt, pred, iou_threshold=0.2)
    assert got["dq"] == pytest.approx(expected["dq"], abs=1e-12)
    assert got["sq"] == pytest.approx(expected["sq"], abs=1e-12)
    assert got["dq"] > pq(gt, pred)["dq"]  # a lower bar matches more nuclei


def test_recall_by_shape_counts_small_and_elongated_nuclei():
    """A 5 px disc (small), a 3 x 40 strip (elongated) and a 10 px disc; the prediction finds
    the strip and the large disc: recall 2/3 overall, 0/1 small, 1/1 elongated."""
    yy, xx = np.mgrid[:64, :96]
    gt = np.zeros((64, 96), np.int32)
    gt[(yy - 12) ** 2 + (xx - 12) ** 2 <= 25] = 7                  # 81 px: small
    gt[40:43, 10:50] = 9                                           # strip
    gt[(yy - 30) ** 2 + (xx - 75) ** 2 <= 100] = 12                # 317 px
    pred = np.where(np.isin(gt, [9, 12]), gt, 0)
    pred[41, 10:20] = 0                                            # still IoU > 0.5
    result = metrics.recall_by_shape(gt, pred)
    assert result == {"all": {"found": 2, "total": 3}, "small": {"found": 0, "total": 1},
                      "elongated": {"found": 1, "total": 1}}
    assert metrics.recall_by_shape(gt, np.zeros_like(gt))["all"] == {"found": 0, "total": 3}
