"""fnet-run end to end on real files with a tiny linear ONNX package that follows the metadata contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from conftest import require_shared
from fnet.cli import run_command
from fnet.runtime.catalog import read_catalog
from fnet.runtime.model_package import file_sha256, load_model_package
from fnet.runtime.preprocess import prepare_spectra
from fnet.runtime.readers import read_spectra
from fnet.runtime.zwarn import ZWarn
from tiny_models import linear_weights, make_tiny_model

REGRESSION = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
ZBINS = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 128}


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-reg.onnx", REGRESSION)


@pytest.fixture(scope="module")
def zbins_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-zbins.onnx", ZBINS)


def run(args: list[str]):
    result = CliRunner().invoke(run_command, [str(a) for a in args], catch_exceptions=False)
    return result


def test_dr16_spectra_give_the_numbers_the_model_defines(tmp_path, regression_model):
    dr16 = require_shared("sdss", "dr16")
    out = tmp_path / "cat.fits"
    result = run([str(dr16 / "spec-*.fits"), "--model", regression_model, "-o", out, "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    cat = read_catalog(out)
    files = sorted(dr16.glob("spec-*.fits"))
    assert len(cat) == len(files) == 80
    assert list(cat["SOURCE"]) == [str(f) for f in files]  # input order kept across batches
    assert np.all(cat["STATUS"] == "ok")
    # recompute Z for three files with numpy: reader -> preprocessing -> the linear map -> head scaling
    pkg = load_model_package(regression_model)
    w, b = linear_weights(pkg.grid.npix, 1)
    spectra = [read_spectra(files[i])[0] for i in (0, 33, 79)]
    x = prepare_spectra(spectra, pkg.grid, pkg.normalisation).x
    expected = 7.0 * (x.astype(np.float64) @ w.astype(np.float64) + b)[:, 0]
    assert np.allclose(cat["Z"][[0, 33, 79]], expected, atol=1e-4)
    for i, spec in zip((0, 33, 79), spectra):
        assert (cat["PLATE"][i], cat["MJD"][i], cat["FIBERID"][i]) == (spec.meta["PLATE"], spec.meta["MJD"],
                                                                      spec.meta["FIBERID"])
    header = fits.getheader(out, "FNET")
    assert header["MODELSHA"] == file_sha256(regression_model)
    assert header["NSPEC"] == 80 and header["NFAIL"] == 0
    assert header["ZWB1"] == "LITTLE_COVERAGE"


def test_every_format_in_one_run_with_failures_reported(tmp_path, zbins_model):
    sdss, desi = require_shared("sdss"), require_shared("desi")
    out = tmp_path / "all.fits"
    result = run([sdss, desi, "--model", zbins_model, "-o", out, "--save-pdf"])
    assert result.exit_code == 1  # the catalog files in those folders are not spectra
    cat = read_catalog(out)
    failed = cat[cat["STATUS"] != "ok"]
    assert all(str(m).startswith(str(src)) for m, src in zip(failed["MESSAGE"], failed["SOURCE"]))
    ok = cat[cat["STATUS"] == "ok"]
    formats = set(ok["FORMAT"])
    assert {"sdss-spec", "sdss-spplate", "sdss-spspec", "desi-coadd"} <= formats
    plate = ok[ok["FORMAT"] == "sdss-spplate"]
    assert len(plate) == 20 and list(plate["ROW"]) == list(range(20))
    assert np.all(np.isnan(plate["SN_MEDIAN"])) and np.all(plate["ZWARN"] & ZWarn.SN_UNKNOWN)
    trimmed = ok[np.char.find(ok["SOURCE"].astype(str), "dr14-pk1d") >= 0]
    assert len(trimmed) == 8 and np.all(trimmed["ZWARN"] & ZWarn.LITTLE_COVERAGE)
    assert np.all(trimmed["COVERAGE"] < 0.2)
    desi_rows = ok[ok["FORMAT"] == "desi-coadd"]
    assert np.all(desi_rows["TARGETID"][np.char.find(desi_rows["SOURCE"].astype(str), "test_coadd") < 0] > 0)
    assert np.all(np.isfinite(ok["Z_ERR"]))
    pdf = fits.getdata(out, "ZPDF")
    assert pdf.shape == (len(cat), 128)
    assert np.allclose(pdf[np.asarray(cat["STATUS"] == "ok")].sum(axis=1), 1.0, atol=1e-4)
    assert "failed" in result.output and "rows from" in result.output


def _spec_copy(tmp_path: Path, name: str, edit) -> Path:
    src = require_shared("sdss", "dr16", "spec-3655-55240-0002.fits")
    dst = tmp_path / name
    with fits.open(src) as hdul:
        data = hdul[1].data.copy()
        edit(data)
        hdul[1].data = data
        hdul.writeto(dst)
    return dst


def test_bad_inputs_become_failed_rows_and_the_run_goes_on(tmp_path, regression_model):
    good = require_shared("sdss", "dr16", "spec-3655-55240-0026.fits")
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    text = tmp_path / "notes.fits"
    text.write_text("this is not a FITS file\n" * 100)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:20000])
    nan_flux = _spec_copy(tmp_path, "nanflux.fits", lambda d: d["FLUX"].__setitem__(slice(None), np.nan))
    zero_ivar = _spec_copy(tmp_path, "zeroivar.fits", lambda d: d["IVAR"].__setitem__(slice(None), 0.0))
    missing = tmp_path / "missing.fits"
    out = tmp_path / "cat.csv"
    inputs = [good, empty, text, truncated, nan_flux, zero_ivar, missing, good]
    result = run(inputs + ["--model", regression_model, "-o", out])
    assert result.exit_code == 1
    cat = read_catalog(out)
    assert len(cat) == len(inputs)
    assert list(cat["STATUS"]) == ["ok", "failed", "failed", "failed", "failed", "failed", "failed", "ok"]
    for row, path in zip(cat[1:7], inputs[1:7]):
        assert str(path) in row["MESSAGE"] and row["ZWARN"] & ZWarn.BAD_INPUT and np.isnan(row["Z"])
    assert cat["Z"][0] == pytest.approx(cat["Z"][7])
    assert result.output.count("failed:") == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_list_files_globs_and_output_formats(tmp_path, regression_model):
    dr16 = require_shared("sdss", "dr16")
    files = sorted(dr16.glob("spec-9367-*.fits"))
    listing = tmp_path / "inputs.txt"
    listing.write_text("# my spectra\n" + "\n".join(map(str, files[:4])) + "\n")
    for suffix in (".fits", ".csv", ".parquet"):
        out = tmp_path / f"cat{suffix}"
        result = run([f"@{listing}", str(dr16 / "spec-9367-57758-05*.fits"), "-m", regression_model, "-o", out,
                      "--quiet"])
        assert result.exit_code == 0, result.output
        cat = read_catalog(out)
        assert len(cat) == 4 + 2
        assert np.all(np.isfinite(np.asarray(cat["Z"], float)))
        assert cat.meta["MODEL"] == "tiny-linear"


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model.onnx"], "model file not found"),
    (["-o", "cat.txt"], "unknown catalog format"),
    (["--device", "gpu"], "Invalid value"),
])
def test_usage_errors_exit_2(tmp_path, regression_model, args, message, monkeypatch):
    spec = require_shared("sdss", "dr16", "spec-3655-55240-0026.fits")
    base = [spec] + (["--model", regression_model] if "--model" not in args else [])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(run_command, [str(a) for a in base + args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_non_fnet_onnx_file_is_refused_with_the_reason(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    spec = require_shared("sdss", "dr16", "spec-3655-55240-0026.fits")
    result = run([spec, "--model", path, "-o", tmp_path / "c.fits"])
    assert result.exit_code == 2 and "fnet.grid" in result.output
