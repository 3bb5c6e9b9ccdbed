"""Preprocessing onto the model grid: placement, flux conservation, masks, normalisation, batching."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_shared
from fnet.runtime.grid import Grid
from fnet.runtime.preprocess import prepare_arrays, rebin

PAPER = Grid(3.5522, 1e-4, 4618)
COARSE = Grid(3.5522, 4e-4, 1155)
IVAR_NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}


def desi_like_spectrum(line_wave: float, seed: int = 0):
    """Linear 0.8 A sampling (not on the log grid), a continuum and one narrow emission line."""
    rng = np.random.default_rng(seed)
    wave = np.arange(3600.0, 9824.0, 0.8)
    flux = 2.0 + 30.0 * np.exp(-0.5 * ((wave - line_wave) / 3.0) ** 2) + rng.normal(0, 0.05, wave.size)
    return np.log10(wave), flux, np.full(wave.size, 400.0), np.ones(wave.size, bool)


@pytest.mark.parametrize("grid", [PAPER, COARSE], ids=["paper", "coarse4x"])
@pytest.mark.parametrize("z", [0.3, 1.5, 2.9, 4.5])
def test_emission_line_lands_within_one_pixel(grid, z):
    line = {0.3: 6564.6, 1.5: 2799.1, 2.9: 1549.1, 4.5: 1215.7}[z] * (1 + z)  # Halpha, MgII, CIV, Lya
    lam, flux, ivar, good = desi_like_spectrum(line)
    if line > 9800:
        pytest.skip("line beyond the DESI-like range")
    out_flux, _, _ = rebin([lam], [flux], [ivar], [good], grid)
    assert abs(np.argmax(out_flux[0]) - grid.pixel_of(line)) <= 1.0


def test_flux_is_conserved_with_uniform_weights():
    rng = np.random.default_rng(1)
    lam = 3.5600 + 1e-4 * np.arange(3000) + 3.3e-5  # off-lattice input
    flux = rng.uniform(1, 10, lam.size)
    ivar, good = np.ones_like(flux), np.ones(lam.size, bool)
    out_flux, _, cover = rebin([lam], [flux], [ivar], [good], COARSE)
    full = cover[0] > 1 - 1e-9
    assert np.all(full[np.argmax(full):len(full) - np.argmax(full[::-1])])  # one contiguous block
    lo_edge, hi_edge = COARSE.edges[:-1][full][0], COARSE.edges[1:][full][-1]
    in_edges = np.concatenate(([lam[0] - 0.5e-4], 0.5 * (lam[1:] + lam[:-1]), [lam[-1] + 0.5e-4]))
    # integral of flux over loglam between the same limits, input pixels cut at the limits
    overlap = np.clip(np.minimum(in_edges[1:], hi_edge) - np.maximum(in_edges[:-1], lo_edge), 0, None)
    assert np.isclose((out_flux[0][full] * COARSE.loglam_step).sum(), (flux * overlap).sum(), rtol=1e-9)


def test_ivar_is_preserved_on_the_same_lattice_and_summed_on_a_coarser_one():
    lam = 3.5523 + 1e-4 * np.arange(4600)  # BOSS files sit exactly on the 1e-4 lattice
    flux, ivar, good = np.ones(lam.size), np.full(lam.size, 2.0), np.ones(lam.size, bool)
    f1, i1, _ = rebin(lam, flux[None], ivar[None], good[None], PAPER)
    assert np.allclose(i1[0, 1:4600], 2.0) and np.allclose(f1[0, 1:4600], 1.0)
    _, i4, c4 = rebin(lam, flux[None], ivar[None], good[None], COARSE)
    assert np.allclose(i4[0][c4[0] > 1 - 1e-9], 8.0)


def test_masked_and_nonfinite_pixels_carry_no_weight():
    lam = 3.5523 + 1e-4 * np.arange(4600)
    flux = np.ones(lam.size)
    ivar = np.ones(lam.size)
    good = np.ones(lam.size, bool)
    flux[100], good[100] = 1e6, False  # masked cosmic ray
    flux[200] = np.nan  # NaN flux, even if flagged good
    ivar[300], flux[300] = 0.0, -1e6  # zero ivar
    ivar[400] = np.inf
    out_flux, out_ivar, _ = rebin(lam, flux[None], ivar[None], good[None], PAPER)
    assert np.isfinite(out_flux).all() and np.isfinite(out_ivar).all()
    for pix in (100, 200, 300, 400):
        assert out_ivar[0, pix + 1] == 0.0  # grid pixel i+1 is input pixel i
    assert np.allclose(out_flux[0][out_ivar[0] > 0], 1.0)


def test_ragged_and_shared_inputs_and_single_vs_batch_agree():
    rng = np.random.default_rng(2)
    lam = 3.5523 + 1e-4 * np.arange(4600)
    flux = rng.normal(5, 1, (4, lam.size))
    ivar = rng.uniform(0.5, 2, (4, lam.size))
    good = rng.uniform(size=(4, lam.size)) > 0.05
    shared = prepare_arrays(lam, flux, ivar, good, PAPER, IVAR_NORM)
    ragged = prepare_arrays([lam] * 4, list(flux), list(ivar), list(good), PAPER, IVAR_NORM)
    single = [prepare_arrays([lam], [flux[k]], [ivar[k]], [good[k]], PAPER, IVAR_NORM) for k in range(4)]
    assert np.allclose(shared.x, ragged.x, atol=1e-6)
    assert np.allclose(shared.x, np.concatenate([s.x for s in single]), atol=1e-6)
    assert np.allclose(shared.sn_median, [s.sn_median[0] for s in single])


def test_ivar_unit_norm_has_zero_weighted_mean_and_unit_rms():
    lam, flux, ivar, good = desi_like_spectrum(5000.0)
    p = prepare_arrays([lam], [flux], [ivar], [good], PAPER, {"scheme": "ivar_unit_norm"})
    w = np.where(p.good[0], p.ivar[0], 0.0)
    x = p.x[0].astype(np.float64)
    assert abs((w * x).sum() / w.sum()) < 1e-5
    assert abs(np.sqrt((w * x**2).sum() / w.sum()) - 1.0) < 1e-4
    # outside the observed range (red end beyond 9824 A) the input sits at the mean level
    assert np.all(p.x[0, PAPER.loglam > np.log10(9830.0)] == 0.0)


def test_zscore_minmax_spans_zero_to_one():
    lam, flux, ivar, good = desi_like_spectrum(5000.0)
    p = prepare_arrays([lam], [flux], [ivar], [good], PAPER, {"scheme": "zscore_minmax"})
    assert p.x.min() == 0.0 and p.x.max() == pytest.approx(1.0)
    assert np.argmax(p.x[0]) == np.argmax(np.where(p.good[0], p.flux[0], -np.inf))


def test_interior_gaps_are_interpolated_not_zeroed():
    lam = 3.5523 + 1e-4 * np.arange(4600)
    flux = np.linspace(1.0, 3.0, lam.size)
    good = np.ones(lam.size, bool)
    good[2000:2100] = False
    p = prepare_arrays(lam, flux[None], np.ones((1, lam.size)), good[None], PAPER, {"scheme": "ivar_unit_norm"})
    gap = slice(2001, 2101)
    assert not p.good[0, gap].any()
    assert np.all(np.diff(p.x[0, 1990:2110]) > 0)  # the linear ramp continues through the gap


def test_unknown_scheme_is_refused():
    lam, flux, ivar, good = desi_like_spectrum(5000.0)
    with pytest.raises(ValueError, match="unknown normalisation"):
        prepare_arrays([lam], [flux], [ivar], [good], PAPER, {"scheme": "nope"})


def test_quality_numbers_on_real_files():
    from fnet.runtime.preprocess import prepare_spectra
    from fnet.runtime.readers import read_spectra

    full = read_spectra(require_shared("sdss", "formats", "spec-4055-55359-0010.fits"))
    trimmed = read_spectra(require_shared("sdss", "dr14-pk1d", "spec-5400-56308-0220.fits"))
    p = prepare_spectra(full + trimmed, PAPER, IVAR_NORM)
    assert p.coverage[0] > 0.9
    assert 0.1 < p.coverage[1] < 0.2  # ~3700-4400 A of 3566-10325 A
    # BOSS spec wavelengths sit on the grid lattice: rebinned flux equals the file's flux
    spec = full[0]
    i = np.rint((spec.loglam - PAPER.loglam_start) / PAPER.loglam_step).astype(int)
    inside = (i >= 0) & (i < PAPER.npix) & spec.good
    assert np.allclose(p.flux[0, i[inside]], spec.flux[inside], rtol=1e-6)
    sn_native = np.median((spec.flux * np.sqrt(spec.ivar))[inside])
    assert p.sn_median[0] == pytest.approx(sn_native, rel=0.05)
