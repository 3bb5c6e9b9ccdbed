"""ZWARN warning bits, in the spirit of redrock's ZWARN: 0 means nothing looked wrong.

Thresholds come from the model package's fnet.quality (defaults in model_package.DEFAULT_QUALITY);
they are documented with the bits in docs/catalog.md.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

from .constants import C_KMS



class ZWarn(IntFlag):
    """Bits of the catalog's ZWARN column."""

    BAD_INPUT = 1 << 0  # the spectrum could not be processed; Z is NaN (see STATUS/MESSAGE)
    LITTLE_COVERAGE = 1 << 1  # good pixels cover less than quality.min_coverage of the model grid
    LOW_SN = 1 << 2  # median S/N per grid pixel below quality.min_sn_median
    Z_OUT_OF_RANGE = 1 << 3  # Z at or beyond the edge of the training redshift range
    BROAD_PDF = 1 << 4  # Z_ERR larger than quality.max_dv_err_kms (as a velocity)
    MULTIPLE_PEAKS = 1 << 5  # more than quality.max_secondary_mass of P(z) lies away from the peak
    SN_UNKNOWN = 1 << 6  # the file has no inverse variance: S/N and LOW_SN cannot be judged
    IMPLAUSIBLE_DATA = 1 << 7  # flux or S/N beyond what a spectrograph records (units? corrupt values?)
    CLASS_UNCERTAIN = 1 << 8  # class head only: its most probable class below quality.min_class_prob (or NaN),
    # or outside the redshift range the training set held it in at this Z (the head's class_z_range)


ZWARN_DESCRIPTIONS = {bit.name: bit.value for bit in ZWarn}
# Velocity half-window around the P(z) peak counted as "the peak" for MULTIPLE_PEAKS.
PEAK_WINDOW_KMS = 6000.0


def secondary_mass(pdf: np.ndarray, centres: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Posterior mass farther than PEAK_WINDOW_KMS from each row's Z."""
    dv = C_KMS * (centres[None, :] - z[:, None]) / (1.0 + z[:, None])
    near = np.abs(dv) <= PEAK_WINDOW_KMS
    return 1.0 - (pdf * near).sum(axis=1) / np.maximum(pdf.sum(axis=1), 1e-30)


def compute_zwarn(*, coverage: np.ndarray, sn_median: np.ndarray, ivar_known: np.ndarray, z: np.ndarray,
                  z_err: np.ndarray, z_range: tuple[float, float], quality: dict,
                  pdf: np.ndarray | None = None, centres: np.ndarray | None = None,
                  p_class: np.ndarray | None = None, class_out_of_range: np.ndarray | None = None) -> np.ndarray:
    """ZWARN bit mask for a batch of successfully processed spectra (p_class: (n, C) class probabilities).

    p_class: the class head's own probabilities, before any class_z_range: a head unsure of the class stays
    flagged even where the ranges leave one class. class_out_of_range: fnet.runtime.heads.Decoded.class_out_of_range.
    """
    zwarn = np.zeros(len(z), dtype=np.int32)
    zwarn |= np.where(coverage < quality["min_coverage"], int(ZWarn.LITTLE_COVERAGE), 0).astype(np.int32)
    known = np.asarray(ivar_known, bool)
    zwarn |= np.where(~known, int(ZWarn.SN_UNKNOWN), 0).astype(np.int32)
    with np.errstate(invalid="ignore"):
        low = known & ~(sn_median >= quality["min_sn_median"])
        zwarn |= np.where(low, int(ZWarn.LOW_SN), 0).astype(np.int32)
        # Within half a per-mille of the range edges the head is saturated: the true z may lie beyond.
        tol = 5e-4 * (1.0 + z_range[1])
        # z = 0 is a physical floor, not a saturation sign: a range starting at 0 is only checked below 0.
        low_edge = z_range[0] if z_range[0] <= 0.0 else z_range[0] + tol
        out = (z < low_edge) | ~(z < z_range[1] - tol) | ~np.isfinite(z)
        zwarn |= np.where(out, int(ZWarn.Z_OUT_OF_RANGE), 0).astype(np.int32)
        dv_err = C_KMS * z_err / (1.0 + z)
        zwarn |= np.where(dv_err > quality["max_dv_err_kms"], int(ZWarn.BROAD_PDF), 0).astype(np.int32)
    if pdf is not None and centres is not None:
        second = secondary_mass(pdf, centres, z)
        zwarn |= np.where(second > quality["max_secondary_mass"], int(ZWarn.MULTIPLE_PEAKS), 0).astype(np.int32)
    if p_class is not None:  # a NaN probability propagates through max and fails >=: uncertain too
        best = np.asarray(p_class, dtype=np.float64).reshape(len(z), -1).max(axis=1, initial=-np.inf)
        uncertain = ~(best >= quality["min_class_prob"])
        if class_out_of_range is not None:
            uncertain |= np.asarray(class_out_of_range, bool)
        zwarn |= np.where(uncertain, int(ZWarn.CLASS_UNCERTAIN), 0).astype(np.int32)
    return zwarn
