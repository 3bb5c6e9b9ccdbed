"""fnet.metrics on hand-computable cases (numpy only)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fnet import metrics as M

C = M.C_KMS


def test_velocity_offset_by_hand():
    # z_true = 1, z_pred = 1.02: dv = c * 0.02 / 2 = 0.01 c
    dv = M.velocity_offsets([1.02, 0.0], [1.0, 0.0])
    assert dv[0] == pytest.approx(0.01 * C)
    assert dv[1] == 0.0


def test_failed_prediction_is_infinite_and_catastrophic():
    dv = M.velocity_offsets([np.nan, 2.0], [2.0, 2.0])
    assert math.isinf(dv[0]) and dv[1] == 0.0
    assert M.catastrophic_rate(dv) == 0.5
    assert M.accuracy_fractions(dv) == {6000.0: 0.5, 12000.0: 0.5, 30000.0: 0.5}


def test_accuracy_fractions_thresholds_are_strict():
    dv = np.array([0.0, 5999.0, -6000.0, 11999.0, 29999.0, -30001.0, 1e6, 100.0])
    f = M.accuracy_fractions(dv)
    assert f[6000.0] == 3 / 8  # 0, 5999, 100 (6000 itself is not < 6000)
    assert f[12000.0] == 5 / 8
    assert f[30000.0] == 6 / 8
    assert M.catastrophic_rate(dv) == 2 / 8


def test_median_and_p68_of_abs_dv():
    dv = np.array([-100.0, 200.0, -300.0, 400.0, 500.0])
    assert M.median_abs_dv(dv) == 300.0
    # linear interpolation at 0.68 * 4 = 2.72 between 300 and 400
    assert M.abs_dv_percentile(dv, 68) == pytest.approx(372.0)


def test_wilson_interval_by_hand():
    # k = 5, n = 10, z = 1.959964: centre (0.5 + z^2/20) / (1 + z^2/10) = 0.5, half = z sqrt(0.025 + z^2/400) / (1 + z^2/10)
    z = 1.959963984540054
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    lo, hi = M.binomial_interval(5, 10)
    assert lo == pytest.approx(0.5 - half, abs=1e-9) and hi == pytest.approx(0.5 + half, abs=1e-9)
    assert lo == pytest.approx(0.236593, abs=1e-6)


def test_clopper_pearson_closed_forms():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    lo, hi = M.binomial_interval(0, 10, method="clopper-pearson")
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1, abs=1e-9)
    lo, hi = M.binomial_interval(10, 10, method="clopper-pearson")
    assert hi == 1.0 and lo == pytest.approx(0.025 ** 0.1, abs=1e-9)
    # k = 5, n = 10 (tabulated: 0.187086, 0.812914), symmetric
    lo, hi = M.binomial_interval(5, 10, method="clopper-pearson")
    assert lo == pytest.approx(0.187086, abs=1e-6) and hi == pytest.approx(1 - lo, abs=1e-9)


def test_z_err_calibration_by_hand():
    cal = M.z_err_calibration([1.0, 1.0, 1.0, 1.0], [1.01, 1.03, 0.95, 1.0], [0.02, 0.02, 0.02, np.nan])
    # |err| = 0.01 (in), 0.03 (out at 1 sigma, in at 2), 0.05 (out); NaN z_err not counted
    assert cal["n"] == 3
    assert cal["within_1_sigma"] == pytest.approx(1 / 3)
    assert cal["within_2_sigma"] == pytest.approx(2 / 3)


def test_per_z_bin_table_counts():
    zt = np.array([0.5, 0.6, 1.5, 6.99, 7.0])
    zp = zt.copy()
    zp[2] += 0.5  # one catastrophic in 1-2
    rows = M.per_z_bin_table(zp, zt, edges=(0.0, 1.0, 2.0, 7.0))
    assert [r["n"] for r in rows] == [2, 1, 2]  # the last bin includes z_max
    assert rows[0]["catastrophic_rate"] == 0.0 and rows[1]["catastrophic_rate"] == 1.0


def test_report_is_json_ready_and_consistent():
    zt = np.array([1.0, 2.0, 3.0, 4.0])
    zp = np.array([1.0, 2.03, 3.0, np.nan])  # dv: 0, c * 0.03 / 3 = 2998 km/s, 0, failed
    rep = M.report(zp, zt, z_err=np.array([0.001, 0.001, 0.001, 0.1]))
    text = json.dumps(rep, allow_nan=False)  # no NaN/inf leaks into JSON
    assert "per_z_bin" in text
    assert rep["n"] == 4 and rep["n_failed"] == 1
    assert rep["fractions"]["6000"]["k"] == 3
    assert rep["fraction_within"]["6000"] == 0.75
    assert rep["catastrophic_rate"] == 0.25
    assert rep["mean_dv"] == pytest.approx(C * 0.03 / 3.0 / 3.0)
    assert rep["z_err_calibration"]["within_1_sigma"] == pytest.approx(2 / 3)
    lo, hi = rep["fractions"]["6000"]["lo"], rep["fractions"]["6000"]["hi"]
    assert lo < 0.75 < hi


def test_report_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        M.report([1.0, 2.0], [1.0])
