"""DESI ``coadd-*.fits`` files: per-arm {B,R,Z}_WAVELENGTH / _FLUX / _IVAR (/ _MASK) images, one row per target.

The arms are merged into one strictly increasing spectrum per target. In every DESI file checked here
the arms share one 0.8 A lattice (3600 + 0.8 k A): overlap pixels coincide to < 1e-9 A, so they are
combined ivar-weighted over the arms' good pixels (flux = sum(ivar f) / sum(ivar), ivar = sum(ivar);
ivar = 0 where no arm is good), the weighting of desispec's coadd_cameras. Arms that are not on a
common lattice (desispec refuses those) are not resampled, which would correlate the noise: each
overlap is split at its midpoint wavelength, and a note says so.
A pixel is bad where its arm's MASK is nonzero (DESI masks are honoured fully), ivar <= 0 or a value is
not finite. DESI wavelengths are vacuum. FIBERMAP supplies TARGETID, RA/DEC (TARGET_RA/TARGET_DEC),
TILEID, FIBER and PETAL_LOC when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..errors import SpectrumReadError
from ..spectrum import Spectrum
from .fits_open import hdu_names
from .fits_fast import read_columns, scalar

FORMAT = "desi-coadd"

# Overlap pixels must sit within this fraction of a pixel of the shared lattice to be combined.
LATTICE_TOL = 1e-3

_FIBERMAP_COLUMNS = (
    ("TARGETID", "TARGETID"),
    ("RA", "TARGET_RA"),
    ("DEC", "TARGET_DEC"),
    ("TILEID", "TILEID"),
    ("FIBER", "FIBER"),
    ("PETAL_LOC", "PETAL_LOC"),
)
_HEADER_KEYS = ("TILEID", "SURVEY", "PROGRAM", "HPXPIXEL")
_ARM_PARTS = ("_WAVELENGTH", "_FLUX", "_IVAR")


def _arm_parts(hdul: fits.HDUList) -> dict[str, set[str]]:
    """Arm prefix -> which of WAVELENGTH / FLUX / IVAR / MASK HDUs it has."""
    parts: dict[str, set[str]] = {}
    for name in hdu_names(hdul):
        for part in (*_ARM_PARTS, "_MASK"):
            if name.endswith(part) and len(name) > len(part):
                parts.setdefault(name[: -len(part)], set()).add(part)
    return parts


def arms(hdul: fits.HDUList) -> list[str]:
    """Arm prefixes (e.g. B, R, Z) that have _WAVELENGTH, _FLUX and _IVAR HDUs."""
    return sorted(p for p, have in _arm_parts(hdul).items() if have.issuperset(_ARM_PARTS))


def matches(hdul: fits.HDUList) -> bool:
    """True for a DESI coadd/spectra file: at least one arm with wavelength, flux and ivar HDUs."""
    return bool(arms(hdul))


def _rows(data: np.ndarray | None, npix: int, dtype: type) -> np.ndarray:
    """Image data as a 2-D [nspec, npix] array; a 1-D image is one spectrum, no data is zero spectra."""
    if data is None:
        return np.zeros((0, npix), dtype)
    return np.atleast_2d(np.asarray(data, dtype=dtype))


class _Arm:
    """One arm's arrays for all targets, with its bad-pixel mask."""

    def __init__(self, hdul: fits.HDUList, name: str, path: str):
        self.name = name
        self.wave = np.asarray(hdul[f"{name}_WAVELENGTH"].data, dtype=np.float64)
        npix = self.wave.shape[0] if self.wave.ndim else 0
        self.flux = _rows(hdul[f"{name}_FLUX"].data, npix, np.float64)
        self.ivar = _rows(hdul[f"{name}_IVAR"].data, npix, np.float64)
        mask_name = f"{name}_MASK"
        mask = _rows(hdul[mask_name].data, npix, np.int64) if mask_name in hdu_names(hdul) else None
        if self.wave.ndim != 1 or self.flux.shape[1] != npix or self.ivar.shape != self.flux.shape:
            raise SpectrumReadError(
                path, f"arm {name}: wavelength {self.wave.shape}, flux {self.flux.shape} and ivar {self.ivar.shape} disagree"
            )
        if not np.all(np.diff(self.wave) > 0):
            raise SpectrumReadError(path, f"arm {name}: wavelengths not strictly increasing")
        self.bad = ~(np.isfinite(self.flux) & np.isfinite(self.ivar) & (self.ivar > 0))
        if mask is not None:
            if mask.shape != self.flux.shape:
                raise SpectrumReadError(path, f"arm {name}: mask {mask.shape} does not match flux {self.flux.shape}")
            self.bad |= mask != 0


