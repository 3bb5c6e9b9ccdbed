"""Survey readers on the real SDSS/BOSS/eBOSS and DESI files in ../shared/data."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import SHARED_DATA, require_shared
from fnet.runtime.errors import SpectrumReadError
from fnet.runtime.masks import HONOURED_AND_MASK_BITS, bit_value, sdss_good_pixels
from fnet.runtime.readers import FORMATS, NO_GOOD_PIXELS_NOTE, detect_format, read_spectra
from fnet.runtime.readers.sdss_plate import NO_IVAR_NOTE
from fnet.runtime.readers.fits_fast import read_columns

SDSS = SHARED_DATA / "sdss"
DESI = SHARED_DATA / "desi"
LAMOST = SHARED_DATA / "lamost"

# What each shared-data file is comes from the folders' own documentation, never from the reader under test:
# truth.csv where a folder has one (sdss/mixed, lamost/dr1), else the inventory tables of ../shared/data/README.md.
# File names prove nothing: sdss/mixed holds spectra named sdss1.fits or 1237652899686318136.fits.
_TRUTH_FORMATS = {"SDSS/BOSS spec": "sdss-spec", "SDSS DR7 spSpec": "sdss-spspec"}
_README_CATALOGS = {  # non-spectra files the README lists (catalogs, redrock output)
    "sdss/dr16/cat_for_clustering_plate3655.fits.gz", "sdss/dr16/spAll-plate3655.fits", "sdss/dr14-pk1d/DRQ_Pk1D.fits",
    "desi/redrock-4-80613-thru20210324.fits", "desi/QSO_cat_fuji_dark_healpix.fits.gz",
}
_README_SPECTRA = {  # sdss/formats and desi, one row each in the README tables
    "sdss/formats/spec-0266-51602-0013.fits": "sdss-spec", "sdss/formats/spec-0332-52367-0639.fits": "sdss-spec",
    "sdss/formats/spec-7338-56660-0733.fits": "sdss-spec", "sdss/formats/spec-4055-55359-0010.fits": "sdss-spec",
    "sdss/formats/spPlate-4055-55359-0020.fits": "sdss-spplate", "sdss/formats/spSpec-51993-0542-631.fit": "sdss-spspec",
    "desi/test_coadd.fits": "desi-coadd", "desi/coadd-4-80613-thru20210324.fits": "desi-coadd",
    "desi/coadd-main-dark-9144.fits": "desi-coadd", "desi/coadd-1-80693-thru20210204.fits": "desi-coadd",
}
# Real spectra documented as holding no usable data (kept in place by the reader, with a note).
EMPTY_SPECTRA = {("desi/test_coadd.fits", 11), ("sdss/mixed/spec-0269-51581-0003.fits", 0)}


def _truth_formats() -> dict[str, str | None]:
    """Relative path -> documented format, from the truth tables and the README inventory."""
    import csv

    known: dict[str, str | None] = {rel: None for rel in _README_CATALOGS}
    known.update(_README_SPECTRA)
    for folder in ("dr16", "dr14-pk1d"):  # README: every spec-* file in these folders is a BOSS spec file
        for p in (SDSS / folder).glob("spec-*.fits"):
            known[str(p.relative_to(SHARED_DATA))] = "sdss-spec"
    mixed = SDSS / "mixed" / "truth.csv"
    if mixed.exists():
        for row in csv.DictReader(mixed.open()):
            fmt = next((v for k, v in _TRUTH_FORMATS.items() if row["format"].startswith(k)), None)
            assert fmt, f"sdss/mixed/truth.csv: unknown format {row['format']!r}"
            known[f"sdss/mixed/{row['file']}"] = fmt
    lamost = LAMOST / "dr1" / "truth.csv"
    if lamost.exists():
        for row in csv.DictReader(lamost.open()):
            known[f"lamost/dr1/{row['file']}"] = "lamost"
    return known


TRUTH = _truth_formats() if SHARED_DATA.exists() else {}


def _expected_format(path: Path) -> str | None:
    """Format a shared-data file must be read as (None: not a spectra file)."""
    return TRUTH[str(path.relative_to(SHARED_DATA))]


ALL_FILES = sorted(
    p for p in [*SDSS.glob("**/*.fit*"), *DESI.glob("*.fit*"), *LAMOST.glob("**/*.fit*")]
    if p.is_file() and str(p.relative_to(SHARED_DATA)) in TRUTH
) if SHARED_DATA.exists() else []
SPECTRA_FILES = [p for p in ALL_FILES if _expected_format(p)]
OTHER_FILES = [p for p in ALL_FILES if not _expected_format(p)]
DR16_SPEC = [p for p in SPECTRA_FILES if p.parent.name == "dr16"]
PK1D_SPEC = [p for p in SPECTRA_FILES if p.parent.name == "dr14-pk1d"]
LAMOST_SPEC = [p for p in SPECTRA_FILES if _expected_format(p) == "lamost"]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(SHARED_DATA)) for p in paths]


# ---------------------------------------------------------------- every file


def test_shared_data_inventory():
    require_shared("sdss")
    assert len(DR16_SPEC) == 80 and len(PK1D_SPEC) == 8
    # every spectra-looking file on disk is documented somewhere, so none escapes the tests below
    on_disk = {str(p.relative_to(SHARED_DATA)) for p in [*SDSS.glob("**/*.fit*"), *DESI.glob("*.fit*"),
                                                          *LAMOST.glob("**/*.fit*")]}
    assert on_disk <= set(TRUTH), sorted(on_disk - set(TRUTH))
    assert {_expected_format(p) for p in SPECTRA_FILES} == set(FORMATS)


@pytest.mark.parametrize("path", SPECTRA_FILES, ids=_ids(SPECTRA_FILES))
def test_every_spectra_file_reads(path):
    spectra = read_spectra(path)
    assert spectra
    for s in spectra:
        assert s.format == _expected_format(path)
        assert s.source == str(path)
        n = len(s.loglam)
        assert n > 500 and len(s.flux) == len(s.ivar) == len(s.good) == n
        assert s.loglam.dtype == np.float64 and s.flux.dtype == np.float64 and s.good.dtype == bool
        assert np.all(np.diff(s.loglam) > 0)
        assert 3000 < s.wavelength[0] < s.wavelength[-1] < 11000
        if (str(path.relative_to(SHARED_DATA)), s.row) in EMPTY_SPECTRA:
            # a real empty fiber / a spectrum without data: kept in place, with a note (the run fails its row)
            assert not s.good.any() and NO_GOOD_PIXELS_NOTE in s.notes
            continue
        # LAMOST sets ivar = 0 wherever its AND mask is set: spec-55862-B6212_sp06-145 keeps 48 % of its pixels
        min_good = 0.4 if s.format == "lamost" else 0.5
        assert s.good.sum() > min_good * n and NO_GOOD_PIXELS_NOTE not in s.notes
        assert np.all(np.isfinite(s.flux[s.good])) and np.all(s.ivar[s.good] > 0)
        assert "Z" not in s.meta  # Z is the model's output, the pipeline's is PIPELINE_Z


@pytest.mark.parametrize("path", SPECTRA_FILES, ids=_ids(SPECTRA_FILES))
def test_detect_format_on_open_file(path):
    with fits.open(path, memmap=False) as hdul:
        assert detect_format(hdul) == _expected_format(path)


@pytest.mark.parametrize("path", OTHER_FILES, ids=_ids(OTHER_FILES))
def test_catalogs_are_unsupported_layouts(path):
    with pytest.raises(SpectrumReadError) as err:
        read_spectra(path)
    assert err.value.path == str(path)
    assert "unsupported layout" in err.value.problem
    assert "0 PRIMARY" in err.value.problem  # says which HDUs were found


def test_detection_is_by_content_not_name(tmp_path):
    spec = require_shared("sdss", "formats", "spec-4055-55359-0010.fits")
    fake = tmp_path / "foo.dat"
    shutil.copy(spec, fake)
    [s] = read_spectra(fake)
    assert s.format == "sdss-spec" and s.meta["FIBERID"] == 10
    # and a DESI coadd dressed up as an SDSS spec file is still DESI
    liar = tmp_path / "spec-0001-50000-0001.fits"
    shutil.copy(DESI / "coadd-main-dark-9144.fits", liar)
    assert [s.format for s in read_spectra(liar)] == ["desi-coadd"] * 2


def test_gzip_compressed_files_read_the_same(tmp_path):
    import gzip

    for rel in ["sdss/formats/spec-4055-55359-0010.fits", "sdss/formats/spSpec-51993-0542-631.fit"]:
        path = require_shared(*rel.split("/"))
        packed = tmp_path / (path.name + ".gz")
        packed.write_bytes(gzip.compress(path.read_bytes()))
        [a], [b] = read_spectra(packed), read_spectra(path)
        assert np.array_equal(a.loglam, b.loglam) and np.array_equal(a.flux, b.flux) and a.meta == b.meta


# ---------------------------------------------------------------- SDSS spec


def test_dr16_identifiers_match_file_names():
    require_shared("sdss", "dr16")
    for path in DR16_SPEC:
        plate, mjd, fiber = (int(x) for x in re.match(r"spec-(\d+)-(\d+)-(\d+)\.fits", path.name).groups())
        [s] = read_spectra(path)
        assert (s.meta["PLATE"], s.meta["MJD"], s.meta["FIBERID"]) == (plate, mjd, fiber), path.name
        assert isinstance(s.meta["PIPELINE_Z"], float) and s.meta["PIPELINE_CLASS"] in {"QSO", "GALAXY", "STAR"}
        assert -90 <= s.meta["DEC"] <= 90 and 0 <= s.meta["RA"] < 360


@pytest.mark.parametrize(
    "rel, flux_col, loglam_col",
    [("dr16/spec-3655-55240-0002.fits", "FLUX", "LOGLAM"), ("formats/spec-4055-55359-0010.fits", "flux", "loglam")],
    ids=["UPPER", "lower"],
)
def test_upper_and_lower_case_columns(rel, flux_col, loglam_col):
    path = require_shared("sdss", *rel.split("/"))
    with fits.open(path) as hdul:
        assert flux_col in hdul[1].columns.names and loglam_col in hdul[1].columns.names
        expected = hdul[1].data[flux_col].astype(np.float64)
        loglam = hdul[1].data[loglam_col].astype(np.float64)
    [s] = read_spectra(path)
    assert np.array_equal(s.flux, expected)
    # float32 loglam is snapped to the exact 1e-4 dex grid: within float32 rounding, exact multiples after
    assert np.max(np.abs(s.loglam - loglam)) < 3e-7
    assert np.array_equal(s.loglam, np.rint(s.loglam * 1e4) / 1e4)


def test_legacy_specobj_file_meta():
    path = require_shared("sdss", "formats", "spec-0266-51602-0013.fits")
    [s] = read_spectra(path)
    # the SPECOBJ column PLATEID is an id string ('299489402097264640'): PLATE must come from PLATE
    assert s.meta["PLATE"] == 266 and s.meta["MJD"] == 51602 and s.meta["FIBERID"] == 13
    assert s.meta["PIPELINE_CLASS"] == "GALAXY" and s.meta["PIPELINE_Z"] == pytest.approx(0.1213, abs=1e-4)
    assert s.meta["RA"] == pytest.approx(146.9341) and s.meta["DEC"] == pytest.approx(-0.67040397)


def test_fast_table_reader_agrees_with_astropy():
    require_shared("sdss")
    wanted = ("PLATE", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "CLASS", "Z", "ZWARNING", "SPECPRIMARY")
    for path in [SDSS / "formats/spec-0266-51602-0013.fits", SDSS / "formats/spec-7338-56660-0733.fits", DR16_SPEC[0], PK1D_SPEC[0]]:
        with fits.open(path, memmap=False) as hdul:
            fast = read_columns(hdul[2], wanted)
            slow = hdul[2].data
            for name in wanted:
                a, b = fast[name], np.asarray(slow[name])
                if b.dtype.kind == "U":
                    b = b.astype("S")
                assert np.array_equal(a, b), (path.name, name)


def test_meta_falls_back_to_primary_header(tmp_path):
    path = require_shared("sdss", "formats", "spec-4055-55359-0010.fits")
    with fits.open(path) as hdul:
        stripped = fits.HDUList([fits.PrimaryHDU(header=hdul[0].header), hdul[1].copy()])
        stripped.writeto(tmp_path / "coadd-only.fits")
    [s] = read_spectra(tmp_path / "coadd-only.fits")
    assert (s.meta["PLATE"], s.meta["MJD"], s.meta["FIBERID"]) == (4055, 55359, 10)
    assert s.meta["RA"] == pytest.approx(237.79181)  # PLUG_RA, not the boresight RA = 236.433204
    assert "PIPELINE_Z" not in s.meta


def test_badflat_spectrum_keeps_most_pixels():
    path = require_shared("sdss", "dr16", "spec-3655-55240-0258.fits")
    with fits.open(path) as hdul:
        and_mask = hdul[1].data["AND_MASK"].astype(np.int64)
    n = and_mask.size
    assert ((and_mask & bit_value("BADFLAT")) != 0).sum() == n - 12  # the pitfall is really there
    [s] = read_spectra(path)
    assert s.good.sum() > 0.95 * n
    assert "BADFLAT" not in HONOURED_AND_MASK_BITS


def test_mask_policy():
    flux = np.array([1.0, 1.0, 1.0, np.nan, 1.0, 1.0, 1.0])
    ivar = np.array([1.0, 1.0, 1.0, 1.0, 0.0, np.inf, 1.0])
    mask = np.array([0, bit_value("BADFLAT"), bit_value("BRIGHTSKY"), 0, 0, 0, bit_value("EMLINE")])
    assert sdss_good_pixels(flux, ivar, mask).tolist() == [True, True, False, False, False, False, True]
    assert sdss_good_pixels(flux, ivar, None).tolist() == [True, True, True, False, False, False, True]


# ---------------------------------------------------------------- spPlate / spSpec


def test_spplate_fiber10_is_row9_and_equals_spec_file():
    plate = read_spectra(require_shared("sdss", "formats", "spPlate-4055-55359-0020.fits"))
    [spec] = read_spectra(require_shared("sdss", "formats", "spec-4055-55359-0010.fits"))
    assert len(plate) == 20
    row = plate[9]
    assert row.row == 9 and row.meta["FIBERID"] == 10
    common, i, j = np.intersect1d(row.loglam, spec.loglam, assume_unique=True, return_indices=True)
    assert common.size == spec.loglam.size == 4605  # every spec pixel sits on the plate's wavelength grid
    assert np.array_equal(row.flux[i], spec.flux[j])
    others = [p.row for p in plate if np.array_equal(p.flux[i], spec.flux[j])]
    assert others == [9]


def test_spplate_without_ivar_hdu():
    plate = read_spectra(require_shared("sdss", "formats", "spPlate-4055-55359-0020.fits"))
    for s in plate:
        assert s.ivar_known is False and NO_IVAR_NOTE in s.notes
        assert np.array_equal(s.good, np.isfinite(s.flux)) and np.array_equal(s.ivar, s.good.astype(float))
        assert s.meta["PLATE"] == 4055 and s.meta["MJD"] == 55359 and s.meta["FIBERID"] == s.row + 1
        assert "RA" not in s.meta and "DEC" not in s.meta  # header RA/DEC is the boresight, not a fiber
    assert plate[0].loglam[0] == 3.5529 and np.allclose(np.diff(plate[0].loglam), 1e-4)


def test_spplate_with_ivar_mask_and_plugmap(tmp_path):
    path = require_shared("sdss", "formats", "spPlate-4055-55359-0020.fits")
    with fits.open(path) as hdul:
        primary = fits.PrimaryHDU(hdul[0].data, hdul[0].header)
    shape = primary.data.shape
    ivar = np.full(shape, 4.0, np.float32)
    ivar[3, :100] = 0
    and_mask = np.zeros(shape, np.int32)
    and_mask[:, 200:210] = bit_value("BRIGHTSKY")
    and_mask[:, 300:] |= bit_value("BADFLAT")
    plug = fits.BinTableHDU.from_columns([
        fits.Column("FIBERID", "J", array=np.arange(1, shape[0] + 1)),
        fits.Column("RA", "D", array=np.linspace(237.0, 238.0, shape[0])),
        fits.Column("DEC", "D", array=np.linspace(1.0, 2.0, shape[0])),
        fits.Column("OBJTYPE", "8A", array=["QSO"] * shape[0]),
    ])
    images = [fits.ImageHDU(ivar), fits.ImageHDU(and_mask), fits.ImageHDU(np.zeros(shape, np.int32)), fits.ImageHDU(np.ones(shape, np.float32))]
    fits.HDUList([primary, *images, plug]).writeto(tmp_path / "plate.fits")
    spectra = read_spectra(tmp_path / "plate.fits")
    s = spectra[3]
    assert s.ivar_known and not s.notes and s.ivar[150] == 4.0
    assert not s.good[:100].any() and not s.good[200:210].any() and s.good[300:].all()
    assert s.meta["RA"] == pytest.approx(237.0 + 3 / 19) and s.meta["OBJTYPE"] == "QSO" and s.meta["FIBERID"] == 4


def test_dr7_spspec():
    path = require_shared("sdss", "formats", "spSpec-51993-0542-631.fit")
    [s] = read_spectra(path)
    with fits.open(path) as hdul:
        image = hdul[0].data.astype(np.float64)
    sigma = image[2]
    assert s.format == "sdss-spspec" and len(s.loglam) == 3853
    assert s.loglam[0] == 3.5796 and s.wavelength[-1] == pytest.approx(9221.47, abs=0.01)
    assert np.array_equal(s.flux, image[0])
    assert np.allclose(s.ivar[sigma > 0], 1 / sigma[sigma > 0] ** 2) and np.all(s.ivar[sigma == 0] == 0)
    assert (sigma == 0).sum() == 40 and not s.good[sigma == 0].any()
    # bit 30 (spectro1d EMLINE) flags the emission lines themselves: they must stay usable
    emline = (image[3].astype(np.int64) & bit_value("EMLINE")) != 0
    assert emline.sum() > 200 and s.good[emline & (sigma > 0)].mean() > 0.9
    assert s.meta == {
        "PLATE": 542, "MJD": 51993, "FIBERID": 631, "RA": pytest.approx(117.99709), "DEC": pytest.approx(35.560681),
        "PIPELINE_Z": pytest.approx(2.2319), "PIPELINE_CLASS": "QSO",
    }


# ---------------------------------------------------------------- trimmed pk1d spectra


def test_pk1d_trimmed_spectra_show_their_partial_coverage():
    require_shared("sdss", "dr14-pk1d")
    assert len(PK1D_SPEC) == 8
    for path in PK1D_SPEC:
        [s] = read_spectra(path)
        assert len(s.loglam) == 710
        assert 3650 < s.wavelength[0] < 3800 and 4300 < s.wavelength[-1] < 4450
        assert s.good.sum() > 650
        assert s.meta["PIPELINE_Z"] > 2.4


# ---------------------------------------------------------------- DESI


def _arms(path: Path, row: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Per-arm wave, flux, ivar, bad straight from the file."""
    out = {}
    with fits.open(path) as hdul:
        for arm in "BRZ":
            flux = hdul[f"{arm}_FLUX"].data[row].astype(float)
            ivar = hdul[f"{arm}_IVAR"].data[row].astype(float)
            mask = hdul[f"{arm}_MASK"].data[row] if f"{arm}_MASK" in hdul else np.zeros(flux.size, int)
            out[arm] = (hdul[f"{arm}_WAVELENGTH"].data.astype(float), flux, ivar, (mask != 0) | ~(ivar > 0))
    return out


