"""Discrete absorbers: intervening Lyman-limit systems and DLAs (damped Lyα/Lyβ + Lyman continuum) and BAL troughs."""

from __future__ import annotations

import numpy as np

from ..runtime.constants import C_KMS

from fnet.simulate.igm import LYA, LYB, LYMAN_LIMIT

_CLASSICAL = 0.02654  # π e² / (m_e c) in cm² Hz
# (rest wavelength Å, oscillator strength, damping constant s^-1) for Lyα and Lyβ
_LYMAN = ((LYA, 0.4164, 6.265e8), (LYB, 0.07912, 1.897e8))
_SIGMA_LL = 6.30e-18  # H I photo-ionisation cross-section at 912 Å, cm²

MAX_SYSTEMS = 6
LOGN_MIN, LOGN_DLA, LOGN_MAX = 17.2, 20.3, 22.0
SLOPE_LLS, SLOPE_DLA = 0.25, 0.8  # dlog(P(>N))/dlogN below / above the DLA threshold


def lls_rate(z: np.ndarray) -> np.ndarray:
    """Incidence dN/dz of systems with log N_HI > 17.2: 0.16 (1+z)^1.6 (≈1.9 at z=3.7, Prochaska et al. 2010)."""
    return 0.16 * (1.0 + np.asarray(z)) ** 1.6


def draw_log_nhi(u: np.ndarray) -> np.ndarray:
    """Inverse CDF of a broken power-law column-density distribution (≈17% of systems are DLAs, log N ≥ 20.3)."""
    p_dla = 10.0 ** (-SLOPE_LLS * (LOGN_DLA - LOGN_MIN))
    low = LOGN_MIN - np.log10(np.clip(u, 1e-12, 1.0)) / SLOPE_LLS
    frac = np.clip(u / p_dla, 1e-12, 1.0)
    high = LOGN_DLA - np.log10(frac) / SLOPE_DLA
    return np.minimum(np.where(u > p_dla, low, high), LOGN_MAX)


