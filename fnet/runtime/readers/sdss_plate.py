"""SDSS/BOSS ``spPlate-PLATE-MJD.fits`` files: one spectrum per fiber row of the primary image.

Layout (idlspec2d): HDU 0 flux [nfiber, npix] with a log-linear wavelength solution
loglam = COEFF0 + COEFF1 * i; HDU 1 inverse variance; HDU 2 AND mask; HDU 3 OR mask; HDU 4 dispersion;
HDU 5 plugmap table (FIBERID, RA, DEC, OBJTYPE, ...); HDU 6 sky. Image row r holds fiber r + 1
(verified: row 9 of the trimmed spPlate-4055-55359-0020 equals spec-4055-55359-0010 bit for bit).
Trimmed copies may carry only HDU 0: weights are then uniform and S/N is unknown. Wavelengths are vacuum.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
from astropy.io import fits

from ..errors import SpectrumReadError
from ..masks import sdss_good_pixels
from ..spectrum import Spectrum
from .fits_fast import columns_lower, read_columns, scalar
from .wavelengths import snap_loglam, vacuum_loglam

FORMAT = "sdss-spplate"

NO_IVAR_NOTE = "no IVAR HDU: uniform weights, S/N unknown"


def _is_log_linear_image(header: fits.Header) -> bool:
    """A 2-D primary image with a COEFF0/COEFF1 log-linear wavelength solution."""
    return header.get("NAXIS") == 2 and "COEFF0" in header and "COEFF1" in header


def matches(hdul: fits.HDUList) -> bool:
    """True for an spPlate: log-linear 2-D primary image without the single-fiber keys of a DR7 spSpec."""
    header = hdul[0].header
    return _is_log_linear_image(header) and "FIBERID" not in header and "ARRAY1" not in header


def _same_shape_image(hdul: fits.HDUList, index: int, shape: tuple[int, ...], path: str) -> np.ndarray | None:
    """Data of image HDU ``index`` when it exists; None when absent or not an image.

    A 2-D image of another shape means one header's NAXISn is wrong (rows would be read shifted): refused.
    """
    try:
        hdu = hdul[index]
    except IndexError:
        return None
    if not isinstance(hdu, fits.ImageHDU) or hdu.header.get("NAXIS") != 2:
        return None
    if hdu.shape != shape:
        raise SpectrumReadError(path, f"spPlate geometry disagrees: HDU 0 (flux) is {shape[0]} fibers x {shape[1]} "
                                      f"pixels but HDU {index} is {hdu.shape[0]} x {hdu.shape[1]} (corrupt header?)")
    return hdu.data


def _plugmap(hdul: fits.HDUList, nfiber: int) -> dict[str, np.ndarray] | None:
    """Plugmap columns (HDU 5: FIBERID, RA, DEC, OBJTYPE) when it has one row per fiber, else None."""
    try:
        hdu = hdul[5]
    except IndexError:
        return None
    if "fiberid" not in columns_lower(hdu) or hdu.header.get("NAXIS2") != nfiber:
        return None
    return read_columns(hdu, ("FIBERID", "RA", "DEC", "OBJTYPE"))


def read(hdul: fits.HDUList, path: str | Path) -> list[Spectrum]:
    """One Spectrum per fiber row."""
    header = hdul[0].header
    flux_all = hdul[0].data
    if flux_all is None or flux_all.ndim != 2:
        return []
    nfiber, npix = flux_all.shape
    base_notes: list[str] = []
    loglam = snap_loglam(header["COEFF0"] + header["COEFF1"] * np.arange(npix))
    loglam = vacuum_loglam(loglam, header, base_notes)

    ivar_all = _same_shape_image(hdul, 1, flux_all.shape, str(path))
    mask_all = _same_shape_image(hdul, 2, flux_all.shape, str(path)) if ivar_all is not None else None
    plug = _plugmap(hdul, nfiber)
    if ivar_all is None:
        base_notes.append(NO_IVAR_NOTE)
    elif mask_all is None:
        base_notes.append("no AND mask HDU: only ivar and finiteness define good pixels")
    if plug is None:
        base_notes.append("no plugmap HDU: FIBERID = row + 1, no RA/DEC")

    plate_meta = {key: scalar(header[hkey]) for key, hkey in (("PLATE", "PLATEID"), ("MJD", "MJD")) if hkey in header}
    spectra = []
    for row in range(nfiber):
        flux = np.asarray(flux_all[row], dtype=np.float64)
        if ivar_all is None:
            finite = np.isfinite(flux)
            ivar = finite.astype(np.float64)  # uniform weights on measured pixels
            good = finite
        else:
            ivar = np.asarray(ivar_all[row], dtype=np.float64)
            good = sdss_good_pixels(flux, ivar, None if mask_all is None else mask_all[row])
        meta = dict(plate_meta)
        if plug is None:
            meta["FIBERID"] = row + 1
        else:
            meta.update({key: scalar(values[row]) for key, values in plug.items()})
        spectra.append(
            Spectrum(
                source=str(path), row=row, loglam=loglam.copy(), flux=flux, ivar=ivar, good=good,
                format=FORMAT, meta=meta, ivar_known=ivar_all is not None, notes=list(base_notes),
            )
        )
    return spectra
