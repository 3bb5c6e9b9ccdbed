"""LAMOST low-resolution ``spec-MJD-PLANID_spSS-FFF.fits`` files (DR1-era layout): one spectrum per file.

Layout: a 5 x N float32 primary image whose rows the header card EXTEN0 names
("Flux Inverse Subcontinuum Andmask Ormask"): 0 flux, 1 inverse variance, 2 flux divided by the
continuum, 3 AND mask, 4 OR mask. Wavelength: loglam = COEFF0 + COEFF1 * i, vacuum (VACUUM = T).
At first glance this is a DR7 spSpec image (also 5 rows, also COEFF0/COEFF1), but there row 2 is the
error sigma: the two are told apart by TELESCOP / EXTEN0, never by the shape.
RA/DEC in a LAMOST header are the object's ("Right ascension of object"); CLASS, SUBCLASS and Z are the
LAMOST pipeline's. Identifiers: OBSID (the archive's unique id; DR2 and later headers), PLANID/SPID/FIBERID
(plan, spectrograph, fiber) and DESIG ("LAMOST JHHMMSS.ss+DDMMSS.s"). Flux is relatively calibrated only (arbitrary units), which the normalisation absorbs.
LAMOST AND-mask bits (BADCCD, BADPROFILE, NOSKY, BRIGHTSKY, BADCENTER, NODATA) all mark defects: any set
bit makes a pixel bad.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import SpectrumReadError
from ..spectrum import Spectrum
from .fits_fast import scalar
from .wavelengths import snap_loglam, vacuum_loglam

FORMAT = "lamost"

_ROW_NAMES = ("FLUX", "INVERSE", "SUBCONTINUUM", "ANDMASK", "ORMASK")
_HEADER_KEYS = ("OBSID", "PLANID", "SPID", "FIBERID", "DESIG", "MJD", "RA", "DEC")


def _row_names(header: fits.Header) -> list[str]:
    """Upper-case row names from EXTEN0 ('Flux Inverse Subcontinuum Andmask Ormask')."""
    return str(header.get("EXTEN0", "")).upper().split()


def matches(hdul: fits.HDUList) -> bool:
    """True for a LAMOST spectrum: TELESCOP LAMOST or an EXTEN0 row list, and a log-linear 2-D primary image."""
    header = hdul[0].header
    lamost = str(header.get("TELESCOP", "")).strip().upper() == "LAMOST" or _row_names(header)[:2] == ["FLUX", "INVERSE"]
    return lamost and header.get("NAXIS") == 2 and "COEFF0" in header and "COEFF1" in header


def read(hdul: fits.HDUList, path: str | Path) -> list[Spectrum]:
    """The single spectrum of a LAMOST file."""
    header = hdul[0].header
    names = _row_names(header) or list(_ROW_NAMES)
    image = hdul[0].data
    if image is None or image.ndim != 2:
        raise SpectrumReadError(str(path), "LAMOST file without a 2-D primary image")
    try:
        i_flux, i_ivar = names.index("FLUX"), names.index("INVERSE")
    except ValueError:
        raise SpectrumReadError(str(path), f"LAMOST header EXTEN0 {header.get('EXTEN0')!r} names no Flux/Inverse rows") from None
    if max(i_flux, i_ivar) >= image.shape[0]:
        raise SpectrumReadError(str(path), f"LAMOST image has {image.shape[0]} rows, EXTEN0 names {len(names)}")
    notes: list[str] = []
    npix = image.shape[1]
    loglam = vacuum_loglam(snap_loglam(header["COEFF0"] + header["COEFF1"] * np.arange(npix)), header, notes)
    flux = np.asarray(image[i_flux], dtype=np.float64)
    ivar = np.asarray(image[i_ivar], dtype=np.float64)
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    if "ANDMASK" in names and names.index("ANDMASK") < image.shape[0]:
        good &= np.nan_to_num(np.asarray(image[names.index("ANDMASK")], dtype=np.float64)) == 0
    else:
        notes.append("no Andmask row: only ivar and finiteness define good pixels")
    # identifiers as the header names them (OBSID since DR2; DR1 files have PLANID/SPID/FIBERID and DESIG)
    meta = {key: scalar(header[key]) for key in _HEADER_KEYS if key in header}
    meta.update({name: scalar(header[key]) for name, key in (("PIPELINE_CLASS", "CLASS"), ("PIPELINE_Z", "Z"))
                 if key in header})
    return [
        Spectrum(
            source=str(path), row=0, loglam=loglam, flux=flux, ivar=ivar, good=good, format=FORMAT,
            meta={key: value for key, value in meta.items() if value is not None}, notes=notes,
        )
    ]