@pytest.mark.parametrize("name", ["coadd-1-80693-thru20210204.fits", "coadd-4-80613-thru20210324.fits", "coadd-main-dark-9144.fits"])
def test_desi_targetids_from_fibermap(name):
    path = require_shared("desi", name)
    spectra = read_spectra(path)
    with fits.open(path) as hdul:
        fibermap = hdul["FIBERMAP"].data
        assert [s.meta["TARGETID"] for s in spectra] == fibermap["TARGETID"].tolist()
        if "TARGET_RA" in fibermap.columns.names:
            assert [s.meta["RA"] for s in spectra] == fibermap["TARGET_RA"].tolist()
            assert [s.meta["DEC"] for s in spectra] == fibermap["TARGET_DEC"].tolist()
        if "TILEID" in fibermap.columns.names:
            assert all(s.meta["TILEID"] == t for s, t in zip(spectra, fibermap["TILEID"]))


def test_desi_arms_merge_on_shared_lattice():
    path = require_shared("desi", "coadd-main-dark-9144.fits")
    spectra = read_spectra(path)
    for row, s in enumerate(spectra):
        arms = _arms(path, row)
        # the arms share the 0.8 A lattice: 3600..9824 A is 7781 pixels, each overlap pixel appears once
        assert len(s.loglam) == 7781 and not s.notes
        assert np.allclose(np.diff(s.wavelength), 0.8, atol=1e-6)
        for lo, hi in [(5760.0, 5800.0), (7520.0, 7620.0)]:
            sel = (s.wavelength > lo - 0.01) & (s.wavelength < hi + 0.01)
            weighted, weight = 0.0, 0.0
            for wave, flux, ivar, bad in arms.values():
                use = (wave > lo - 0.01) & (wave < hi + 0.01) & ~bad
                weighted += np.sum(ivar[use] * flux[use])
                weight += np.sum(ivar[use])
            assert weight > 0
            assert np.sum(s.ivar[sel]) == pytest.approx(weight, rel=1e-12)
            assert np.sum(s.ivar[sel] * s.flux[sel]) == pytest.approx(weighted, rel=1e-9, abs=1e-9 * weight)
        # outside overlaps the merged spectrum is the arm itself
        wave, flux, ivar, bad = arms["B"]
        only_b = (wave < 5759.0) & ~bad
        k = np.searchsorted(s.wavelength, wave[only_b] - 1e-6)
        assert np.array_equal(s.flux[k], flux[only_b]) and np.array_equal(s.ivar[k], ivar[only_b])