def _lattice_indices(arm_list: list[_Arm]) -> list[np.ndarray] | None:
    """Integer pixel indices of every arm on the first arm's lattice, or None when the arms do not share it."""
    ref = arm_list[0].wave
    if ref.size < 2:
        return None
    step = (ref[-1] - ref[0]) / (ref.size - 1)
    indices = []
    for arm in arm_list:
        k = (arm.wave - ref[0]) / step
        ki = np.rint(k)
        if np.max(np.abs(k - ki)) > LATTICE_TOL:
            return None
        indices.append(ki.astype(np.int64))
    return indices


class _LatticePlan:
    """Where each arm's pixels land in the merged lattice; computed once per file."""

    def __init__(self, arm_list: list[_Arm], indices: list[np.ndarray]):
        allk = np.unique(np.concatenate(indices))
        self.size = allk.size
        self.positions = [np.searchsorted(allk, k) for k in indices]
        self.wave = np.empty(self.size)
        for arm, pos in zip(reversed(arm_list), reversed(self.positions)):  # the bluest arm's value wins
            self.wave[pos] = arm.wave

    def merge(self, arm_list: list[_Arm], row: int):
        """Ivar-weighted merge of coincident pixels; returns wave, flux, ivar, good."""
        wsum = np.zeros(self.size)
        fsum = np.zeros(self.size)
        raw_sum = np.zeros(self.size)  # plain mean of finite flux, shown where no arm has a good pixel
        raw_n = np.zeros(self.size)
        for arm, pos in zip(arm_list, self.positions):
            flux, ivar, bad = arm.flux[row], arm.ivar[row], arm.bad[row]
            weight = np.where(bad, 0.0, ivar)
            finite = np.isfinite(flux)
            wsum[pos] += weight  # pos has no repeats within one arm, so fancy-index += is exact
            fsum[pos] += weight * np.where(bad, 0.0, flux)
            raw_sum[pos] += np.where(finite, flux, 0.0)
            raw_n[pos] += finite
        good = wsum > 0
        flux = np.where(raw_n > 0, raw_sum / np.maximum(raw_n, 1), 0.0)
        flux[good] = fsum[good] / wsum[good]
        return self.wave.copy(), flux, wsum, good


def _merge_split(arm_list: list[_Arm], row: int):
    """Concatenate arms sorted by wavelength, splitting each overlap at its midpoint (no resampling)."""
    order = sorted(arm_list, key=lambda a: a.wave[0])
    lo = [-np.inf] + [0.5 * (max(a.wave[0], b.wave[0]) + min(a.wave[-1], b.wave[-1])) for a, b in zip(order, order[1:])]
    hi = lo[1:] + [np.inf]
    parts = []
    for arm, a, b in zip(order, lo, hi):
        keep = (arm.wave >= a) & (arm.wave < b)
        bad = arm.bad[row][keep]
        parts.append((arm.wave[keep], arm.flux[row][keep], np.where(bad, 0.0, arm.ivar[row][keep]), ~bad))
    wave, flux, ivar, good = (np.concatenate(x) for x in zip(*parts))
    return wave, np.nan_to_num(flux), ivar, good


