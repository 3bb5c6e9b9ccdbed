"""fnet-run --priors: redrock's prior file, loaded and evaluated by redrock's own Priors class (redrock 0.21.0).

redrock's reader is desihub/redrock py/redrock/priors.py (see fnet/runtime/priors.py for what it does with
the file). Its SDSS TARGETID rule lives in redrock/external/boss.py, which imports desispec (not on PyPI):
the two small functions are taken from that file's source and run as they are.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from conftest import require_shared
from fnet.cli import run_command
from fnet.runtime.catalog import Catalog, read_catalog
from fnet.runtime.constants import C_KMS
from fnet.runtime.priors import (DEFAULT_FLOOR_KMS, NO_ERR_KMS, TOPHAT_HALF_WIDTH_SIGMAS, WIDEN_KMS, main,
                                 sdss_targetid, unpack_sdss_targetid, write_priors)
from fnet.runtime.zwarn import ZWarn

Priors = pytest.importorskip("redrock.priors", reason="redrock is in the test extra").Priors
DESI_COADDS = ("coadd-main-dark-9144.fits", "coadd-1-80693-thru20210204.fits", "coadd-4-80613-thru20210324.fits",
               "test_coadd.fits")  # the last has no FIBERMAP, so no TARGETID


def fnet_run(*args) -> object:
    return CliRunner().invoke(run_command, [str(a) for a in args] + ["--backend", "onnxruntime", "--threads", "1",
                                                                      "-q"], catch_exceptions=False)


def load(path: Path):
    with fits.open(path) as h:
        return h["PRIORS"].data.copy(), dict(h["PRIORS"].header)


def floor_dz(z) -> np.ndarray:
    return (1 + np.asarray(z)) * DEFAULT_FLOOR_KMS / C_KMS


@pytest.fixture(scope="module")
def desi_run(tmp_path_factory):
    desi = require_shared("desi")
    out = tmp_path_factory.mktemp("desi")
    result = fnet_run(*(desi / n for n in DESI_COADDS), "-o", out / "cat.fits", "--priors", out / "priors.fits")
    assert result.exit_code in (0, 1), result.output  # test_coadd.fits has a spectrum without data
    return out / "cat.fits", out / "priors.fits", result.output


def test_desi_priors_are_what_redrock_reads_and_evaluates(desi_run):
    catalog, priors_path, output = desi_run
    cat = read_catalog(catalog)
    data, header = load(priors_path)
    good = (cat["STATUS"] == "ok") & (cat["ZWARN"] == 0) & (cat["TARGETID"] >= 0)
    assert good.sum() >= 7  # the 7 DESI quasars (and the galaxy); test_coadd.fits rows have no id
    assert list(data["TARGETID"]) == list(cat["TARGETID"][good])  # the catalog's TARGETIDs, in catalog order
    assert np.array_equal(data["Z"], cat["Z"][good])
    assert np.allclose(data["SIGMA"], np.maximum(cat["Z_ERR"][good], floor_dz(cat["Z"][good])), rtol=1e-12)
    assert np.all(data["SIGMA"] >= floor_dz(data["Z"]) * (1 - 1e-12))  # the floor applies
    assert set(data["FUNCTION"]) == {"gaussian"}
    assert header["NCATROW"] == len(cat) == sum(header[k] for k in ("NPRIOR", "NFAILED", "NFLAGGED", "NNOID",
                                                                     "NDUP", "NCONFLCT"))
    assert header["NNOID"] + header["NFLAGGED"] + header["NFAILED"] >= 25  # test_coadd.fits rows: no TARGETID
    assert f"{len(data)} targets" in output

    prior = Priors(str(priors_path))  # redrock's own reader
    for tid, z, s in zip(data["TARGETID"], data["Z"], data["SIGMA"]):
        chi2 = prior.eval(tid, np.array([z, z + s, z - 2 * s, z + 0.1 * (1 + z)]))
        assert chi2[0] == 0 and chi2[1] == pytest.approx(1) and chi2[2] == pytest.approx(4)
        assert chi2[3] > 100  # a line confusion far away is heavily penalised ...
        assert np.exp(-chi2 / 2)[0] == 1 and np.exp(-chi2 / 2)[3] < 1e-20  # ... as a probability: max at Z, ~0 far
    # a target without a prior row is left free by redrock (chi2 0 everywhere): every flagged or failed row
    missing = [int(t) for t in cat["TARGETID"][(cat["TARGETID"] >= 0) & ~good]] + [1]  # 1: no such target
    assert 1 not in set(data["TARGETID"].tolist())
    assert all(np.all(np.asarray(prior.eval(t, np.array([0.4, 2.0]))) == 0.0) for t in missing)


def _coadd_targets(path: Path, arms: str):
    """redrock Targets from a DESI coadd (what rrdesi's desispec-based reader gives)."""
    import scipy.sparse
    from redrock.targets import DistTargetsCopy, Spectrum, Target

    targets = []
    with fits.open(path, memmap=False) as h:
        for i, tid in enumerate(h["FIBERMAP"].data["TARGETID"]):
            spectra = []
            for arm in arms:
                res = h[f"{arm}_RESOLUTION"].data[i].astype(np.float64)
                offsets = np.arange(res.shape[0] // 2, -(res.shape[0] // 2) - 1, -1)
                ivar = np.where(h[f"{arm}_MASK"].data[i] != 0, 0.0, h[f"{arm}_IVAR"].data[i].astype(np.float64))
                spectra.append(Spectrum(h[f"{arm}_WAVELENGTH"].data.astype(np.float64),
                                        h[f"{arm}_FLUX"].data[i].astype(np.float64), ivar,
                                        scipy.sparse.dia_matrix((res, offsets), shape=(res.shape[1],) * 2),
                                        band=arm.lower()))
            targets.append(Target(int(tid), spectra))
    return DistTargetsCopy(targets)


@pytest.mark.slow
def test_redrock_with_fnet_priors_avoids_a_line_confusion(desi_run, capsys):
    """B arm only (3600-5800 A): redrock alone puts 39632936152072660 (fuji QSO catalog z 1.937) at z 2.647."""
    from redrock.templates import DistTemplate, Template
    from redrock.zfind import zfind

    templates = [require_shared("templates", f"rrtemplate-QSO-{s}-v1.1.fits") for s in ("LOZ", "HIZ")]
    coadd = require_shared("desi", DESI_COADDS[0])

    def best(priors):
        targets = _coadd_targets(coadd, "B")
        dist = [DistTemplate(Template(str(t)), targets.wavegrids()) for t in templates]
        _, fit = zfind(targets, dist, mp_procs=1, priors=priors)
        return {int(r["targetid"]): float(r["z"]) for r in fit[fit["znum"] == 0]}

    plain, with_prior = best(None), best(str(desi_run[1]))
    capsys.readouterr()
    dv = lambda z: C_KMS * abs(z - 1.93743) / 2.93743  # noqa: E731
    assert dv(plain[39632936152072660]) > 30000
    assert dv(with_prior[39632936152072660]) < 6000  # the field's threshold for a right redshift
    assert abs(with_prior[39632936152073654] - plain[39632936152073654]) < 1e-4  # a clear fit is left alone


def _redrock_boss_rule():
    """platemjdfiber2targetid / targetid2platemjdfiber from redrock/external/boss.py's own source."""
    spec = importlib.util.find_spec("redrock")
    source = (Path(spec.submodule_search_locations[0]) / "external" / "boss.py").read_text()
    wanted = [n for n in ast.parse(source).body
              if isinstance(n, ast.FunctionDef) and n.name in ("platemjdfiber2targetid", "targetid2platemjdfiber")]
    namespace: dict = {}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "boss.py", "exec"), namespace)
    return namespace["platemjdfiber2targetid"], namespace["targetid2platemjdfiber"]


