"""ZWARN bits (fnet.runtime.zwarn): each bit set exactly when its documented condition holds."""

from __future__ import annotations

import numpy as np

from fnet.runtime.model_package import DEFAULT_QUALITY
from fnet.runtime.zwarn import ZWarn, compute_zwarn, secondary_mass


def _zwarn(**overrides):
    n = 1
    args = dict(coverage=np.ones(n), sn_median=np.full(n, 10.0), ivar_known=np.ones(n, bool), z=np.full(n, 2.0),
                z_err=np.full(n, 0.001), z_range=(0.0, 7.0), quality=DEFAULT_QUALITY)
    args.update({k: np.atleast_1d(v) if k not in ("z_range", "quality") else v for k, v in overrides.items()})
    return int(compute_zwarn(**args)[0])


def test_a_clean_spectrum_has_no_bit():
    assert _zwarn() == 0


def test_each_condition_sets_its_own_bit():
    assert _zwarn(coverage=0.3) == ZWarn.LITTLE_COVERAGE
    assert _zwarn(sn_median=0.5) == ZWarn.LOW_SN
    assert _zwarn(ivar_known=False, sn_median=np.nan) == ZWarn.SN_UNKNOWN  # unknown S/N is not "low"
    assert _zwarn(z=6.9999) == ZWarn.Z_OUT_OF_RANGE
    assert _zwarn(z_err=0.05) == ZWarn.BROAD_PDF  # 0.05 / 3 * c = 5000 km/s > 3000


def test_multiple_peaks_from_posterior_mass_far_from_z():
    centres = np.linspace(0, 7, 701)
    pdf = np.exp(-0.5 * ((centres - 2.0) / 0.01) ** 2)
    bimodal = pdf + np.exp(-0.5 * ((centres - 4.0) / 0.01) ** 2)
    assert secondary_mass(pdf[None], centres, np.array([2.0]))[0] < 1e-6
    assert abs(secondary_mass(bimodal[None], centres, np.array([2.0]))[0] - 0.5) < 1e-3
    assert _zwarn(pdf=bimodal[None], centres=centres) == ZWarn.MULTIPLE_PEAKS


def test_bit_values_are_the_documented_ones():
    assert {b.name: b.value for b in ZWarn} == {
        "BAD_INPUT": 1, "LITTLE_COVERAGE": 2, "LOW_SN": 4, "Z_OUT_OF_RANGE": 8, "BROAD_PDF": 16,
        "MULTIPLE_PEAKS": 32, "SN_UNKNOWN": 64, "IMPLAUSIBLE_DATA": 128, "CLASS_UNCERTAIN": 256}