def _fibermap(hdul: fits.HDUList, nspec: int, notes: list[str]) -> list[dict[str, Any]]:
    """Per-row meta from FIBERMAP (plus primary header keys), or header-only meta with a note."""
    header = hdul[0].header
    base = {key: scalar(header[key]) for key in _HEADER_KEYS if key in header}
    if "FIBERMAP" not in hdu_names(hdul):
        notes.append("no FIBERMAP: no TARGETID or RA/DEC")
        return [dict(base) for _ in range(nspec)]
    columns = read_columns(hdul["FIBERMAP"], tuple(col for _, col in _FIBERMAP_COLUMNS))
    nrows = hdul["FIBERMAP"].header.get("NAXIS2", 0)
    if nrows != nspec:
        notes.append(f"FIBERMAP has {nrows} rows for {nspec} spectra: ignored")
        return [dict(base) for _ in range(nspec)]
    metas = []
    for row in range(nspec):
        meta = dict(base)
        for key, col in _FIBERMAP_COLUMNS:
            if col in columns:
                meta[key] = scalar(columns[col][row])
        metas.append(meta)
    return metas


def read(hdul: fits.HDUList, path: str | Path) -> list[Spectrum]:
    """One merged spectrum per target row."""
    parts = _arm_parts(hdul)
    complete = arms(hdul)
    names = hdu_names(hdul)
    repeated = sorted({n for n in names if names.count(n) > 1 and n.endswith((*_ARM_PARTS, "_MASK", "FIBERMAP"))})
    if repeated:
        raise SpectrumReadError(path, f"ambiguous DESI file: HDU names {', '.join(repeated)} appear more than once")
    for prefix, have in parts.items():
        # A file cut at an HDU boundary is still valid FITS: refuse it rather than silently drop an arm or its mask.
        if have & set(_ARM_PARTS) and not have.issuperset(_ARM_PARTS):
            missing = ", ".join(prefix + p for p in _ARM_PARTS if p not in have)
            raise SpectrumReadError(path, f"arm {prefix} is incomplete: no {missing} HDU (truncated file?)")
    if set(complete) < {"B", "R", "Z"}:
        # DESI spectrographs always write all three cameras; fewer arms means the file lost its tail.
        missing = ", ".join(sorted({"B", "R", "Z"} - set(complete)))
        raise SpectrumReadError(path, f"DESI arms {', '.join(complete)} present but {missing} missing (truncated file?)")
    with_mask = [p for p in complete if "_MASK" in parts[p]]
    if with_mask and len(with_mask) != len(complete):
        missing = ", ".join(f"{p}_MASK" for p in complete if p not in with_mask)
        raise SpectrumReadError(path, f"only some arms have a MASK HDU: no {missing} (truncated file?)")
    arm_list = [_Arm(hdul, name, str(path)) for name in complete]
    arm_list.sort(key=lambda arm: arm.wave[0] if arm.wave.size else np.inf)  # blue to red
    nspec = arm_list[0].flux.shape[0]
    for arm in arm_list[1:]:
        if arm.flux.shape[0] != nspec:
            raise SpectrumReadError(path, f"arm {arm.name} has {arm.flux.shape[0]} spectra, arm {arm_list[0].name} {nspec}")
    notes: list[str] = []
    indices = _lattice_indices(arm_list)
    plan = _LatticePlan(arm_list, indices) if indices is not None else None
    if plan is None and len(arm_list) > 1:
        notes.append("arms not on a common wavelength lattice: overlaps split at their midpoint, not combined")
    metas = _fibermap(hdul, nspec, notes)
    spectra = []
    for row in range(nspec):
        if plan is not None:
            wave, flux, ivar, good = plan.merge(arm_list, row)
        else:
            wave, flux, ivar, good = _merge_split(arm_list, row)
        spectra.append(
            Spectrum(
                source=str(path), row=row, loglam=np.log10(wave), flux=flux, ivar=ivar, good=good,
                format=FORMAT, meta=metas[row], notes=list(notes),
            )
        )
    return spectra