def test_sdss_targetid_is_redrocks_boss_rule_and_round_trips():
    pack, unpack = _redrock_boss_rule()
    plate = np.array([266, 3655, 10656, 15000, 1])
    mjd = np.array([51602, 55240, 58163, 61000, 99999])
    fiber = np.array([13, 258, 1000, 9999, 1])
    ids = sdss_targetid(plate, mjd, fiber)
    assert np.array_equal(ids, pack(plate, mjd, fiber))
    assert all(np.array_equal(a, b) for a, b in zip(unpack_sdss_targetid(ids), (plate, mjd, fiber)))
    assert all(np.array_equal(a, b) for a, b in zip(unpack(ids), (plate, mjd, fiber)))
    assert len(set(ids.tolist())) == len(ids)
    assert list(sdss_targetid([-1, 3655, 3655, 3655], [55240, -1, 100000, 55240], [1, 1, 1, 0])) == [-1] * 4


def test_simulated_sdss_spec_files_get_the_packed_targetid(tmp_path):
    from fnet.simulate import write_simulated_set

    empty = tmp_path / "no_data"
    empty.mkdir()
    write_simulated_set(tmp_path / "sim", n=6, seed=11, source="parametric", data_dir=empty, z_range=(1.0, 3.0))
    spectra = tmp_path / "sim" / "spec-*.fits"  # not truth.fits
    result = fnet_run(spectra, "-o", tmp_path / "cat.fits", "--priors", tmp_path / "p.fits", "--priors-flagged",
                      "widen")
    assert result.exit_code == 0, result.output
    cat = read_catalog(tmp_path / "cat.fits")
    assert np.all(cat["TARGETID"] == -1) and np.all(cat["STATUS"] == "ok")
    data, header = load(tmp_path / "p.fits")
    assert header["NPRIOR"] == len(data) == len(cat)  # --priors-flagged widen: every ok row gets a prior
    assert list(data["TARGETID"]) == list(sdss_targetid(cat["PLATE"], cat["MJD"], cat["FIBERID"]))
    plate, mjd, fiber = unpack_sdss_targetid(data["TARGETID"])
    assert list(plate) == list(cat["PLATE"]) and list(mjd) == list(cat["MJD"]) and list(fiber) == list(cat["FIBERID"])
    wide = data["FNET_ZWARN"] != 0
    z = data["Z"]
    assert np.all(data["SIGMA"][wide] >= (1 + z[wide]) * WIDEN_KMS / C_KMS * (1 - 1e-12))
    assert header["NWIDENED"] == wide.sum()
    prior = Priors(str(tmp_path / "p.fits"))
    for tid, zz in zip(data["TARGETID"], z):
        assert prior.eval(tid, np.array([zz]))[0] == 0


