"""Read survey spectra files into plain :class:`~fnet.runtime.spectrum.Spectrum` records.

``read_spectra(path)`` opens the file once, detects the format from its content (never its name) and
hands the open HDU list to one adapter module; each adapter has ``matches(hdul)`` and ``read(hdul, path)``.
Everything that can go wrong with the file is raised as ``SpectrumReadError(path, problem)``.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import CatalogFileError, SpectrumReadError
from ..spectrum import Spectrum, clean_meta
from . import desi_coadd, fits_fast, fits_open, lamost, sdss_plate, sdss_spec, sdss_spspec

__all__ = ["FORMATS", "detect_format", "read_spectra", "describe_hdus"]

# Every adapter is asked; exactly one must claim a file (detect_format).
_ADAPTERS = {
    lamost.FORMAT: lamost,
    sdss_spspec.FORMAT: sdss_spspec,
    sdss_plate.FORMAT: sdss_plate,
    sdss_spec.FORMAT: sdss_spec,
    desi_coadd.FORMAT: desi_coadd,
}

#: Supported format names, as returned by detect_format and stored in Spectrum.format.
FORMATS: tuple[str, ...] = ("sdss-spec", "sdss-spplate", "sdss-spspec", "desi-coadd", "lamost")


def describe_hdus(hdul: fits.HDUList, max_columns: int = 6) -> str:
    """One-line summary of the HDUs in a file, for error messages."""
    parts = []
    for index, hdu in enumerate(hdul):
        name = hdu.name or "(unnamed)"
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            cols = list(fits_fast.columns_lower(hdu).values()) or hdu.columns.names
            more = ", ..." if len(cols) > max_columns else ""
            what = f"table {hdu.header.get('NAXIS2', 0)} rows [{', '.join(cols[:max_columns])}{more}]"
        elif hdu.header.get("NAXIS", 0) == 0:
            what = "empty"
        else:
            what = "image " + "x".join(str(n) for n in reversed(hdu.shape))
        parts.append(f"{index} {name}: {what}")
    return "; ".join(parts)


def detect_format(hdul: fits.HDUList) -> str:
    """Name of the spectra format of an open FITS file (one of FORMATS); SpectrumReadError if none or several fit."""
    path = hdul.filename() or "<in-memory FITS>"
    found = [name for name, adapter in _ADAPTERS.items() if adapter.matches(hdul)]
    if len(found) == 1:
        return found[0]
    if found:  # e.g. a spec-file COADD table and DESI arm images in one file: refuse rather than pick one
        raise SpectrumReadError(path, f"ambiguous layout: the file looks like {' and '.join(found)} at once; "
                                      f"found HDUs: {describe_hdus(hdul)}")
    raise SpectrumReadError(
        path,
        f"unsupported layout (not SDSS spec/spPlate/spSpec, DESI coadd or LAMOST spectra); found HDUs: {describe_hdus(hdul)}",
    )


NO_GOOD_PIXELS_NOTE = "no usable pixels (ivar = 0 or masked everywhere)"


def _check(spectrum: Spectrum, path: str) -> None:
    """Enforce the Spectrum contract the algorithm relies on; note a spectrum with nothing usable."""
    where = f"spectrum {spectrum.row}"
    if len(spectrum.loglam) == 0:
        raise SpectrumReadError(path, f"{where} has no pixels")
    if not (np.all(np.isfinite(spectrum.loglam)) and np.all(np.diff(spectrum.loglam) > 0)):
        raise SpectrumReadError(path, f"{where}: wavelengths are not finite and strictly increasing")
    units = _wavelength_unit_problem(spectrum.loglam)
    if units:
        raise SpectrumReadError(path, f"{where}: {units}")
    spectrum.notes.extend(clean_meta(spectrum.meta))
    # Kept (row numbers stay aligned with the file, e.g. an empty fiber in a DESI coadd), but said so.
    if not spectrum.good.any() and NO_GOOD_PIXELS_NOTE not in spectrum.notes:
        spectrum.notes.append(NO_GOOD_PIXELS_NOTE)


# log10(Angstrom) of anything a UV-to-near-IR spectrograph records (300 A - 100 um).
_LOGLAM_RANGE = (2.5, 6.0)


def _wavelength_unit_problem(loglam: np.ndarray) -> str:
    """'' when loglam looks like log10(Angstrom); else a guess at what the file holds instead."""
    lo, hi = float(loglam[0]), float(loglam[-1])
    if _LOGLAM_RANGE[0] <= lo and hi <= _LOGLAM_RANGE[1]:
        return ""
    median = float(np.median(loglam))
    if 7.0 < median < 11.5:
        guess = "natural log of Angstrom (ln 3600 = 8.19)?"
    elif 1.5 < median < 2.5:
        guess = "log10 of nanometres?"
    elif 100 < median < 2500:
        guess = "nanometres, not a logarithm?"
    elif 2500 <= median < 100000:
        guess = "Angstrom, not log10(Angstrom)?"
    else:
        guess = "not a wavelength scale this toolkit knows"
    return (f"wavelengths must be log10(Angstrom), in {_LOGLAM_RANGE[0]}..{_LOGLAM_RANGE[1]}; the file's run "
            f"{lo:.5g}..{hi:.5g}: {guess}")


def read_spectra(path: str | Path) -> list[Spectrum]:
    """Every spectrum in a FITS file, whatever supported survey format it is in."""
    path = Path(path)
    with fits_open.open_fits_bytes(path) as (fileobj, layout, _compressed):
        if layout.names[1:2] == ["FNET"]:
            raise CatalogFileError(str(path), "an fnet-run catalog (HDU FNET), not a spectra file")
        if layout.names[1:2] == ["PRIORS"]:  # fnet-run --priors output left beside the spectra it came from
            raise CatalogFileError(str(path), "a redrock priors file (HDU PRIORS), not a spectra file")
        spectra = _read_open(fileobj, path, layout)
    for spectrum in spectra:
        spectrum.notes.extend(layout.notes)
    return spectra


# warnings.catch_warnings swaps process-wide state: reader threads (fnet-run --read-workers) must take
# turns, or one file's truncation warning lands in another file's list.
_WARNINGS_LOCK = threading.Lock()


def _read_open(handle: BinaryIO, path: Path, layout: fits_open.FitsLayout | None = None) -> list[Spectrum]:
    """Detect and read from a binary file object holding the file's checked HDUs; failures become SpectrumReadError."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # memmap=False: measured no slower than memmap here (~7 ms a spec file), and no mapping outlives the call.
            with fits.open(handle, memmap=False, lazy_load_hdus=True) as hdul:
                if layout is not None:
                    fits_open.register_layout(hdul, layout)
                fmt = detect_format(hdul)
                spectra = _ADAPTERS[fmt].read(hdul, str(path))
        except SpectrumReadError as exc:
            if _truncated(caught):
                raise SpectrumReadError(str(path), f"truncated FITS file ({_truncated(caught)})") from exc
            raise SpectrumReadError(str(path), exc.problem) from exc
        except MemoryError:
            raise SpectrumReadError(str(path), "not enough memory to read this file") from None
        except Exception as exc:  # whatever the FITS library trips over in a damaged file stays this file's problem
            problem = "truncated FITS file" if _truncated(caught) else "corrupt or unreadable FITS file"
            raise SpectrumReadError(str(path), f"{problem}: its headers or tables cannot be decoded "
                                               f"(detail: {type(exc).__name__}: {exc})") from exc
    truncated = _truncated(caught)
    if truncated:
        # astropy only warned: data it could not read may be silently short, so refuse the file.
        raise SpectrumReadError(str(path), f"truncated FITS file ({truncated})")
    # Anything else astropy had to say about this file (a repaired header card, non-ASCII bytes) belongs
    # in its rows' messages, not on the terminal of a million-file run.
    remarks = list(dict.fromkeys(f"FITS reader: {str(w.message).strip()}" for w in caught))[:3]
    if not spectra:
        raise SpectrumReadError(str(path), f"file contains no spectra ({fmt} layout with zero rows)")
    for spectrum in spectra:
        spectrum.notes.extend(remarks)
        _check(spectrum, str(path))
    return spectra


def _truncated(caught: list[warnings.WarningMessage]) -> str:
    """The astropy truncation warning text among caught warnings, or ''."""
    for warning in caught:
        if issubclass(warning.category, AstropyUserWarning) and "truncated" in str(warning.message):
            return str(warning.message)
    return ""
