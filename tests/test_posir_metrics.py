import math

import pytest

from ragline.eval.posir_metrics import bin_of, length_bucket, position_curve, position_report, relative_position


def test_relative_position_and_clipping():
    assert relative_position(40, 60, 100) == 0.5
    assert relative_position(0, 0, 100) == 0.0
    assert relative_position(150, 170, 100) == 1.0
    with pytest.raises(ValueError):
        relative_position(0, 1, 0)


@pytest.mark.parametrize("tokens, bucket", [(1, "Q1"), (512, "Q1"), (513, "Q2"), (1024, "Q2"), (1536, "Q3"), (1537, "Q4"), (9000, "Q4")])
def test_length_buckets(tokens, bucket):
    assert length_bucket(tokens) == bucket


def test_bins_cover_zero_to_one():
    assert bin_of(0.0) == 0 and bin_of(0.049) == 0 and bin_of(0.05) == 1 and bin_of(1.0) == 19


def test_flat_curve_has_no_bias():
    curve = position_curve([((b + 0.5) / 20, 0.7) for b in range(20)])
    assert curve.psi == pytest.approx(0.0)
    assert curve.slope == pytest.approx(0.0)
    assert curve.mean == pytest.approx(0.7)


def test_linear_curve_has_known_slope_and_psi():
    # nDCG = 0.2 + 0.6·centre: slope 0.6; min 0.2 + 0.6·0.025, max 0.2 + 0.6·0.975
    points = [((b + 0.5) / 20, 0.2 + 0.6 * (b + 0.5) / 20) for b in range(20)]
    curve = position_curve(points)
    assert curve.slope == pytest.approx(0.6)
    assert curve.psi == pytest.approx(1 - 0.215 / 0.785)


def test_primacy_bias_is_a_negative_slope_and_bins_weigh_equally():
    # Many early queries found, few late ones missed: the binned mean weighs bins, not queries.
    points = [(0.01, 1.0)] * 9 + [(0.99, 0.0)]
    curve = position_curve(points)
    assert curve.slope < 0 and curve.psi == 1.0
    assert curve.mean == pytest.approx(0.5)
    report = position_report([{"relpos": r, "ndcg": n, "bucket": "Q1"} for r, n in points])
    assert report["overall"]["mean_ndcg10"] == pytest.approx(0.9)
    assert report["Q1"]["binned_ndcg10"] == pytest.approx(0.5)
    assert "Q2" not in report


def test_single_bin_has_undefined_slope():
    assert math.isnan(position_curve([(0.5, 1.0)]).slope)
