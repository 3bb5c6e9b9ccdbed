"""The Z_ERR reference-scatter floor: decoder (in quadrature, Z unchanged), its fit on real-like data, held-out
cross-fitting, and fnet-export --z-err-floor-kms."""

from __future__ import annotations

import numpy as np
import pytest

from fnet.evaluate.z_err_floor import cross_fit, fit_floor, floor_needed, within
from fnet.runtime.constants import C_KMS
from fnet.runtime.heads import decode, validate_head

HEAD = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}


def test_the_floor_adds_in_quadrature_and_leaves_z_alone():
    logits = np.random.default_rng(1).normal(scale=3.0, size=(20, 64)).astype(np.float32)
    plain = decode({"logits": logits}, HEAD)
    floored = decode({"logits": logits}, {**HEAD, "z_err_floor_kms": 200.0})
    np.testing.assert_array_equal(floored.z, plain.z)
    np.testing.assert_allclose(floored.z_err, np.hypot(plain.z_err, 200.0 * (1 + plain.z) / C_KMS), rtol=1e-12)
    assert np.all(floored.z_err > plain.z_err)
    np.testing.assert_array_equal(decode({"logits": logits}, {**HEAD, "z_err_floor_kms": 0}).z_err, plain.z_err)


@pytest.mark.parametrize("head, words", [
    ({**HEAD, "z_err_floor_kms": -5.0}, "0 or more"),
    ({**HEAD, "z_err_floor_kms": "200"}, "velocity"),
    ({"kind": "regression", "z_min": 0.0, "z_max": 7.0, "z_err_floor_kms": 100.0}, "zbins head"),
])
def test_a_wrong_floor_is_refused_naming_it(head, words):
    with pytest.raises(ValueError, match="z_err_floor_kms") as info:
        validate_head(head)
    assert words in str(info.value)


def _offsets(needs_kms: np.ndarray, z_ref: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions with Z_ERR 0 whose floor_needed is exactly needs_kms (z solves c (z - z_ref) / (1 + z) = need)."""
    b = needs_kms / C_KMS
    z = (z_ref + b) / (1 - b)
    return z, np.zeros_like(z), np.full_like(z, z_ref)


def test_the_fitted_floor_is_the_smallest_whole_km_s_covering_68_percent():
    needs = np.array([0, 0, 0, 0, 100, 200, 300, 400, 500, 600], float)
    z, z_err, z_ref = _offsets(needs)
    np.testing.assert_allclose(floor_needed(z, z_err, z_ref), needs, atol=1e-6)
    v = fit_floor(z, z_err, z_ref)  # 7 of 10 must be covered: the 7th smallest need, 300 km/s, strictly exceeded
    assert v in (300.0, 301.0)
    assert within(z, z_err, z_ref, v).sum() == 7 and within(z, z_err, z_ref, v - 2).sum() == 6
    z, z_err, z_ref = _offsets(np.zeros(5))
    assert fit_floor(z, z_err, z_ref) == 0.0


def test_held_out_cross_fitting_recovers_an_extra_scatter_and_finds_none_where_there_is_none():
    rng = np.random.default_rng(3)
    n, sigma_net = 400, 200.0
    for extra in (150.0, 0.0):
        dv = rng.normal(scale=np.hypot(sigma_net, extra), size=n)  # the network's error plus a reference's own
        z_ref = rng.uniform(1.0, 3.0, n)
        z = z_ref + dv * (1 + z_ref) / C_KMS
        z_err = np.full(n, sigma_net) * (1 + z) / C_KMS  # a Z_ERR exact for the network alone
        result = cross_fit(z, z_err, z_ref, splits=20, seed=0)
        assert abs(result["held_out_coverage_mean"] - 0.6827) < 0.04
        if extra:
            assert abs(result["floor_kms_median"] - extra) < 60 and within(z, z_err, z_ref, 0).mean() < 0.62
        else:
            assert result["floor_kms_median"] < 80
    with pytest.raises(ValueError, match="at least 4"):
        cross_fit(z[:3], z_err[:3], z_ref[:3])


def test_fnet_export_stores_the_floor_in_the_head_and_its_provenance(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from tiny_models import patch_export_with_tiny_network

    from fnet.export import pipeline
    from fnet.runtime.model_package import load_model_package

    patch_export_with_tiny_network(monkeypatch, HEAD)
    [result] = [r for r in pipeline.export_checkpoint(tmp_path / "x.pt", tmp_path / "out", precisions=("fp32",),
                                                      n_simulated=8, fft=False, z_err_floor_kms=180.0)
                if r.kind == "onnx-fp32"]
    package = load_model_package(result.path)
    assert package.head["z_err_floor_kms"] == 180.0 and package.training["z_err_floor"] == {"kms": 180.0}
    regression = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
    patch_export_with_tiny_network(monkeypatch, regression)
    with pytest.raises(ValueError, match="--z-err-floor-kms needs a zbins head"):
        pipeline.export_checkpoint(tmp_path / "x.pt", tmp_path / "out2", n_simulated=8, fft=False,
                                   z_err_floor_kms=180.0)


def test_the_benchmark_fits_on_dr16_and_judges_on_the_other_references(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import require_shared

    require_shared("sdss", "dr16")
    out = tmp_path / "floor.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks" / "z_err_floor.py"), "--splits", "5", "--json", str(out)],
                   check=True, capture_output=True, text=True)
    record = json.loads(out.read_text())
    fit = record["fit_set"]
    assert fit["n"] == 67 and fit["cross_fit"]["splits"] == 5
    # the package's own floor is taken off first: the fit starts from the P(z)'s Z_ERR
    assert fit["floor_kms"] > 0
    assert record["others"]["all"]["n"] == 17
    assert record["others"]["all"]["within_with_floor"] >= record["others"]["all"]["within_without_floor"]


def test_compare_catalogs_finds_that_only_z_err_differs(tmp_path):
    import sys
    from pathlib import Path

    from astropy.io import fits
    from click.testing import CliRunner

    from conftest import require_shared
    from fnet.cli import run_command

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from compare_catalogs import compare

    spectra = require_shared("sdss", "dr16")
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    assert CliRunner().invoke(run_command, [str(spectra / "spec-3655-55240-00*.fits"), "-o", str(a), "-q"]).exit_code == 0
    with fits.open(a) as hdul:  # the same catalog with Z_ERR doubled, as a floor far larger than the P(z) would make it
        hdul[1].data["Z_ERR"] = 2 * hdul[1].data["Z_ERR"]
        hdul.writeto(b)
    result = compare(str(a), str(b))
    differing = {k: v for k, v in result["columns"].items() if not v["identical"]}
    assert set(differing) == {"Z_ERR"} and result["rows"] > 0
    assert differing["Z_ERR"]["ratio_min"] == differing["Z_ERR"]["ratio_max"] == 2.0
    assert all(v["identical"] for v in compare(str(a), str(a))["columns"].values())