def _rows():
    ok = {"STATUS": "ok", "ZWARN": 0}
    return [
        {**ok, "TARGETID": 11, "Z": 2.0, "Z_ERR": 1e-4},  # 0 Z_ERR below the floor
        {**ok, "TARGETID": 12, "Z": 2.0, "Z_ERR": 0.05},  # 1 Z_ERR above it
        {"STATUS": "failed", "ZWARN": 1, "TARGETID": 13, "MESSAGE": "x"},  # 2 failed
        {**ok, "ZWARN": int(ZWarn.LOW_SN), "TARGETID": 14, "Z": 1.0, "Z_ERR": 0.01},  # 3 flagged
        {**ok, "ZWARN": int(ZWarn.Z_OUT_OF_RANGE | ZWarn.LOW_SN), "TARGETID": 15, "Z": 6.9, "Z_ERR": 0.1},  # 4
        {**ok, "Z": 1.5, "Z_ERR": 0.01},  # 5 no identifier
        {**ok, "PLATE": 3655, "MJD": 55240, "FIBERID": 258, "Z": 1.5, "Z_ERR": float("nan")},  # 6 SDSS, no Z_ERR
        {**ok, "TARGETID": 16, "Z": 3.0, "Z_ERR": 0.03},  # 7 duplicates that agree: keep the sharper (8)
        {**ok, "TARGETID": 16, "Z": 3.01, "Z_ERR": 0.015},  # 8
        {**ok, "TARGETID": 17, "Z": 1.0, "Z_ERR": 0.01},  # 9 duplicates that disagree: none
        {**ok, "TARGETID": 17, "Z": 2.5, "Z_ERR": 0.01},  # 10
        {**ok, "TARGETID": 2**60 + 1, "Z": 0.5, "Z_ERR": 0.001},  # 11 a DESI-sized id (> 2**53) stays exact
    ]