def test_desi_masked_pixels_are_bad():
    path = require_shared("desi", "coadd-main-dark-9144.fits")
    n_bad = 0
    for row, s in enumerate(read_spectra(path)):
        # a merged pixel is good exactly when at least one arm has it unmasked with ivar > 0
        expected = np.zeros(len(s.loglam), bool)
        for wave, flux, ivar, bad in _arms(path, row).values():
            k = np.rint((wave - 3600.0) / 0.8).astype(int)
            expected[k] |= ~bad
            n_bad += bad.sum()
        assert np.array_equal(s.good, expected)
        assert np.all(s.ivar[~s.good] == 0)
    assert n_bad > 0  # the file really has masked pixels


def test_desi_arms_off_lattice_are_split_not_combined(tmp_path):
    path = require_shared("desi", "coadd-main-dark-9144.fits")
    with fits.open(path) as hdul:
        hdul["R_WAVELENGTH"].data = hdul["R_WAVELENGTH"].data + 0.3  # R no longer on the B/Z lattice
        hdul.writeto(tmp_path / "shifted.fits")
    spectra = read_spectra(tmp_path / "shifted.fits")
    for row, s in enumerate(spectra):
        assert any("not on a common wavelength lattice" in note for note in s.notes)
        assert np.all(np.diff(s.loglam) > 0) and np.diff(s.wavelength).max() < 0.8 + 1e-6  # no holes
        assert s.wavelength[0] == pytest.approx(3600.0) and s.wavelength[-1] == pytest.approx(9824.0)
        # no pixel is an average: each merged pixel is exactly one arm's pixel at that wavelength
        matched = np.zeros(len(s.loglam), int)
        for wave, flux, ivar, bad in _arms(tmp_path / "shifted.fits", row).values():
            k = np.clip(np.searchsorted(wave, s.wavelength - 1e-6), 0, wave.size - 1)
            hit = np.abs(wave[k] - s.wavelength) < 1e-6
            assert np.array_equal(s.flux[hit], flux[k[hit]])
            matched += hit
        assert np.all(matched == 1)


