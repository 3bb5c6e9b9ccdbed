"""The SDSS log-wavelength lattice (loglam = 1e-4·k) and fast redshifting of rest-frame tables sampled on it.

A rest-frame table on the same 1e-4 dex lattice maps onto the observed grid with ONE fractional offset per row,
so redshifting is two contiguous slices and a blend per row: no per-pixel gathers, no np.interp edge extension.
Pixels outside a table's coverage are reported, never extrapolated.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

STEP = 1e-4


def lattice(wave_min: float, wave_max: float) -> tuple[int, np.ndarray]:
    """First integer index k0 and loglam (= 1e-4·k, float64) of the lattice pixels inside [wave_min, wave_max] Å."""
    k0 = math.ceil(round(math.log10(wave_min) / STEP, 6))
    k1 = math.floor(round(math.log10(wave_max) / STEP, 6))
    return k0, np.arange(k0, k1 + 1) * STEP


def redshift_table(
    table: np.ndarray, table_k0: int, grid_k0: int, m: int, z: np.ndarray, nearest: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Sample rest-frame table(s) at the observed lattice pixels of quasars at z.

    table: (L,) shared by all rows or (n, L) one per row, rest loglam = 1e-4·(table_k0 + i).
    Returns values (n, m) (0 outside coverage) and covered (n, m) bool (0 <= rest index <= L-1).
    nearest=True takes the nearest rest pixel (error <= 35 km/s): only for smooth, broad tables.
    """
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    table = np.asarray(table)
    L = table.shape[-1]
    off = grid_k0 - table_k0 - np.log10(1.0 + z) / STEP  # rest index of observed pixel k is k + off
    base = np.floor(off + 0.5 if nearest else off).astype(np.int64)
    frac = (off - np.floor(off))[:, None]
    pad = m + 2
    if table.ndim == 1:
        padded = np.concatenate([np.zeros(pad, table.dtype), table, np.zeros(pad, table.dtype)])
        win = sliding_window_view(padded, m + 1)
        start = np.clip(base + pad, 0, win.shape[0] - 1)
        rows = win[start]
    else:
        padded = np.zeros((table.shape[0], L + 2 * pad), table.dtype)
        padded[:, pad : pad + L] = table
        win = sliding_window_view(padded, m + 1, axis=1)
        start = np.clip(base + pad, 0, win.shape[1] - 1)
        rows = win[np.arange(n), start]
    if nearest:
        values = rows[:, :m].copy()
    else:
        frac = frac.astype(table.dtype)
        values = rows[:, :m] * (1 - frac)
        values += frac * rows[:, 1:]
    k = np.arange(m)[None, :]
    first = np.ceil(-off - 1e-9)[:, None]  # first covered observed pixel
    last = np.floor(L - 1 - off + 1e-9)[:, None]
    covered = (k >= first) & (k <= last)
    values[~covered] = 0
    return values, covered


def redshift_basis(
    basis: np.ndarray, coef: np.ndarray, table_k0: int, grid_k0: int, m: int, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Like redshift_table for per-row spectra coef @ basis, without forming the (n, L) spectra: float32 (n, m)."""
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    nb, L = basis.shape
    off = grid_k0 - table_k0 - np.log10(1.0 + z) / STEP
    base = np.floor(off).astype(np.int64)
    frac = (off - base).astype(np.float32)[:, None]
    pad = m + 2
    padded = np.zeros((nb, L + 2 * pad), dtype=np.float32)
    padded[:, pad : pad + L] = basis
    start = np.clip(base + pad, 0, L + 2 * pad - (m + 1))
    acc = np.zeros((n, m + 1), dtype=np.float32)
    coef = np.asarray(coef, dtype=np.float32)
    for b in range(nb):
        win = sliding_window_view(padded[b], m + 1)
        acc += coef[:, b, None] * win[start]
    values = acc[:, :m] * (1 - frac)
    values += frac * acc[:, 1:]
    k = np.arange(m)[None, :]
    covered = (k >= np.ceil(-off - 1e-9)[:, None]) & (k <= np.floor(L - 1 - off + 1e-9)[:, None])
    values[~covered] = 0
    return values, covered


def rest_lattice(lam_min: float, lam_max: float) -> tuple[int, np.ndarray]:
    """Rest-frame lattice covering [lam_min, lam_max] Å: first index and wavelengths in Å."""
    k0, loglam = lattice(lam_min, lam_max)
    return k0, 10.0**loglam
