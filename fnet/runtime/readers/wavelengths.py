"""Wavelength helpers shared by the SDSS-family and LAMOST readers: the 1e-4 dex lattice and air/vacuum."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

def snap_loglam(loglam: np.ndarray, step: float = 1e-4, tol: float = 1e-6) -> np.ndarray:
    """Float64 log10 wavelengths, put exactly on the ``step`` dex grid when every pixel lies within ``tol`` of it."""
    ll = np.asarray(loglam, dtype=np.float64)
    inv = round(1.0 / step)
    k = np.rint(ll * inv)
    # BOSS stores loglam as float32 (errors up to 2.4e-7 dex); the pipeline grid is exact multiples of 1e-4,
    # so snapping restores the true values and makes spec, spPlate and spSpec pixels bit-identical.
    if ll.size and np.all(np.isfinite(ll)) and np.max(np.abs(ll * inv - k)) <= tol * inv:
        return k / inv
    return ll


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Vacuum wavelength (A) from air wavelength (A), Morton (1991) as in idlutils airtovac."""
    sigma2 = (1e4 / np.asarray(wave_air, dtype=np.float64)) ** 2
    factor = 1.0 + 5.792105e-2 / (238.0185 - sigma2) + 1.67917e-3 / (57.362 - sigma2)
    return np.where(wave_air >= 2000.0, wave_air * factor, wave_air)


def vacuum_loglam(loglam: np.ndarray, header: fits.Header, notes: list[str]) -> np.ndarray:
    """loglam unchanged when the header says vacuum (or is silent, as SDSS is always vacuum); converted if air."""
    if header.get("VACUUM", True) is False:
        notes.append("header VACUUM = F: air wavelengths converted to vacuum")
        return np.log10(air_to_vacuum(10.0**loglam))
    return loglam
