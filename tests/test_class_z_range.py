"""The head's class_z_range (issue #9): a class is dropped at a redshift where training never had it.

By hand on the decoder, through the whole runtime on real files, and measured on the real simulator at export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require_shared
from fnet.cli import run_command
from fnet.runtime.catalog import read_catalog
from fnet.runtime.constants import C_KMS
from fnet.runtime.heads import CLASS_Z_MARGIN_KMS, decode, restrict_to_class_z_range, validate_head
from fnet.runtime.zwarn import ZWarn, compute_zwarn
from tiny_models import make_tiny_model

CLASSES = ("QSO", "STAR", "GALAXY")
RANGES = {"QSO": [0.03, 7.0], "STAR": [-0.002, 0.002], "GALAXY": [0.001, 1.2]}
HEAD = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64,
        "classes": list(CLASSES), "class_output": "class_logits"}


def edge(z: float, sign: int, fraction: float) -> float:
    """The redshift `fraction` of the margin beyond (sign +1) or inside (-1) z, in ln(1 + z)."""
    return float(np.expm1(np.log1p(z) + sign * fraction * CLASS_Z_MARGIN_KMS / C_KMS))


def test_a_class_outside_its_range_is_dropped_and_the_rest_renormalised():
    p = np.array([[0.6, 0.3, 0.1],   # "QSO" at z 0.0005: only stars and galaxies were trained there
                  [0.9, 0.06, 0.04],  # QSO at z 2: stays, the others (never at z 2) go to 0
                  [0.5, 0.2, 0.3],    # QSO just below 0.03 but inside the margin: allowed
                  [0.5, 0.2, 0.3],    # QSO beyond the margin at the low end: dropped
                  [0.2, 0.3, 0.5],    # z 9: no class was trained there: left as it is
                  [np.nan, np.nan, np.nan]])
    z = np.array([0.0005, 2.0, edge(0.03, -1, 0.9), edge(0.03, -1, 1.1), 9.0, 1.0])
    out, outside = restrict_to_class_z_range(p, z, CLASSES, RANGES)
    np.testing.assert_allclose(out[0], [0.0, 0.75, 0.25])
    np.testing.assert_allclose(out[1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[2], [0.5 / 0.8, 0.0, 0.3 / 0.8])  # STAR is far outside its range here
    np.testing.assert_allclose(out[3], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(out[4], p[4])
    assert np.isnan(out[5]).all()
    # the head's own first choice outside its range: rows 0 and 3, and row 4 (z 9: GALAXY is never trained there)
    assert outside.tolist() == [True, False, False, True, True, False]


def test_a_class_without_a_range_is_allowed_everywhere():
    out, outside = restrict_to_class_z_range(np.array([[0.7, 0.2, 0.1]]), np.array([0.0]), CLASSES,
                                             {"GALAXY": [0.5, 1.0]})
    np.testing.assert_allclose(out, [[0.7 / 0.9, 0.2 / 0.9, 0.0]])
    assert not outside.any()


def test_decode_applies_the_range_only_when_the_head_has_one():
    logits = np.full((2, 64), -30.0)
    logits[:, 0] = 0.0  # all of P(z) in the first bin: z ~ 0.016
    class_logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))
    outputs = {"logits": logits, "class_logits": class_logits}
    plain = decode(outputs, HEAD)
    assert plain.class_out_of_range is None and plain.p_class_head is None
    assert list(plain.spectype()) == ["QSO", "GALAXY"]
    ranged = decode(outputs, {**HEAD, "class_z_range": {"QSO": [0.05, 7.0], "STAR": [-0.002, 0.002],
                                                        "GALAXY": [0.001, 1.2]}})
    np.testing.assert_array_equal(ranged.z, plain.z)
    assert list(ranged.spectype()) == ["GALAXY", "GALAXY"] and ranged.class_out_of_range.tolist() == [True, False]
    np.testing.assert_allclose(ranged.p_class[0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(ranged.p_class_head, plain.p_class)  # the head's own answer is kept


@pytest.mark.parametrize("ranges, why", [
    ([0.0, 1.0], "must map"),
    ({"AGN": [0.0, 1.0]}, "must map"),
    ({"QSO": [1.0, 0.5]}, "lo <= hi"),
    ({"QSO": [0.0, float("nan")]}, "lo <= hi"),
    ({"QSO": [0.0]}, "lo <= hi"),
    ({"QSO": [True, 2.0]}, "lo <= hi"),
    ({"QSO": [-1.0, 2.0]}, "-1 < lo"),
])
def test_malformed_class_ranges_are_refused(ranges, why):
    with pytest.raises(ValueError, match=why):
        validate_head({**HEAD, "class_z_range": ranges})


def test_numpy_numbers_are_accepted_as_range_ends():
    head = validate_head({**HEAD, "class_z_range": {"QSO": [np.float32(0.03), np.float64(7.0)]}})
    assert head["class_z_range"] == {"QSO": [pytest.approx(0.03), 7.0]}


def test_a_range_needs_a_class_head():
    head = {k: v for k, v in HEAD.items() if k not in ("classes", "class_output")}
    with pytest.raises(ValueError, match="needs a class head"):
        validate_head({**head, "class_z_range": {"QSO": [0.0, 1.0]}})


def test_the_flag_reads_the_class_heads_own_answer():
    n = 4
    kwargs = dict(coverage=np.ones(n), sn_median=np.full(n, 10.0), ivar_known=np.ones(n, bool), z=np.full(n, 1.0),
                  z_err=np.full(n, 0.001), z_range=(0.0, 7.0),
                  quality={"min_coverage": 0.5, "min_sn_median": 1.0, "max_dv_err_kms": 3000,
                           "max_secondary_mass": 0.3, "min_class_prob": 0.9})
    # rows: confident but outside its range; confident and inside; unsure (0.6) though the ranges leave one class;
    # z where no class was trained (outside, and nothing to move it to)
    p_head = np.array([[0.95, 0.05, 0.0], [0.0, 1.0, 0.0], [0.6, 0.05, 0.35], [0.95, 0.0, 0.05]])
    outside = np.array([True, False, False, True])
    flags = compute_zwarn(**kwargs, p_class=p_head, class_out_of_range=outside)
    assert ((flags & ZWarn.CLASS_UNCERTAIN) != 0).tolist() == [True, False, True, True]
    none = compute_zwarn(**kwargs)
    assert np.array_equal(none & ~ZWarn.CLASS_UNCERTAIN, flags & ~ZWarn.CLASS_UNCERTAIN)


def test_real_files_through_the_runtime_never_get_a_class_outside_its_range(tmp_path):
    files = sorted(require_shared("lamost", "dr1").glob("*.fits"))[:20] \
        + sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:20]
    # ranges that the linear test network's scattered redshifts often leave: many rows must move
    ranges = {"QSO": [1.5, 7.0], "STAR": [-0.002, 0.002], "GALAXY": [0.0, 1.0]}
    plain = make_tiny_model(tmp_path / "plain.onnx", HEAD, class_scale=3.0)
    ranged = make_tiny_model(tmp_path / "ranged.onnx", {**HEAD, "class_z_range": ranges}, class_scale=3.0)
    cats = {}
    for name, model in (("plain", plain), ("ranged", ranged)):
        result = CliRunner().invoke(run_command, [*map(str, files), "-m", str(model), "-o", str(tmp_path / f"{name}.fits"),
                                                  "-q", "--backend", "onnxruntime"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        cats[name] = read_catalog(tmp_path / f"{name}.fits")
    a, b = cats["plain"], cats["ranged"]
    assert a.meta["CLASSZR"] is False and b.meta["CLASSZR"] is True
    np.testing.assert_array_equal(a["Z"], b["Z"])  # the redshift head is untouched
    z = np.asarray(b["Z"], dtype=np.float64)
    u = np.log1p(z)
    margin = CLASS_Z_MARGIN_KMS / C_KMS
    inside = {c: (u >= np.log1p(lo) - margin) & (u <= np.log1p(hi) + margin) for c, (lo, hi) in ranges.items()}
    spectype = np.array([str(s) for s in b["SPECTYPE"]])
    held = np.array([inside[s][i] for i, s in enumerate(spectype)])
    some = np.any([inside[c] for c in CLASSES], axis=0)
    assert np.all(held[some])  # wherever some class was trained at Z, the reported one was
    moved = spectype != np.array([str(s) for s in a["SPECTYPE"]])
    assert moved.sum() >= 5 and np.all(np.asarray(b["ZWARN"])[moved] & ZWarn.CLASS_UNCERTAIN)
    messages = np.array([str(m) for m in b["MESSAGE"]])
    assert all("outside the redshifts training held it at" in m for m in messages[moved])
    # flags are never lost: every row the plain head flagged as unsure is still flagged
    assert np.all(np.asarray(b["ZWARN"])[np.asarray(a["ZWARN"]) & ZWarn.CLASS_UNCERTAIN != 0] & ZWarn.CLASS_UNCERTAIN)
    p = np.stack([np.asarray(b[f"P_{c}"], dtype=np.float64) for c in CLASSES], axis=1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def test_export_measures_the_ranges_on_the_runs_own_simulator():
    from fnet.runtime.grid import Grid
    from fnet.simulate.mixture import STAR_Z_MAX
    from fnet.train.calibrate import CLASS_RANGE_TAIL, fit_class_z_range

    grid = Grid(3.5522, 0.0004, 1155)
    norm = {"scheme": "ivar_unit_norm", "clip": 10.0}
    options = {"mix": {"QSO": 0.4, "AGN": 0.1, "STAR": 0.3, "GALAXY": 0.2}, "galaxy_z_range": [0.01, 0.6]}
    fit = fit_class_z_range(list(CLASSES), "fnet.simulate:SpectrumMixSimulator", options, grid, norm, n=300,
                            batch_size=150)
    r = fit["ranges"]
    assert sum(fit["counts"].values()) == 300 and fit["tail"] == CLASS_RANGE_TAIL
    assert -STAR_Z_MAX <= r["STAR"][0] < r["STAR"][1] <= STAR_Z_MAX
    assert 0.01 <= r["GALAXY"][0] < r["GALAXY"][1] <= 0.6
    assert 0.0 <= r["QSO"][0] < 0.5 < 3.0 < r["QSO"][1] <= 7.0  # low-z AGN and high-z quasars both count as QSO
    assert fit_class_z_range(list(CLASSES), "fnet.simulate:SpectrumMixSimulator", options, grid, norm, n=300,
                             batch_size=150)["ranges"] == r  # its own seed: the same ranges every export
    with pytest.raises(ValueError, match="GALAXY"):
        fit_class_z_range(list(CLASSES), "fnet.simulate:SpectrumMixSimulator",
                          {"mix": {"QSO": 0.5, "STAR": 0.5}}, grid, norm, n=100)


def test_fnet_export_stores_the_measured_ranges_in_the_package(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from tiny_models import patch_export_with_tiny_network

    from fnet.export import pipeline
    from fnet.runtime.model_package import load_model_package

    data = {"source": "simulate", "simulator_class": "fnet.simulate:SpectrumMixSimulator",
            "simulator": {"mix": {"QSO": 0.5, "STAR": 0.3, "GALAXY": 0.2}}, "z_range": [0.0, 7.0]}
    net, meta = patch_export_with_tiny_network(monkeypatch, {**HEAD, "nbins": 64}, config={"data": data})
    [result] = [r for r in pipeline.export_checkpoint(tmp_path / "x.pt", tmp_path / "out", precisions=("fp32",),
                                                      n_simulated=8, fft=False, class_z_range_spectra=200)
                if r.kind == "onnx-fp32"]
    package = load_model_package(result.path)
    ranges = package.head["class_z_range"]
    assert set(ranges) == set(CLASSES) and ranges == package.training["class_z_range"]["ranges"]
    assert abs(ranges["STAR"][0]) < 0.003 and ranges["QSO"][1] > 1.0
    regression = {"kind": "regression", "classes": list(CLASSES), "class_output": "class_logits"}
    monkeypatch.setattr(pipeline, "load_model", lambda path: (net, {**meta, "head": regression}))
    with pytest.raises(ValueError, match="zbins redshift head"):
        pipeline.export_checkpoint(tmp_path / "x.pt", tmp_path / "out3", n_simulated=8, fft=False,
                                   class_z_range_spectra=200)
    monkeypatch.setattr(pipeline, "load_model", lambda path: (net, {**meta, "config": {"data": {"source": "shards"}}}))
    with pytest.raises(ValueError, match="--fit-class-z-range needs a run trained on simulated spectra"):
        pipeline.export_checkpoint(tmp_path / "x.pt", tmp_path / "out2", n_simulated=8, fft=False, class_z_range_spectra=200)