def test_desi_healpix_targets_in_qso_catalog():
    path = require_shared("desi", "coadd-main-dark-9144.fits")
    catalog = require_shared("desi", "QSO_cat_fuji_dark_healpix.fits.gz")
    with fits.open(catalog) as hdul:
        qso = set(hdul[1].data["TARGETID"].tolist())
    spectra = read_spectra(path)
    assert len(spectra) == 2 and all(s.meta["TARGETID"] in qso for s in spectra)
    assert spectra[0].meta["SURVEY"] == "sv3" and spectra[0].meta["HPXPIXEL"] == 9144


def test_desi_without_fibermap():
    spectra = read_spectra(require_shared("desi", "test_coadd.fits"))
    assert len(spectra) == 25
    for row, s in enumerate(spectra):
        assert s.row == row and "TARGETID" not in s.meta
        assert any("no FIBERMAP" in note for note in s.notes)
        assert s.good.mean() > 0.99 or row == 11  # row 11 is an empty fiber (all ivar = 0)


# ---------------------------------------------------------------- LAMOST


def test_lamost_rows_are_flux_and_inverse_variance_not_spspec_sigma():
    require_shared("lamost", "dr1")
    assert len(LAMOST_SPEC) == 176
    import csv

    truth = {r["file"]: r for r in csv.DictReader((LAMOST / "dr1" / "truth.csv").open())}
    for path in LAMOST_SPEC[:20]:
        [s] = read_spectra(path)
        with fits.open(path) as hdul:
            image, header = hdul[0].data.astype(np.float64), hdul[0].header
        assert s.format == "lamost" and np.array_equal(s.flux, image[0])
        assert np.array_equal(s.ivar, image[1])  # row 1 is the inverse variance itself (spSpec: sigma in row 2)
        assert np.array_equal(s.good, (image[1] > 0) & (image[3] == 0))
        assert s.loglam[0] == pytest.approx(header["COEFF0"]) and s.meta["FIBERID"] == header["FIBERID"]
        assert s.meta["PIPELINE_CLASS"] == "STAR" == truth[path.name]["CLASS"]
        assert s.meta["PIPELINE_Z"] == pytest.approx(float(truth[path.name]["Z"]))
        assert s.meta["RA"] == pytest.approx(float(truth[path.name]["RA"]))