@pytest.mark.parametrize("flagged", ["omit", "widen"])
def test_failed_flagged_duplicate_and_floor_rules(tmp_path, flagged):
    cat = Catalog()
    for row in _rows():
        cat.add(**row)
    summary = write_priors(cat, tmp_path / "p.fits", flagged=flagged)
    data, header = load(tmp_path / "p.fits")
    ids = list(data["TARGETID"])
    sdss = 3655 * 10**9 + 55240 * 10**4 + 258
    expected = [11, 12] + ([14] if flagged == "widen" else []) + [sdss, 16, 2**60 + 1]
    assert ids == expected
    sigma = dict(zip(ids, data["SIGMA"]))
    assert sigma[11] == pytest.approx(3 * DEFAULT_FLOOR_KMS / C_KMS) and sigma[12] == 0.05
    assert sigma[sdss] == pytest.approx(2.5 * NO_ERR_KMS / C_KMS)
    assert sigma[16] == 0.015 and dict(zip(ids, data["Z"]))[16] == 3.01
    if flagged == "widen":
        assert sigma[14] == pytest.approx(2 * WIDEN_KMS / C_KMS) and summary.widened == 1
    assert (summary.failed, summary.flagged, summary.no_id, summary.duplicate, summary.conflicting) == (
        1, 2 if flagged == "omit" else 1, 1, 1, 2)
    assert summary.n_rows == 12 == summary.written + summary.failed + summary.flagged + summary.no_id + \
        summary.duplicate + summary.conflicting
    assert header["PRFLAG"] == flagged and header["NPRIOR"] == len(ids)
    assert Priors(str(tmp_path / "p.fits")).eval(2**60 + 1, np.array([0.5]))[0] == 0


def test_lorentzien_and_tophat_as_redrock_evaluates_them(tmp_path, monkeypatch):
    cat = Catalog()
    for row in _rows():
        cat.add(**row)
    write_priors(cat, tmp_path / "l.fits", function="lorentzien")
    prior = Priors(str(tmp_path / "l.fits"))
    assert prior.eval(12, np.array([2.0, 2.05]))[0] == 0 and prior.eval(12, np.array([2.05]))[0] == pytest.approx(
        2 * np.log(2))
    write_priors(cat, tmp_path / "t.fits.gz", function="tophat")
    data, _ = load(tmp_path / "t.fits.gz")
    assert data["SIGMA"][list(data["TARGETID"]).index(12)] == pytest.approx(2 * TOPHAT_HALF_WIDTH_SIGMAS * 0.05)
    # redrock 0.21.0's tophat uses np.NaN, which numpy 2 removed: give it back to run redrock's own code
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)
    prior = Priors(str(tmp_path / "t.fits.gz"))
    grid = np.linspace(1.5, 2.5, 1001)
    inside = np.isfinite(prior.eval(12, grid)) & (prior.eval(12, grid) == 0)
    assert grid[inside].min() == pytest.approx(2.0 - 3 * 0.05, abs=2e-3)
    assert grid[inside].max() == pytest.approx(2.0 + 3 * 0.05, abs=2e-3)


def test_csv_parquet_and_fits_catalogs_give_the_same_priors(tmp_path):
    pytest.importorskip("pyarrow")
    cat = Catalog(header={"FNETVER": "0.1.0", "MODELSHA": "abc"})
    for row in _rows():
        cat.add(**row)
    tables = []
    for suffix in (".fits", ".csv", ".parquet", ".fits.gz"):
        cat.write(tmp_path / f"cat{suffix}")
        assert main([str(tmp_path / f"cat{suffix}"), "-o", str(tmp_path / f"p{suffix}.fits")]) == 0
        tables.append(load(tmp_path / f"p{suffix}.fits")[0])
    for t in tables[1:]:
        assert all(np.array_equal(t[c], tables[0][c]) for c in ("TARGETID", "Z", "SIGMA", "FUNCTION"))
    assert load(tmp_path / "p.fits.fits")[1]["MODELSHA"] == "abc"


