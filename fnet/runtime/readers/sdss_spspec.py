"""SDSS DR7 ``spSpec-MJD-PLATE-FIBER.fit`` files: one spectrum in a 5 x N primary image.

Rows (header ARRAY1..ARRAY4): 0 flux, 1 continuum-subtracted flux, 2 error sigma, 3 pixel mask, 4 unused.
Wavelength: loglam = COEFF0 + COEFF1 * i. DR7 spectra are in VACUUM wavelengths (header VACUUM = T,
"Wavelengths are in vacuum"; SDSS has always reduced to vacuum, only the line tables quote air names).
The mask row is stored as float32; its values are SPPIXMASK bits, plus the spectro1d bit 30 (EMLINE,
emission line detected) which is not a defect and is not honoured. Header RA/DEC are the telescope
boresight of the first exposure, not the object: the object is at RAOBJ/DECOBJ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..masks import sdss_good_pixels
from ..spectrum import Spectrum
from .fits_fast import scalar
from .wavelengths import snap_loglam, vacuum_loglam

FORMAT = "sdss-spspec"

# DR7 SPEC_CLN spectral classes.
_SPEC_CLN = {0: "UNKNOWN", 1: "STAR", 2: "GALAXY", 3: "QSO", 4: "QSO", 5: "SKY", 6: "STAR", 7: "GALAXY"}


def matches(hdul: fits.HDUList) -> bool:
    """True for a DR7 spSpec: 2-D log-linear primary image of 4-5 rows describing a single fiber."""
    header = hdul[0].header
    if str(header.get("TELESCOP", "")).strip().upper() == "LAMOST" or "EXTEN0" in header:
        return False  # a LAMOST image has the same shape but other rows (see readers/lamost.py)
    return (
        header.get("NAXIS") == 2
        and "COEFF0" in header
        and "COEFF1" in header
        and header.get("NAXIS2") in (4, 5)
        and ("FIBERID" in header or str(header.get("ARRAY1", "")).strip().upper() == "SPECTRUM")
    )


def _position(header: fits.Header, obj_key: str, key: str) -> Any:
    """RAOBJ/DECOBJ, else RA/DEC only when the header does not call it the boresight."""
    if obj_key in header:
        return scalar(header[obj_key])
    if key in header and "boresight" not in header.comments[key].lower():
        return scalar(header[key])
    return None


def read(hdul: fits.HDUList, path: str | Path) -> list[Spectrum]:
    """The single spectrum of a spSpec file."""
    header = hdul[0].header
    image = hdul[0].data
    notes: list[str] = []
    npix = image.shape[1]
    loglam = vacuum_loglam(snap_loglam(header["COEFF0"] + header["COEFF1"] * np.arange(npix)), header, notes)
    flux = np.asarray(image[0], dtype=np.float64)
    sigma = np.asarray(image[2], dtype=np.float64)
    ok = np.isfinite(sigma) & (sigma > 0)
    ivar = np.zeros(npix)
    ivar[ok] = 1.0 / sigma[ok] ** 2
    # float32 holds these bit patterns exactly while the set bits span < 24 bits (true for real masks).
    mask = np.rint(np.nan_to_num(np.asarray(image[3], dtype=np.float64))).astype(np.int64)
    good = sdss_good_pixels(flux, ivar, mask)

    meta = {
        "PLATE": scalar(header["PLATEID"]) if "PLATEID" in header else None,
        "MJD": scalar(header["MJD"]) if "MJD" in header else None,
        "FIBERID": scalar(header["FIBERID"]) if "FIBERID" in header else None,
        "RA": _position(header, "RAOBJ", "RA"),
        "DEC": _position(header, "DECOBJ", "DEC"),
        "PIPELINE_Z": scalar(header["Z"]) if "Z" in header else None,
        "PIPELINE_CLASS": _SPEC_CLN.get(header.get("SPEC_CLN")),
    }
    return [
        Spectrum(
            source=str(path), row=0, loglam=loglam, flux=flux, ivar=ivar, good=good, format=FORMAT,
            meta={key: value for key, value in meta.items() if value is not None}, notes=notes,
        )
    ]