def test_a_lamost_image_without_its_row_names_is_not_taken_for_spspec(tmp_path):
    path = require_shared("lamost", "dr1", "spec-55862-B6212_sp06-003.fits")
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        del header["EXTEN0"]
        fits.PrimaryHDU(hdul[0].data, header).writeto(tmp_path / "no-exten0.fits")
    [s] = read_spectra(tmp_path / "no-exten0.fits")  # TELESCOP = LAMOST still says what it is
    assert s.format == "lamost"


# ---------------------------------------------------------------- bad inputs


def _assert_read_error(path: Path, fragment: str) -> None:
    with pytest.raises(SpectrumReadError) as err:
        read_spectra(path)
    assert str(path) in str(err.value) and fragment in err.value.problem, err.value.problem


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "nothing-here.fits", "does not exist")


def test_empty_file(tmp_path):
    (tmp_path / "empty.fits").write_bytes(b"")
    _assert_read_error(tmp_path / "empty.fits", "empty")


def test_text_file(tmp_path):
    (tmp_path / "notes.fits").write_text("PLATE MJD FIBERID\n3655 55240 2\n")
    _assert_read_error(tmp_path / "notes.fits", "not a FITS file")


@pytest.mark.parametrize("rel", ["formats/spec-4055-55359-0010.fits", "dr16/spec-3655-55240-0002.fits", "formats/spSpec-51993-0542-631.fit"])
def test_truncated_file(tmp_path, rel):
    data = require_shared("sdss", *rel.split("/")).read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[:20000])
    _assert_read_error(tmp_path / "cut.fits", "truncated")