def test_nothing_to_write_writes_nothing_and_removes_a_stale_file(tmp_path):
    good, bad = Catalog(), Catalog()
    good.add(STATUS="ok", ZWARN=0, TARGETID=5, Z=1.0, Z_ERR=0.01)
    bad.add(STATUS="failed", ZWARN=1, TARGETID=5, MESSAGE="unreadable")
    write_priors(good, tmp_path / "p.fits")
    assert (tmp_path / "p.fits").exists()
    summary = write_priors(bad, tmp_path / "p.fits")  # redrock cannot read an empty PRIORS table
    assert not summary.wrote_file and not (tmp_path / "p.fits").exists()
    assert "no priors file written" in summary.describe()


def test_priors_path_refusals_exit_2(tmp_path):
    spec = require_shared("sdss", "dr16", "spec-3655-55240-0258.fits")
    out = tmp_path / "cat.fits"
    other = tmp_path / "notes.fits"
    other.write_bytes(b"not mine")
    earlier = tmp_path / "earlier.fits"  # an fnet priors file, which may be replaced, but not when it is an input
    cat = Catalog()
    cat.add(STATUS="ok", ZWARN=0, TARGETID=5, Z=1.0, Z_ERR=0.01)
    write_priors(cat, earlier)
    for priors, why in ((out, "also the catalog"), (spec, "not an fnet priors file"), (earlier, "both an input"),
                        (other, "not an fnet priors file"), (tmp_path / "p.csv", "FITS"), (tmp_path, "folder")):
        result = fnet_run(spec, earlier, "-o", out, "--priors", priors)
        assert result.exit_code == 2, (priors, result.output)
        assert why in result.output and not out.exists()
    assert other.read_bytes() == b"not mine"


def test_a_priors_file_in_an_input_folder_is_not_read_as_an_input(tmp_path):
    dr16 = require_shared("sdss", "dr16")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "spec-3655-55240-0258.fits").write_bytes((dr16 / "spec-3655-55240-0258.fits").read_bytes())
    for _ in range(2):  # the second run finds the first run's priors file in its input folder
        result = fnet_run(folder, "-o", tmp_path / "cat.fits", "--priors", folder / "priors.fits")
        assert result.exit_code == 0, result.output
        assert len(read_catalog(tmp_path / "cat.fits")) == 1
    # a later run without --priors skips it too (no failed row for a file that is not spectra)
    result = fnet_run(folder, "-o", tmp_path / "cat2.fits")
    assert result.exit_code == 0, result.output
    cat = read_catalog(tmp_path / "cat2.fits")
    assert len(cat) == 1 and cat["STATUS"][0] == "ok"


def test_a_priors_write_failure_exits_3_and_resume_writes_both(tmp_path, monkeypatch):
    import fnet.runtime.priors as priors_module

    spec = require_shared("sdss", "dr16", "spec-3655-55240-0258.fits")
    real = priors_module.write_priors

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(priors_module, "write_priors", disk_full)
    result = fnet_run(spec, "-o", tmp_path / "cat.fits", "--priors", tmp_path / "p.fits")
    assert result.exit_code == 3 and "No space left" in result.output and "--resume" in result.output
    assert (tmp_path / "cat.fits").exists() and not (tmp_path / "p.fits").exists()
    monkeypatch.setattr(priors_module, "write_priors", real)
    result = fnet_run(spec, "-o", tmp_path / "cat.fits", "--priors", tmp_path / "p.fits", "--resume")
    assert result.exit_code == 0, result.output
    assert list(load(tmp_path / "p.fits")[0]["TARGETID"]) == [3655 * 10**9 + 55240 * 10**4 + 258]
