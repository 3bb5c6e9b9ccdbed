"""SDSS-I/II, BOSS and eBOSS ``spec-PLATE-MJD-FIBER.fits`` files: one coadded spectrum per file.

Layout: HDU 1 is the coadd table (named COADD, or unnamed in the DR16 picca copies), columns in lower or
UPPER case (flux, loglam, ivar, and_mask, or_mask, wdisp, sky, model); HDU 2 is a one-row metadata table
(SPALL for BOSS/eBOSS, SPECOBJ for SDSS-I/II legacy files, or unnamed). SDSS wavelengths are vacuum
(primary header VACUUM = T).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..errors import SpectrumReadError
from ..masks import sdss_good_pixels
from ..spectrum import Spectrum
from .fits_fast import RawTable, columns_lower, read_columns, scalar
from .fits_open import hdu_names
from .wavelengths import snap_loglam, vacuum_loglam

FORMAT = "sdss-spec"

_COADD_COLUMNS = ("flux", "loglam", "ivar")
_META_NAMES = ("SPALL", "SPECOBJ", "")
_META_COLUMNS = ("PLATE", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "RA", "DEC", "CLASS", "Z")


def _is_coadd_table(hdu: Any) -> bool:
    """flux, loglam and ivar columns, and not a per-exposure table (those have 'mask', the coadd and_mask)."""
    cols = columns_lower(hdu)
    return all(c in cols for c in _COADD_COLUMNS) and ("and_mask" in cols or "mask" not in cols)


def _coadd_hdu(hdul: fits.HDUList) -> fits.BinTableHDU | None:
    """The coadd table: the HDU named COADD, else HDU 1 when it is a coadd-like table; None when there is none.

    Full spec files also hold one table per exposure and camera with the same flux/loglam/ivar columns
    (named like B1-00123456-...): those are never taken for the coadd, whatever their position.
    Raises SpectrumReadError when the choice is ambiguous (several HDUs named COADD).
    """
    names = hdu_names(hdul)
    named = [i for i, name in enumerate(names) if name == "COADD"]
    if len(named) > 1:
        raise SpectrumReadError(hdul.filename() or "<in-memory FITS>",
                                f"ambiguous spec file: {len(named)} HDUs are named COADD (HDUs {named})")
    if named:
        hdu = hdul[named[0]]
        return hdu if all(c in columns_lower(hdu) for c in _COADD_COLUMNS) else None
    if len(names) > 1 and names[1] == "":
        hdu = hdul[1]
        return hdu if _is_coadd_table(hdu) else None
    return None


def _meta_row(hdul: fits.HDUList, coadd: fits.BinTableHDU) -> dict[str, Any]:
    """UPPER-case name -> first-row value of the metadata table (SPALL, SPECOBJ or unnamed HDU after the coadd)."""
    coadd_table = RawTable.of(coadd)
    columns = None
    if coadd_table is not None and coadd is hdul[1]:
        # Parse HDU 2 ourselves: astropy's header parse of its ~500 cards alone costs ~5 ms.
        try:
            table = RawTable(coadd_table.fileobj, coadd_table.next_loc)
            columns = table.columns(_META_COLUMNS) if table.is_bintable else {}
            name, names = table.name, table.names
        except ValueError:
            columns = None  # no HDU 2, or a cut-off one: let astropy look (and report truncation)
    if columns is None:
        try:
            hdu = hdul[2]
        except IndexError:
            return {}
        name, names = hdu.name.upper(), list(columns_lower(hdu).values())
        columns = read_columns(hdu, _META_COLUMNS) if isinstance(hdu, fits.BinTableHDU) else {}
    if name not in _META_NAMES or not ({"PLATE", "MJD", "FIBERID"} & {n.upper() for n in names}) or not columns:
        return {}
    return {key: scalar(values[0]) for key, values in columns.items() if len(values)}


def matches(hdul: fits.HDUList) -> bool:
    """True for a spec file: a coadd table with flux, loglam and ivar columns."""
    return _coadd_hdu(hdul) is not None


def _meta(hdul: fits.HDUList, coadd: fits.BinTableHDU) -> dict[str, Any]:
    """PLATE, MJD, FIBERID, RA, DEC, PIPELINE_CLASS, PIPELINE_Z from the metadata table, else the primary header."""
    row = _meta_row(hdul, coadd)
    header = hdul[0].header

    def first(table_keys: tuple[str, ...], header_keys: tuple[str, ...]) -> Any:
        for key in table_keys:
            if key in row:
                return row[key]
        for key in header_keys:
            if key in header:
                return scalar(header[key])
        return None

    # Header RA/DEC are the telescope boresight, never the object: only PLUG_RA/PLUG_DEC may stand in.
    # The SPECOBJ column PLATEID is a 64-bit id string, not the plate number: read the column PLATE.
    meta = {
        "PLATE": first(("PLATE",), ("PLATEID",)),
        "MJD": first(("MJD",), ("MJD",)),
        "FIBERID": first(("FIBERID",), ("FIBERID",)),
        "RA": first(("PLUG_RA", "RA"), ("PLUG_RA",)),
        "DEC": first(("PLUG_DEC", "DEC"), ("PLUG_DEC",)),
        "PIPELINE_CLASS": first(("CLASS",), ()),
        "PIPELINE_Z": first(("Z",), ()),
    }
    return {key: value for key, value in meta.items() if value is not None}


def read(hdul: fits.HDUList, path: str | Path) -> list[Spectrum]:
    """The coadded spectrum of a spec file (one per row when the table holds spectra as vector rows)."""
    coadd = _coadd_hdu(hdul)
    data = read_columns(coadd, ("FLUX", "LOGLAM", "IVAR", "AND_MASK"))
    flux_all = np.asarray(data["FLUX"], dtype=np.float64)
    if flux_all.ndim == 2 and flux_all.shape[0] == 1:
        data = {key: np.asarray(value)[0] for key, value in data.items()}  # one spectrum stored as one vector row
        flux_all = flux_all[0]
    meta = _meta(hdul, coadd)
    if flux_all.ndim == 1:
        return [_spectrum(path, 0, data, hdul[0].header, meta, [])]
    if flux_all.ndim != 2:
        raise SpectrumReadError(str(path), f"coadd FLUX column has shape {flux_all.shape}: not a spectrum")
    # A table of vector rows: each row is one spectrum (written by other tools, never by the SDSS pipeline).
    n = flux_all.shape[0]
    note = f"coadd table holds {n} spectra as vector rows; identifiers come from the file's metadata row"
    rows = []
    for r in range(n):
        row = {key: (np.asarray(v)[r] if np.ndim(v) == 2 else v) for key, v in data.items()}
        rows.append(_spectrum(path, r, row, hdul[0].header, dict(meta), [note]))
    return rows


def _spectrum(path: str | Path, row: int, data: dict[str, np.ndarray], header: fits.Header, meta: dict,
              notes: list[str]) -> Spectrum:
    """One Spectrum from 1-D FLUX/LOGLAM/IVAR(/AND_MASK) arrays."""
    shapes = {key: np.shape(value) for key, value in data.items()}
    if len(set(shapes.values())) != 1:
        raise SpectrumReadError(str(path), f"coadd columns disagree in length: {shapes}")
    loglam = vacuum_loglam(snap_loglam(data["LOGLAM"]), header, notes)
    flux = np.asarray(data["FLUX"], dtype=np.float64)
    ivar = np.asarray(data["IVAR"], dtype=np.float64)
    and_mask = data.get("AND_MASK")
    if and_mask is None:
        notes.append("no and_mask column: only ivar and finiteness define good pixels")
    good = sdss_good_pixels(flux, ivar, and_mask)
    return Spectrum(source=str(path), row=row, loglam=loglam, flux=flux, ivar=ivar, good=good,
                    format=FORMAT, meta=meta, notes=notes)