def draw_systems(
    z: np.ndarray, lam_min: float, rng: np.random.Generator, rate_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Absorber redshifts and log N_HI, shape (n, MAX_SYSTEMS), NaN where no system; path: absorber Lyα on the grid."""
    n = len(z)
    z_lo = np.maximum(lam_min / LYA - 1.0, 0.0)
    z_hi = (1.0 + z) * (1.0 - 3000.0 / C_KMS) - 1.0  # exclude the proximity zone
    path = np.clip(z_hi - z_lo, 0.0, None)
    mean_z = 0.5 * (z_lo + np.maximum(z_hi, z_lo))
    count = rng.poisson(rate_scale * lls_rate(mean_z) * path)
    u_z = rng.random((n, MAX_SYSTEMS))
    u_n = rng.random((n, MAX_SYSTEMS))
    zabs = z_lo + u_z * np.maximum(z_hi - z_lo, 0.0)[:, None]
    logn = draw_log_nhi(u_n)
    present = np.arange(MAX_SYSTEMS)[None, :] < np.minimum(count, MAX_SYSTEMS)[:, None]
    return np.where(present, zabs, np.nan), np.where(present, logn, np.nan)


def absorber_transmission(lam_obs: np.ndarray, zabs: np.ndarray, logn: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Transmission (n, m) float32 of the systems: Lorentzian damped Lyα and Lyβ plus Lyman-continuum absorption.

    Each system is evaluated only blueward of where its Lyα damping wing falls to τ = 0.003 (systems sorted by
    that reach and processed in chunks, so short ones do not pay for long ones).
    """
    n = zabs.shape[0]
    out = np.ones((n, len(lam_obs)), dtype=np.float32)
    rows, slots = np.nonzero(np.isfinite(zabs))
    if len(rows) == 0:
        return out
    za, nhi = zabs[rows, slots], 10.0 ** logn[rows, slots]
    lam0a, fa, ga = _LYMAN[0]
    # red reach of the Lyα wing: tau = N C lam0^4 / (c^2 dlam^2) = 0.003
    reach = lam0a**2 * np.sqrt(nhi * _CLASSICAL * fa * ga / (4 * np.pi**2) / 3e-3) / (C_KMS * 1e13)
    kmax = np.minimum(np.searchsorted(lam_obs, (lam0a + reach + 2.0) * (1.0 + za)) + 1, len(lam_obs))
    order = np.argsort(kmax)
    for start in range(0, len(order), chunk):
        sel = order[start : start + chunk]
        width = int(kmax[sel].max())
        rest = (lam_obs[None, :width] / (1.0 + za[sel, None])).astype(np.float32)
        nh = nhi[sel].astype(np.float32)[:, None]
        tau = np.where(rest < LYMAN_LIMIT, nh * np.float32(_SIGMA_LL) * (rest / np.float32(LYMAN_LIMIT)) ** 3, 0.0)
        for lam0, f, gamma in _LYMAN:
            dnu = np.float32(C_KMS * 1e13) * (1.0 / rest - np.float32(1.0 / lam0))  # Hz (c in Å/s)
            core = np.float32((gamma / (4 * np.pi)) ** 2)
            tau += nh * (np.float32(_CLASSICAL * f * gamma / (4 * np.pi**2)) / (dnu * dnu + core))
        trans = np.exp(-np.minimum(tau, 80.0))
        # several systems may share a row: multiply one system per row at a time
        r = rows[sel]
        for _ in range(MAX_SYSTEMS):
            if len(r) == 0:
                break
            _, first = np.unique(r, return_index=True)
            out[r[first], :width] *= trans[first]
            keep = np.ones(len(r), bool)
            keep[first] = False
            r, trans = r[keep], trans[keep]
    return out


# BAL ions: rest wavelength and depth relative to CIV (LoBAL-only ions flagged True)
BAL_IONS = (
    (1549.06, 1.0, False),  # C IV
    (1396.76, 0.75, False),  # Si IV
    (1240.14, 0.9, False),  # N V
    (1033.83, 0.8, False),  # O VI
    (1215.67, 0.5, False),  # Lyα
    (1857.40, 0.6, True),  # Al III
    (2798.75, 0.6, True),  # Mg II
)


def draw_bal(n: int, fraction: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """BAL trough parameters: flag, velocity range (km/s), depth, edge softness, LoBAL flag."""
    u = rng.random((6, n))
    is_bal = u[0] < fraction
    v_min = 25000.0 * u[1] ** 2  # most troughs start at low velocity
    width = 2000.0 + 13000.0 * u[2]
    return {
        "bal": is_bal,
        "v_min": v_min,
        "v_max": np.minimum(v_min + width, 30000.0),
        "depth": 0.3 + 0.65 * u[3],
        "soft": 200.0 + 800.0 * u[4],
        "lobal": u[5] < 0.15,
    }


def bal_transmission(lam_rest: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Multiplicative trough transmission (n, m) float32 for rows flagged BAL (1 elsewhere)."""
    out = np.ones(lam_rest.shape, dtype=np.float32)
    rows = np.nonzero(p["bal"])[0]
    if len(rows) == 0:
        return out
    lr = lam_rest[rows].astype(np.float32)
    t = np.ones_like(lr)
    vmin, vmax = p["v_min"][rows, None], p["v_max"][rows, None]
    soft, depth = p["soft"][rows, None], p["depth"][rows, None]
    for lam0, rel, lo_only in BAL_IONS:
        v = np.float32(C_KMS) * (1.0 - lr / np.float32(lam0))  # outflow velocity (positive = blueshifted)
        a = np.clip((v - vmin.astype(np.float32)) / soft.astype(np.float32), -30.0, 30.0)
        b = np.clip((vmax.astype(np.float32) - v) / soft.astype(np.float32), -30.0, 30.0)
        prof = 1.0 / ((1.0 + np.exp(-a)) * (1.0 + np.exp(-b)))
        d = rel * depth * (p["lobal"][rows, None] if lo_only else 1.0)
        t *= 1.0 - np.minimum(d, 0.98).astype(np.float32) * prof
    out[rows] = t
    return out
