"""Class heads (issue #9) on the runtime side: contract version 2, the SPECTYPE / P_<CLASS> columns only for
models that have one, ZWARN CLASS_UNCERTAIN, the FFT backend on a two-output graph, and the LAMOST identifiers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from conftest import require_shared
from fnet.cli import EXIT_USAGE, run_command
from fnet.runtime.backends import open_backend
from fnet.runtime.catalog import (CLASS_COLUMNS, COLUMNS, catalog_columns, class_columns, header_classes, make_row,
                                  read_catalog, write_catalog)
from fnet.runtime.errors import ModelPackageError
from fnet.runtime.heads import decode, softmax
from fnet.runtime.journal import JOURNAL_VERSION, RunJournal, journal_paths, run_fingerprint
from fnet.runtime.model_package import (CONTRACT_VERSION, SUPPORTED_CONTRACTS, build_metadata, file_sha256,
                                        load_model_package)
from fnet.runtime.pipeline import Predictor, run_catalog
from fnet.runtime.preprocess import prepare_spectra
from fnet.runtime.readers import read_spectra
from fnet.runtime.spectrum import typed_value
from fnet.runtime.zwarn import ZWarn
from tiny_models import PAPER_GRID, linear_weights, make_tiny_model

ZBINS = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}
CLASSES = ["QSO", "STAR", "GALAXY"]
CLASS_HEAD = {**ZBINS, "classes": CLASSES, "class_output": "class_logits"}
MIN_CLASS_PROB = 0.8
CLASS_SCALE = 3.0  # logits spread enough that some spectra are sure of their class and some are not


@pytest.fixture(scope="module")
def class_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "class.onnx", CLASS_HEAD, class_scale=CLASS_SCALE,
                           quality={"min_class_prob": MIN_CLASS_PROB})


@pytest.fixture(scope="module")
def old_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "old.onnx", ZBINS)


@pytest.fixture(scope="module")
def dr16_files() -> list[Path]:
    return sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:24]


def run(args: list) -> object:
    return CliRunner().invoke(run_command, [str(a) for a in args], catch_exceptions=False)


def contract(path: Path) -> str:
    return load_model_package(path).metadata["fnet.contract_version"]


# contract versions ---------------------------------------------------------------------------------------


def test_contract_2_is_written_only_for_a_class_head(class_model, old_model):
    assert CONTRACT_VERSION == "2" and SUPPORTED_CONTRACTS == ("1", "2")
    common = dict(model_name="m", model_version="1", architecture="a", grid=PAPER_GRID,
                  normalisation={"scheme": "ivar_unit_norm"}, z_range=(0.0, 7.0))
    assert build_metadata(head=CLASS_HEAD, **common)["fnet.contract_version"] == "2"
    assert build_metadata(head=ZBINS, **common)["fnet.contract_version"] == "1"  # older runtimes still read it
    assert build_metadata(head=ZBINS, quality={"min_class_prob": 0.5}, **common)["fnet.contract_version"] == "2"
    assert contract(class_model) == "2" and contract(old_model) == "1"
    package = load_model_package(class_model)
    assert package.head["classes"] == CLASSES and package.quality["min_class_prob"] == MIN_CLASS_PROB
    assert load_model_package(old_model).quality["min_class_prob"] == 0.9  # the default, unused without classes


def test_contract_1_cannot_carry_a_class_head(tmp_path):
    path = make_tiny_model(tmp_path / "liar.onnx", CLASS_HEAD, metadata={"fnet.contract_version": "1"})
    with pytest.raises(ModelPackageError, match="contract version '2'") as err:
        load_model_package(path)
    assert str(path) in str(err.value)
    path = make_tiny_model(tmp_path / "q.onnx", ZBINS, quality={"min_class_prob": 0.5},
                           metadata={"fnet.contract_version": "1"})
    with pytest.raises(ModelPackageError, match="min_class_prob"):
        load_model_package(path)
    path = make_tiny_model(tmp_path / "v3.onnx", ZBINS, metadata={"fnet.contract_version": "3"})
    with pytest.raises(ModelPackageError, match="not supported"):
        load_model_package(path)


def test_a_class_head_without_its_graph_output_is_refused(tmp_path):
    path = make_tiny_model(tmp_path / "no-output.onnx", CLASS_HEAD, class_graph=False)
    with pytest.raises(ModelPackageError, match="'class_logits' is not a graph output") as err:
        load_model_package(path)
    assert str(path) in str(err.value)
    two = {**CLASS_HEAD, "classes": ["QSO", "STAR"]}  # the graph gives 3 logits, the metadata names 2 classes
    path = make_tiny_model(tmp_path / "width.onnx", CLASS_HEAD, metadata={"fnet.head": json.dumps(two)})
    with pytest.raises(ModelPackageError, match="'class_logits' gives 3 values per spectrum"):
        load_model_package(path)


def test_classes_without_a_catalog_column_and_bad_thresholds_are_refused(tmp_path):
    path = make_tiny_model(tmp_path / "bal.onnx", {**CLASS_HEAD, "classes": ["QSO", "BAL", "STAR"]})
    with pytest.raises(ModelPackageError, match=r"\['BAL'\] have no catalog column"):
        load_model_package(path)
    path = make_tiny_model(tmp_path / "q.onnx", CLASS_HEAD, quality={"min_class_prob": 1.5})
    with pytest.raises(ModelPackageError, match="min_class_prob must be a number in"):
        load_model_package(path)


# catalog columns -----------------------------------------------------------------------------------------


def test_class_columns_are_chosen_from_the_classes():
    assert set(CLASS_COLUMNS) <= set(COLUMNS)
    plain = catalog_columns()
    assert not set(plain) & set(CLASS_COLUMNS) and len(plain) == len(COLUMNS) - len(CLASS_COLUMNS)
    assert catalog_columns(CLASSES) == list(COLUMNS)
    assert [c for c in catalog_columns(["STAR", "QSO"]) if c in CLASS_COLUMNS] == ["SPECTYPE", "P_QSO", "P_STAR"]
    assert class_columns(CLASSES) == {"QSO": "P_QSO", "STAR": "P_STAR", "GALAXY": "P_GALAXY"}
    assert header_classes({"CLASSES": "QSO,STAR,GALAXY"}) == CLASSES and header_classes({}) == []
    with pytest.raises(ValueError, match="no catalog column"):
        catalog_columns(["QSO", "AGN"])


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_an_old_package_writes_no_class_columns(tmp_path, old_model, dr16_files, suffix):
    out = tmp_path / f"cat{suffix}"
    result = run([*dr16_files[:6], "-m", old_model, "-o", out, "-q"])
    assert result.exit_code == 0, result.output
    cat = read_catalog(out)
    assert list(cat.colnames) == catalog_columns()
    assert not set(cat.colnames) & set(CLASS_COLUMNS) and "CLASSES" not in cat.meta
    assert np.all(cat["STATUS"] == "ok") and np.all((np.asarray(cat["ZWARN"]) & ZWarn.CLASS_UNCERTAIN) == 0)


def _check_class_catalog(cat, threshold: float) -> np.ndarray:
    """The class columns of a class-head catalog obey their definitions; returns max P of the ok rows."""
    assert list(cat.colnames) == catalog_columns(CLASSES) and header_classes(cat.meta) == CLASSES
    ok = np.asarray(cat["STATUS"] == "ok")  # astropy's comparison: FITS text columns are bytes
    spectype = np.array([str(t) for t in cat["SPECTYPE"]])
    p = np.stack([np.asarray(cat[f"P_{c}"], dtype=np.float64) for c in CLASSES], axis=1)
    assert np.allclose(p[ok].sum(axis=1), 1.0, atol=1e-6)
    assert list(spectype[ok]) == [CLASSES[k] for k in p[ok].argmax(axis=1)]
    uncertain = (np.asarray(cat["ZWARN"]) & ZWarn.CLASS_UNCERTAIN) != 0
    assert np.array_equal(uncertain[ok], p[ok].max(axis=1) < threshold)
    assert (~ok).any() and np.all(np.isnan(p[~ok])) and np.all(spectype[~ok] == "")
    return p[ok].max(axis=1)


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_a_class_package_fills_spectype_and_probabilities(tmp_path, class_model, dr16_files, suffix):
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"not a FITS file")
    out = tmp_path / f"cat{suffix}"
    result = run([*dr16_files, broken, "-m", class_model, "-o", out, "-q", "-b", "5"])
    assert result.exit_code == 1, result.output  # the broken file: one failed row
    cat = read_catalog(out)
    assert cat.meta["CLASSES"] == "QSO,STAR,GALAXY" and len(cat) == len(dr16_files) + 1
    best = _check_class_catalog(cat, MIN_CLASS_PROB)
    assert (best < MIN_CLASS_PROB).any() and (best >= MIN_CLASS_PROB).any()  # both cases are exercised
    if suffix == ".fits":
        assert fits.getheader(out, "FNET")["ZWB8"] == "CLASS_UNCERTAIN"
    # the probabilities are the softmax of the class logits the linear graph defines, recomputed with numpy
    package = load_model_package(class_model)
    wc, bc = linear_weights(package.grid.npix, 3, seed=1)
    spectra = [read_spectra(f)[0] for f in dr16_files[:3]]
    x = prepare_spectra(spectra, package.grid, package.normalisation).x.astype(np.float64)
    expected = softmax(CLASS_SCALE * (x @ wc.astype(np.float64) + bc))
    got = np.stack([np.asarray(cat[f"P_{c}"][:3], dtype=np.float64) for c in CLASSES], axis=1)
    assert np.allclose(got, expected, atol=1e-5)


def test_non_finite_class_logits_give_nan_probabilities_and_the_bit():
    decoded = decode({"logits": np.zeros((2, 64)), "class_logits": np.array([[5.0, 0, 0], [np.nan, 0, 0]])},
                     CLASS_HEAD)
    assert list(decoded.spectype()) == ["QSO", ""] and np.isnan(decoded.p_class[1]).all()
    from fnet.runtime.zwarn import compute_zwarn

    zwarn = compute_zwarn(coverage=np.ones(2), sn_median=np.full(2, 10.0), ivar_known=np.ones(2, bool),
                          z=decoded.z, z_err=np.full(2, 1e-3), z_range=(0.0, 7.0),
                          quality={"min_coverage": 0.5, "min_sn_median": 1.0, "max_dv_err_kms": 1e9,
                                   "max_secondary_mass": 1.0, "min_class_prob": 0.9}, p_class=decoded.p_class)
    assert [bool(w & ZWarn.CLASS_UNCERTAIN) for w in zwarn] == [False, True]


def test_the_python_api_catalog_has_the_class_columns(tmp_path, class_model, old_model, dr16_files):
    for model, classes in ((class_model, CLASSES), (old_model, [])):
        package = load_model_package(model)
        catalog, _ = run_catalog([str(f) for f in dr16_files[:4]], package, open_backend(package, device="cpu"))
        assert header_classes(catalog.header) == classes
        table = read_catalog(catalog.write(tmp_path / f"{model.stem}.csv"))
        assert list(table.colnames) == catalog_columns(classes)


def test_explicit_columns_and_rows_without_class_keys(tmp_path):
    rows = [make_row(dict(SOURCE="a.fits", ROW=0, Z=1.0, STATUS="ok"))]
    for row in rows:  # rows from an older journal line carry no class keys: a classless catalog never reads them
        for name in CLASS_COLUMNS:
            del row[name]
    for suffix in (".fits", ".csv", ".parquet"):
        table = read_catalog(write_catalog(tmp_path / f"c{suffix}", lambda: iter(rows), {"FNETVER": "t"}))
        assert list(table.colnames) == catalog_columns() and str(table["DESIG"][0]) == ""
    table = read_catalog(write_catalog(tmp_path / "few.csv", lambda: iter(rows), {}, columns=["SOURCE", "Z"]))
    assert list(table.colnames) == ["SOURCE", "Z"]
    with pytest.raises(KeyError, match="unknown catalog columns"):
        write_catalog(tmp_path / "x.csv", lambda: iter(rows), {}, columns=["SOURCE", "REDSHIFT"])


# resume --------------------------------------------------------------------------------------------------


def test_resume_of_a_class_run_gives_the_clean_catalog(tmp_path, class_model, dr16_files):
    clean, resumed = tmp_path / "clean.fits", tmp_path / "resumed.fits"
    assert run([*dr16_files, "-m", class_model, "-o", clean, "-q"]).exit_code == 0
    # a run killed after 10 inputs: its journal, written by the same pipeline
    package = load_model_package(class_model)
    predictor = Predictor(package, open_backend(package, device="cpu"))
    fingerprint = run_fingerprint([str(f) for f in dr16_files], file_sha256(class_model), None)
    journal = RunJournal(resumed, fingerprint)
    for i, f in enumerate(dr16_files[:10]):
        rows = predictor.rows(read_spectra(f))
        journal.add(i, [r for r, _ in rows], [p for _, p in rows])
    journal.close()
    result = run([*dr16_files, "-m", class_model, "-o", resumed, "-q", "--resume"])
    assert result.exit_code == 0 and "resuming: 10 of 24" in result.output
    a, b = read_catalog(clean), read_catalog(resumed)
    assert a.colnames == b.colnames == catalog_columns(CLASSES) and b.meta["NRESUMED"] == 10
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_a_journal_of_another_fnet_version_is_refused(tmp_path, old_model, dr16_files):
    out = tmp_path / "c.fits"
    fingerprint = run_fingerprint([str(f) for f in dr16_files[:2]], file_sha256(old_model), None)
    journal_paths(out)[0].write_text(json.dumps({"fnet_run_journal": {**fingerprint, "journal": 1}}) + "\n")
    assert JOURNAL_VERSION != 1
    result = run([*dr16_files[:2], "-m", old_model, "-o", out, "--resume"])
    assert result.exit_code == EXIT_USAGE and "another fnet version" in result.output


def test_a_ray_run_writes_the_same_class_columns(tmp_path, class_model, dr16_files):
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'fnet-qso[ray]')")
    single, ray = tmp_path / "single.fits", tmp_path / "ray.fits"
    assert run([*dr16_files[:8], "-m", class_model, "-o", single, "-q", "--threads", "1"]).exit_code == 0
    result = run([*dr16_files[:8], "-m", class_model, "-o", ray, "-q", "--threads", "1", "--ray", "local",
                  "--ray-actors", "1"])
    assert result.exit_code == 0, result.output
    a, b = read_catalog(single), read_catalog(ray)
    assert a.colnames == b.colnames == catalog_columns(CLASSES)
    for name in CLASS_COLUMNS + ("ZWARN", "Z"):
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name


# the FFT backend -----------------------------------------------------------------------------------------


def test_the_fft_backend_runs_the_two_output_graph_like_onnx_runtime(class_model, dr16_files):
    package = load_model_package(class_model)
    spectra = [s for f in dr16_files[:8] for s in read_spectra(f)]
    x = prepare_spectra(spectra, package.grid, package.normalisation).x
    ort = open_backend(package, device="cpu", backend="onnxruntime").run(x)
    fft = open_backend(package, device="cpu", backend="fft").run(x)
    assert set(fft) == set(ort) == {"logits", "class_logits"}
    assert fft["class_logits"].shape == (len(x), 3)
    a, b = decode(ort, package.head), decode(fft, package.head)
    assert np.allclose(a.p_class, b.p_class, atol=1e-5) and list(a.spectype()) == list(b.spectype())
    assert np.allclose(a.z, b.z, atol=1e-5)


# LAMOST identifiers --------------------------------------------------------------------------------------


def test_every_lamost_file_gives_its_identifiers():
    files = sorted(require_shared("lamost", "dr1").glob("*.fits"))
    assert len(files) > 100
    for path in files:
        header = fits.getheader(path)
        (spec,) = read_spectra(path)
        assert spec.meta["DESIG"] == header["DESIG"].strip() and spec.meta["DESIG"].startswith("LAMOST J")
        assert spec.meta["PLANID"] == header["PLANID"].strip() and spec.meta["SPID"] == header["SPID"]
        assert spec.meta["FIBERID"] == header["FIBERID"]
        assert spec.meta.get("OBSID") == header.get("OBSID")  # DR1 headers have none; DR2 and later do


def test_lamost_identifiers_reach_the_catalog(tmp_path, old_model):
    files = sorted(require_shared("lamost", "dr1").glob("*.fits"))[:5]
    later = tmp_path / "spec-dr5-like.fits"  # a DR2+ header carries the archive's OBSID
    shutil.copy(files[0], later)
    with fits.open(later, mode="update") as hdul:
        hdul[0].header["OBSID"] = (101001, "Unique number ID of this spectrum")
    out = tmp_path / "lamost.csv"
    result = run([*files, later, "-m", old_model, "-o", out, "-q"])
    assert result.exit_code in (0, 1), result.output
    cat = read_catalog(out)
    for i, path in enumerate([*files, later]):
        header = fits.getheader(path)
        assert str(cat["DESIG"][i]) == header["DESIG"] and str(cat["PLANID"][i]) == header["PLANID"].strip()
        assert int(cat["SPID"][i]) == header["SPID"] and int(cat["FIBERID"][i]) == header["FIBERID"]
        assert int(cat["OBSID"][i]) == header.get("OBSID", -1)
        assert (float(cat["RA"][i]), float(cat["DEC"][i])) == pytest.approx((header["RA"], header["DEC"]))
    from fnet.report.command import _ident
    from fnet.report.select import load_catalog

    report = load_catalog(out)  # fnet-report names a LAMOST object by OBSID, else by its designation
    assert _ident(report, 0) == fits.getheader(files[0])["DESIG"] and _ident(report, len(files)) == "OBSID 101001"


def test_text_identifiers_are_cleaned():
    assert typed_value("DESIG", b"LAMOST J000000.00+000000.0  ") == ("LAMOST J000000.00+000000.0", None)
    assert typed_value("PLANID", 6212) == ("6212", None)
    assert typed_value("PLANID", 1.5)[0] is None and typed_value("DESIG", "x" * 100)[0] is None
    assert typed_value("DESIG", "a\nb")[0] is None
    assert typed_value("OBSID", "101001") == (101001, None) and typed_value("OBSID", -3)[0] is None
