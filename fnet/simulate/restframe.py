"""Rest-frame tables for the non-quasar classes: reading templates onto the 1e-4 dex lattice, per-row valid
ranges, line equivalent widths and the 4000 Å break, a running-median continuum, and the shared observing step.

Everything here is shape bookkeeping; what each class does with it lives in stars.py, galaxies.py and agn.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from fnet.simulate.lattice import STEP
from fnet.simulate.noise import NoiseLibrary
from fnet.simulate.observe import (
    apply_calibration_errors, convolve_resolution, draw_truncation, observe, scale_to_magnitude, snr_for_magnitude,
)

# rest-frame vacuum wavelengths (Å) used for measurements and tests
OII = 3728.48  # [O II] 3727/3729 doublet centre
HBETA, OIII, HALPHA = 4862.68, 5008.24, 6564.61
BREAK_BLUE, BREAK_RED = (3850.0, 3950.0), (4000.0, 4100.0)  # Balogh et al. (1999) narrow D4000 windows


def read_lattice_image(path: Path) -> tuple[int, np.ndarray, fits.Header]:
    """A BOSS idlspec2d template image (rows on loglam = COEFF0 + COEFF1·i): lattice start index, rows, header."""
    with fits.open(path, memmap=False) as hdul:
        hdr = hdul[0].header.copy()
        data = np.atleast_2d(np.asarray(hdul[0].data, dtype=np.float64))
    c0, c1 = float(hdr["COEFF0"]), float(hdr["COEFF1"])
    k0 = round(c0 / STEP)
    if abs(c1 - STEP) > 1e-9 or abs(c0 / STEP - k0) > 1e-3:
        raise ValueError(f"{path}: not on the 1e-4 dex lattice (COEFF0={c0}, COEFF1={c1})")
    return int(k0), data, hdr


def valid_range(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, first and last index of the part that is data: constant padding at either end is not (the BOSS
    white-dwarf/carbon/L-dwarf star templates repeat their edge values outside ~3585-10330 Å)."""
    varies = np.diff(rows, axis=1) != 0
    first = np.argmax(varies, axis=1)
    last = rows.shape[1] - 1 - np.argmax(varies[:, ::-1], axis=1)
    return first, last


def rebin_to_lattice(lam: np.ndarray, flux: np.ndarray) -> tuple[int, np.ndarray]:
    """Flux-conserving average of a sampled spectrum (any wavelength grid, Å) over the 1e-4 dex lattice pixels
    lying entirely inside its range: start index and values (a 0.1 Å template keeps its narrow lines' flux)."""
    lam = np.asarray(lam, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ll = np.log10(lam)
    k0 = int(np.ceil(ll[0] / STEP + 0.5))
    k1 = int(np.floor(ll[-1] / STEP - 0.5))
    edges = 10.0 ** ((np.arange(k0, k1 + 2) - 0.5) * STEP)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (flux[1:] + flux[:-1]) * np.diff(lam))])
    area = np.interp(edges, lam, cum)
    return k0, np.diff(area) / np.diff(edges)


def running_median(flux: np.ndarray, width: int = 151) -> np.ndarray:
    """Continuum estimate along the last axis: running median over `width` pixels (block medians interpolated)."""
    flux = np.atleast_2d(flux)
    n, m = flux.shape
    step = max(width // 5, 1)
    centres = np.arange(0, m, step)
    half = width // 2
    meds = np.stack([np.median(flux[:, max(c - half, 0) : c + half + 1], axis=1) for c in centres], axis=1)
    x = np.arange(m)
    return np.stack([np.interp(x, centres, row) for row in meds])


def band_mean(lam: np.ndarray, flux: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Mean flux of each row over lo < λ < hi (NaN where the band is empty)."""
    sel = (lam > lo) & (lam < hi)
    if not sel.any():
        return np.full(np.atleast_2d(flux).shape[0], np.nan)
    return np.atleast_2d(flux)[:, sel].mean(axis=1)


def equivalent_width(lam: np.ndarray, flux: np.ndarray, line: float, half: float = 10.0,
                     side: tuple[float, float] = (25.0, 70.0)) -> np.ndarray:
    """Rest equivalent width (Å, emission > 0) of a line: flux within ±half Å over the median of two side bands."""
    flux = np.atleast_2d(flux)
    core = np.abs(lam - line) < half
    d = np.abs(lam - line)
    cont_sel = (d > side[0]) & (d < side[1])
    if core.sum() < 2 or cont_sel.sum() < 4:
        return np.full(flux.shape[0], np.nan)
    cont = np.median(flux[:, cont_sel], axis=1)
    dlam = np.gradient(lam)[core]
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((flux[:, core] - cont[:, None]) * dlam).sum(axis=1) / cont


def d4000(lam: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Narrow 4000 Å break: mean f_λ in 4000-4100 Å over 3850-3950 Å (f_λ version of Balogh et al. 1999)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return band_mean(lam, flux, *BREAK_RED) / band_mean(lam, flux, *BREAK_BLUE)


def convolve_and_erode(model: np.ndarray, usable: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quasar simulator's resolution step: Gaussian LSF per row, then pixels within 4 of a coverage edge are
    no longer usable (their smoothed value mixes in the zeros outside) and are set to 0."""
    model = convolve_resolution(model.astype(np.float32, copy=False), sigma)
    if not usable.all():
        bad = ~usable
        for sh in range(1, 5):
            bad[:, sh:] |= ~usable[:, :-sh]
            bad[:, :-sh] |= ~usable[:, sh:]
        usable = ~bad
    model[~usable] = 0.0
    return model, usable


def observe_rows(model: np.ndarray, usable: np.ndarray, loglam: np.ndarray, z: np.ndarray, mag: np.ndarray,
                 noise: NoiseLibrary, cfg, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Steps 4-5 of QuasarSimulator.sample for any class: flux calibration to `mag`, S/N from the magnitude (or
    cfg.snr_range), a real noise vector, random truncation/gap, noise, masks and sky residuals, all with the
    quasar simulator's own functions and its SimulatorConfig `cfg` (so every class is observed identically)."""
    n = len(z)
    model = model * scale_to_magnitude(model, loglam, z, mag).astype(np.float32)[:, None]
    apply_calibration_errors(model, loglam, rng, cfg)
    if cfg.snr_range is None:
        snr = snr_for_magnitude(mag) * np.exp(0.25 * rng.standard_normal(n))
    else:
        lo, hi = np.log(cfg.snr_range[0]), np.log(cfg.snr_range[1])
        snr = np.exp(rng.uniform(lo, hi, n))
    vector = rng.integers(0, len(noise), n)
    window = draw_truncation(n, loglam, rng, cfg.p_blue_cut, cfg.p_red_cut, cfg.p_gap)
    obs = observe(model, usable, loglam, z, snr, noise, vector, window, rng, cfg.sky_residual)
    obs.update(model=model.astype(np.float32, copy=False), snr=snr, mag=mag, noise_vector=vector, **window)
    return obs