def test_truncated_desi_file(tmp_path):
    data = require_shared("desi", "coadd-main-dark-9144.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    _assert_read_error(tmp_path / "cut.fits", "truncated")


@pytest.mark.parametrize("hdu_name, fragment", [("Z_WAVELENGTH", "Z missing"), ("Z_IVAR", "incomplete"), ("Z_MASK", "MASK")])
def test_desi_file_cut_at_an_hdu_boundary(tmp_path, hdu_name, fragment):
    # a copy cut exactly between HDUs is still valid FITS: the reader must notice the missing parts
    path = require_shared("desi", "coadd-main-dark-9144.fits")
    with fits.open(path) as hdul:
        cut = hdul.fileinfo(hdul.index_of(hdu_name))["hdrLoc"]
    (tmp_path / "cut.fits").write_bytes(path.read_bytes()[:cut])
    _assert_read_error(tmp_path / "cut.fits", fragment)


def test_empty_primary_only(tmp_path):
    fits.PrimaryHDU().writeto(tmp_path / "primary.fits")
    _assert_read_error(tmp_path / "primary.fits", "unsupported layout")


def test_catalog_file():
    _assert_read_error(require_shared("sdss", "dr16", "cat_for_clustering_plate3655.fits.gz"), "unsupported layout")


def test_file_with_zero_spectra(tmp_path):
    path = require_shared("desi", "coadd-main-dark-9144.fits")
    with fits.open(path) as hdul:
        keep = [fits.PrimaryHDU(header=hdul[0].header)]
        for arm in "BRZ":
            keep.append(fits.ImageHDU(hdul[f"{arm}_WAVELENGTH"].data, name=f"{arm}_WAVELENGTH"))
            keep.append(fits.ImageHDU(hdul[f"{arm}_FLUX"].data[:0], name=f"{arm}_FLUX"))
            keep.append(fits.ImageHDU(hdul[f"{arm}_IVAR"].data[:0], name=f"{arm}_IVAR"))
        fits.HDUList(keep).writeto(tmp_path / "nobody.fits")
    _assert_read_error(tmp_path / "nobody.fits", "no spectra")
