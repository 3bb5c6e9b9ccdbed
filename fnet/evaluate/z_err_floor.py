"""A Z_ERR floor for reference redshifts: fitted on real spectra with catalogue redshifts, judged on others.

Why: a P(z) trained on simulations knows the network's own error, not how far a survey catalogue's redshift
(visual inspection, another pipeline, other emission lines) lies from it. That scatter adds in quadrature:
Z_ERR = sqrt(Z_ERR_pz^2 + (V (1+z)/c)^2) (fnet.runtime.heads, ``z_err_floor_kms``). V can only be measured on
real spectra, so every coverage this module reports for judging V is of spectra V was not fitted on.
"""

from __future__ import annotations

import math

import numpy as np

from ..runtime.constants import C_KMS

COVERAGE = 0.6827  # the share of a Gaussian within 1 sigma


def floor_needed(z: np.ndarray, z_err: np.ndarray, z_ref: np.ndarray) -> np.ndarray:
    """Per spectrum, the floor V (km/s) at which |z - z_ref| equals Z_ERR with the floor (0 where already within)."""
    z, z_err, z_ref = (np.asarray(a, dtype=np.float64) for a in (z, z_err, z_ref))
    excess = np.sqrt(np.clip((z - z_ref) ** 2 - z_err ** 2, 0.0, None))
    return C_KMS * excess / (1.0 + z)


def within(z: np.ndarray, z_err: np.ndarray, z_ref: np.ndarray, floor_kms: float) -> np.ndarray:
    """True where |z - z_ref| < Z_ERR with the floor added (the catalog's Z_ERR if the package holds that floor)."""
    z, z_err, z_ref = (np.asarray(a, dtype=np.float64) for a in (z, z_err, z_ref))
    return np.abs(z - z_ref) < np.hypot(z_err, floor_kms * (1.0 + z) / C_KMS)


def fit_floor(z: np.ndarray, z_err: np.ndarray, z_ref: np.ndarray, coverage: float = COVERAGE) -> float:
    """The smallest whole km/s V putting at least `coverage` of these spectra within 1 Z_ERR (0 if they already are)."""
    needed = np.sort(floor_needed(z, z_err, z_ref))
    if len(needed) == 0:
        raise ValueError("no spectra to fit a Z_ERR floor on")
    k = math.ceil(coverage * len(needed))  # this many must be covered: the k-th smallest need sets V
    v = needed[k - 1]
    return 0.0 if v == 0 else float(math.floor(v) + 1)  # strictly above it: "within" is a strict inequality


def cross_fit(z: np.ndarray, z_err: np.ndarray, z_ref: np.ndarray, splits: int = 50, seed: int = 0) -> dict:
    """Random halvings: V fitted on each half, the other half counted; every spectrum judged by a V not fitted on it.

    Returns the pooled held-out coverage of each split (both halves judged), their mean and range, and the V fitted.
    """
    z, z_err, z_ref = (np.asarray(a, dtype=np.float64) for a in (z, z_err, z_ref))
    n = len(z)
    if n < 4:
        raise ValueError(f"cross-fitting a Z_ERR floor needs at least 4 spectra, got {n}")
    rng = np.random.default_rng(seed)
    coverages, floors = [], []
    for _ in range(splits):
        order = rng.permutation(n)
        halves = order[: n // 2], order[n // 2:]
        hits = 0
        for fit_on, judge in (halves, halves[::-1]):
            v = fit_floor(z[fit_on], z_err[fit_on], z_ref[fit_on])
            floors.append(v)
            hits += int(within(z[judge], z_err[judge], z_ref[judge], v).sum())
        coverages.append(hits / n)
    c = np.asarray(coverages)
    return {"n": n, "splits": splits, "seed": seed, "held_out_coverage_mean": float(c.mean()),
            "held_out_coverage_min": float(c.min()), "held_out_coverage_max": float(c.max()),
            "held_out_coverage_p5_p95": [float(np.percentile(c, 5)), float(np.percentile(c, 95))],
            "floor_kms_median": float(np.median(floors)), "floor_kms_range": [float(min(floors)), float(max(floors))]}
