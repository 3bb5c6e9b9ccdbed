"""The embedded default model: shipped, valid, used when --model is omitted, and accurate on real spectra."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from conftest import require_shared
from fnet.cli import default_model_path, run_command
from fnet.evaluate import collect, evaluate, onnx_predictor, read_truth
from fnet.runtime.catalog import read_catalog
from fnet.runtime.model_package import load_model_package


def test_default_model_is_a_valid_package_with_provenance():
    package = load_model_package(default_model_path())
    assert package.head["kind"] == "zbins"
    assert package.parity.get("passed") is True
    runs = package.training.get("ensemble") or [package.training]  # an ensemble records each member's training
    assert runs and all((run.get("epoch") or run.get("epochs") or 0) > 0 for run in runs)
    # three pooled4x networks of 4.2 MB (an ensemble, docs/models.md): still small enough to ship in the wheel
    assert default_model_path().stat().st_size < 16 * 2**20
    # each class's training redshift range is in the head (fnet-export --fit-class-z-range)
    assert set(package.head["class_z_range"]) == {"QSO", "STAR", "GALAXY"}
    # and a Z_ERR floor for catalogue redshifts, recorded where it came from (benchmarks/z_err_floor.py)
    assert package.head["z_err_floor_kms"] == package.training["z_err_floor"]["kms"] > 0


def test_fnet_run_uses_the_embedded_model_by_default(tmp_path):
    spectra = require_shared("sdss", "dr16")
    out = tmp_path / "cat.fits"
    result = CliRunner().invoke(run_command, [str(spectra / "spec-3655-55240-00*.fits"), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    cat = read_catalog(out)
    assert cat.meta["MODELSHA"] == load_model_package(default_model_path()).sha256
    assert np.all(np.isfinite(cat["Z"])) and np.all(np.isfinite(cat["Z_ERR"]))


def test_default_model_accuracy_on_the_67_real_dr16_quasars():
    """A floor, not the measured value (README has that): fails if a new default model regresses."""
    dr16 = require_shared("sdss", "dr16")
    spectra, z_true, _ = collect([str(dr16)], read_truth(dr16 / "cat_for_clustering_plate3655.fits.gz"))
    assert len(spectra) == 67
    predict, _ = onnx_predictor(default_model_path(), device="cpu")
    rep = evaluate(predict, spectra, z_true)
    assert rep["fractions"]["6000"]["fraction"] >= 0.94
    assert rep["median_abs_dv"] <= 400.0


def test_trimmed_forest_only_spectra_are_flagged_not_trusted(tmp_path):
    pk1d = require_shared("sdss", "dr14-pk1d")
    out = tmp_path / "cat.fits"
    CliRunner().invoke(run_command, [str(pk1d / "spec-*.fits"), "-o", str(out), "-q"])
    cat = read_catalog(out)
    assert len(cat) == 8 and np.all(cat["ZWARN"] & 2)  # LITTLE_COVERAGE


def test_default_model_knows_stars_from_quasars_on_real_spectra():
    """Floors, not the measured values (README has those: 67/67 QSO, 175/176 STAR): a class-head regression fails."""
    dr16, lamost = require_shared("sdss", "dr16"), require_shared("lamost", "dr1")
    package = load_model_package(default_model_path())
    assert package.head["classes"] == ["QSO", "STAR", "GALAXY"] and package.metadata["fnet.contract_version"] == "2"
    predict, _ = onnx_predictor(default_model_path(), device="cpu")
    quasars, _, _ = collect([str(dr16)], read_truth(dr16 / "cat_for_clustering_plate3655.fits.gz"))
    stars, _, _ = collect([str(lamost)], read_truth(lamost / "truth.csv"))
    assert len(quasars) == 67 and len(stars) == 176
    assert np.sum(predict(quasars).spectype() == "QSO") >= 64
    star_types = predict(stars).spectype()
    assert np.mean(star_types == "STAR") >= 0.93
