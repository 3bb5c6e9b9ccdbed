"""fnet.simulate: physics of the parametric model, template coverage, noise/masks from real vectors, BOSS files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from conftest import require_shared
from fnet.simulate import (
    QuasarSimulator,
    SimulatorConfig,
    draw_redshifts,
    to_spectra,
    write_simulated_set,
    write_spec_fits,
)
from fnet.simulate.absorbers import absorber_transmission
from fnet.simulate.igm import LYA, LognormalForest, tau_eff_fg08
from fnet.simulate.lattice import lattice, redshift_table
from fnet.simulate.noise import NODATA
from fnet.simulate.templates import template_library

CLEAN = dict(line_shifts=False, bal_fraction=0.0, absorber_rate=0.0, sky_residual=0.0)


@pytest.fixture
def empty_dir(tmp_path):
    d = tmp_path / "no_shared_data"
    d.mkdir()
    return d


def _local_peak(y: np.ndarray, k: int, half: int = 25) -> int:
    """Pixel of the maximum of a 5-pixel running mean within ±half of k."""
    seg = np.convolve(y[k - half : k + half + 1], np.ones(5) / 5, mode="same")
    return k - half + 2 + int(np.argmax(seg[2:-2]))


def test_parametric_lines_land_at_redshifted_rest_wavelength(empty_dir):
    cfg = SimulatorConfig(snr_range=(150, 150), **CLEAN)
    sim = QuasarSimulator("parametric", data_dir=empty_dir, seed=7, config=cfg)
    z = np.array([1.8, 2.3, 2.9, 0.9, 0.45, 0.25])
    lines = [1549.06, 1549.06, 1549.06, 2798.75, 4862.68, 6564.61]  # CIV x3, MgII, Hβ, Hα
    b = sim.sample(len(z), z=z)
    lam = 10**b.loglam
    for i, lam0 in enumerate(lines):
        k = int(np.argmin(np.abs(lam - lam0 * (1 + z[i]))))
        assert b.good[i, k - 25 : k + 26].mean() > 0.8
        assert abs(_local_peak(b.flux[i], k) - k) <= 2, (z[i], lam0)
        assert abs(_local_peak(b.model[i], k) - k) <= 1, (z[i], lam0)


def test_flux_below_lyman_limit_is_dark(empty_dir):
    sim = QuasarSimulator("parametric", data_dir=empty_dir, seed=3, config=SimulatorConfig(**CLEAN))
    b = sim.sample(16, z=np.full(16, 3.6))
    rest = 10**b.loglam / 4.6
    below = b.model[:, (rest > 800) & (rest < 900)].mean(axis=1)
    above = b.model[:, (rest > 1300) & (rest < 1400)].mean(axis=1)
    assert np.all(below < 0.1 * above)
    assert np.mean(below / above) < 0.04


def test_forest_mean_transmission_matches_fg08():
    k0, ll = lattice(3560, 10400)
    forest = LognormalForest()
    z = np.full(300, 3.0)
    t = forest.transmission(ll, z, np.random.default_rng(1))
    lam = 10**ll
    sel = (lam / 4.0 > 1041) & (lam / 4.0 < 1185)
    expected = np.exp(-tau_eff_fg08(lam[sel] / LYA - 1))
    assert abs(t[:, sel].mean() - expected.mean()) < 0.01
    assert t[:, sel].std() > 0.2  # fluctuations, not a smooth mean
    assert np.all(t[:, lam > LYA * 4.0 + 1] == 1.0)
    # through the simulator: forest on / off with the same seed differ only by the forest
    cfg_on = SimulatorConfig(lyman_limit=False, **CLEAN)
    cfg_off = SimulatorConfig(forest=False, lyman_limit=False, **CLEAN)
    on = QuasarSimulator("parametric", data_dir="/nonexistent", seed=5, config=cfg_on).sample(64, z=np.full(64, 3.0))
    off = QuasarSimulator("parametric", data_dir="/nonexistent", seed=5, config=cfg_off).sample(64, z=np.full(64, 3.0))
    ratio = on.model[:, sel].mean(axis=0) / off.model[:, sel].mean(axis=0)
    assert abs(ratio.mean() - expected.mean()) < 0.03


def test_template_mode_is_finite_and_never_extrapolates():
    require_shared("templates")
    sim = QuasarSimulator("templates", seed=2)
    b = sim.sample(200, z_range=(0.0, 7.0))
    assert np.isfinite(b.flux).all() and np.isfinite(b.ivar).all() and np.isfinite(b.model).all()
    assert set(b.params["source"]) <= set(sim.templates.sources)
    lam = 10**b.loglam
    lib = sim.templates
    for i in range(len(b)):
        src = lib.bases.get(b.params["source"][i]) or lib.composites.get(b.params["source"][i])
        lo, hi = src.lam_range
        rest = lam[b.good[i]] / (1 + b.z[i])
        assert np.all(rest[rest > 912] >= lo - 1e-6) and np.all(rest <= hi + 1e-6)
        # no flat run where an edge value would have been repeated
        m = b.model[i, b.good[i] & (lam / (1 + b.z[i]) > 950)]
        flat = np.diff(m) == 0
        assert not np.any(np.convolve(flat, np.ones(8), mode="valid") == 8)
    # a template asked for pixels it does not cover reports them and leaves them at zero
    k0, ll = lattice(3560, 10400)
    flux, covered, _ = lib.draw("QSO-LOZ", ll, np.array([0.0]), np.random.default_rng(0))
    red = 10**ll > lib.bases["QSO-LOZ"].lam_range[1] + 1
    assert red.any() and not covered[0, red].any() and np.all(flux[0, red] == 0)


def test_template_forest_is_not_counted_twice():
    """Templates that already hold a mean forest end up with the FG08 mean, not (FG08 mean) x (their own)."""
    require_shared("templates")
    z0 = 3.0
    cfg = SimulatorConfig(absorber_rate=0.0, bal_fraction=0.0, lyman_limit=False)
    sim = QuasarSimulator("templates", seed=6, config=cfg)
    b = sim.sample(400, z=np.full(400, z0))
    rest = 10**b.loglam / (1 + z0)
    xs, ys = [], []
    for a, c in ((1320, 1330), (1440, 1460), (1690, 1705)):
        sel = (rest > a) & (rest < c)
        xs.append(np.log(rest[sel].mean()))
        ys.append(np.log(b.model[:, sel].mean(axis=1)))
    slope, icpt = np.polyfit(np.array(xs), np.array(ys), 1)
    sel = (rest > 1070) & (rest < 1160)
    ratio = (b.model[:, sel] / np.exp(slope[:, None] * np.log(rest[sel])[None, :] + icpt[:, None])).mean(axis=1)
    expected = np.exp(-tau_eff_fg08(rest[sel] * (1 + z0) / LYA - 1)).mean()
    for name in set(b.params["source"]):
        assert abs(np.median(ratio[b.params["source"] == name]) - expected) < 0.05, name


def test_redshift_table_matches_interp_and_reports_coverage():
    table = np.sin(np.arange(3000) / 9.0)
    vals, cov = redshift_table(table, 33000, 35515, 4656, np.array([0.0, 0.31, 0.9]))
    for i, z in enumerate([0.0, 0.31, 0.9]):
        x = 35515 + np.arange(4656) - np.log10(1 + z) / 1e-4 - 33000
        ref = np.interp(x, np.arange(3000), table, left=np.nan, right=np.nan)
        assert np.array_equal(np.isfinite(ref), cov[i])
        assert np.allclose(vals[i][cov[i]], ref[cov[i]], atol=1e-9)


def test_noise_pulls_have_unit_variance(empty_dir):
    for data_dir in (None, empty_dir):
        sim = QuasarSimulator("parametric", data_dir=data_dir, seed=4, config=SimulatorConfig(sky_residual=0.0))
        b = sim.sample(64)
        pull = ((b.flux - b.model) * np.sqrt(b.ivar))[b.good]
        assert abs(pull.std() - 1.0) < 0.02 and abs(pull.mean()) < 0.02
        assert np.all(b.ivar[~b.good] == 0) and np.all(b.flux[~b.good] == 0)


def test_masks_and_zero_ivar_come_from_real_vectors():
    require_shared("sdss", "dr16")
    sim = QuasarSimulator("parametric", seed=8)
    assert sim.noise.kind == "real" and len(sim.noise) >= 80
    b = sim.sample(128)
    k = np.arange(len(b.loglam))
    fracs_sim = []
    for i in range(len(b)):
        v = b.params["noise_vector"][i]
        inside = (k >= b.params["pix_start"][i]) & (k <= b.params["pix_end"][i]) & sim.noise.present[v]
        gap = (k >= b.params["gap_start"][i]) & (k < b.params["gap_start"][i] + b.params["gap_len"][i])
        inside &= ~gap
        assert np.array_equal(b.and_mask[i, inside], sim.noise.and_mask[v, inside])
        assert np.all(b.ivar[i, inside & (sim.noise.ivar[v] == 0)] == 0)
        assert np.all(b.and_mask[i, ~inside] & (1 << NODATA))
        fracs_sim.append(np.mean(b.and_mask[i, inside] != 0))
    real = []
    for path in sorted(require_shared("sdss", "dr16").glob("spec-*.fits")):
        real.append(np.mean(np.asarray(fits.getdata(path, 1)["AND_MASK"]) != 0))
    ratio = np.mean(fracs_sim) / np.mean(real)
    assert 0.67 < ratio < 1.5, (np.mean(fracs_sim), np.mean(real))


def test_sky_residuals_sit_on_the_real_sky_lines():
    require_shared("sdss", "dr16")
    sim = QuasarSimulator("parametric", seed=10, config=SimulatorConfig(sky_residual=3.0))
    b = sim.sample(96)
    pull = (b.flux - b.model) * np.sqrt(b.ivar)
    near = sim.noise.sky_lines[b.params["noise_vector"]] > 5.0
    assert pull[b.good & near].std() > 1.3 and pull[b.good & ~near].std() < 1.15


def test_truncation_windows(empty_dir):
    cfg = SimulatorConfig(p_blue_cut=0.5, p_red_cut=0.5, p_gap=0.3)
    sim = QuasarSimulator("parametric", data_dir=empty_dir, seed=9, config=cfg)
    b = sim.sample(200)
    lam = 10**b.loglam
    start, end = lam[b.params["pix_start"]], lam[b.params["pix_end"]]
    assert np.all((start >= 3560) & (start <= 3801)) and np.all((end >= 8999) & (end <= 10400))
    assert start.std() > 30 and end.std() > 200  # random, not fixed
    for i in range(len(b)):
        g = np.nonzero(b.good[i])[0]
        assert g[0] >= b.params["pix_start"][i] and g[-1] <= b.params["pix_end"][i]
    assert (b.params["gap_len"] > 0).mean() > 0.15


def test_damped_lya_equivalent_width():
    lam = np.linspace(3600, 5500, 100000)
    t = absorber_transmission(lam, np.array([[2.5]]), np.array([[20.3]]))[0]
    rest = lam / 3.5
    sel = (rest > 1100) & (rest < 1400)
    ew = np.trapezoid(1 - t[sel], rest[sel])
    assert 9.0 < ew < 11.5  # W ≈ 7.3 (N/1e20)^0.5 Å for a damped line
    assert t[np.argmin(np.abs(rest - LYA))] < 1e-6


def test_seeds_reproduce(empty_dir):
    a = QuasarSimulator("parametric", data_dir=empty_dir, seed=11).sample(8)
    b = QuasarSimulator("parametric", data_dir=empty_dir, seed=11).sample(8)
    c = QuasarSimulator("parametric", data_dir=empty_dir, seed=12).sample(8)
    for name in ("flux", "ivar", "and_mask", "good", "z", "model"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.flux, c.flux)
    sim = QuasarSimulator("parametric", data_dir=empty_dir, seed=1)
    d, e = sim.sample(4, rng=np.random.default_rng(5)), sim.sample(4, rng=np.random.default_rng(5))
    assert np.array_equal(d.flux, e.flux)


def test_templates_reproduce_with_seed():
    require_shared("templates")
    a = QuasarSimulator("mixed", seed=21).sample(16)
    b = QuasarSimulator("mixed", seed=21).sample(16)
    assert np.array_equal(a.flux, b.flux) and list(a.params["source"]) == list(b.params["source"])


def test_parametric_mode_without_shared_data(empty_dir):
    sim = QuasarSimulator("auto", data_dir=empty_dir, seed=1)
    assert sim.source == "parametric" and sim.noise.kind == "synthetic"
    b = sim.sample(32, z_range=(0.0, 7.0))
    assert b.flux.shape == (32, len(b.loglam)) and b.flux.dtype == np.float32 and b.and_mask.dtype == np.int32
    assert np.isfinite(b.flux).all() and b.good.any(axis=1).all()
    assert np.allclose(b.loglam * 1e4, np.round(b.loglam * 1e4), atol=1e-6)
    assert 4500 < len(b.loglam) < 4700
    assert 0.0 < np.mean(b.and_mask[b.good] != 0) < 0.2
    with pytest.raises(FileNotFoundError):
        QuasarSimulator("templates", data_dir=empty_dir)


def test_coefficients_fitted_to_real_spectra_at_pipeline_redshift():
    root = require_shared()
    lib = template_library(root)
    summary = lib.summary()
    assert summary["QSO-HIZ"]["kept"] >= 40 and summary["QSO-None"]["kept"] >= 60 and summary["QSO-LOZ"]["kept"] >= 15
    assert all(summary[b]["median_rchi2"] < 2.0 for b in ("QSO-LOZ", "QSO-HIZ", "QSO-None"))
    # QSO-HIZ v1.1 is de-absorbed in the Lyα-only forest (header: forest correction applied), absorbed below Lyβ
    assert summary["QSO-HIZ"]["forest_lya"] > 0.95 and summary["QSO-HIZ"]["forest_lyb"] < 0.9
    fits_ = lib.bases["QSO-HIZ"].fits
    for name, z in list(zip(fits_.files, fits_.z))[:5]:
        path = next(root.joinpath("sdss").rglob(name))
        meta = fits.getdata(path, 2)
        assert meta["CLASS"][0].strip() == "QSO" and z == pytest.approx(float(meta["Z"][0]), abs=1e-6)


def test_redshift_distributions():
    rng = np.random.default_rng(0)
    z = draw_redshifts(5000, (0.0, 7.0), rng, "dr16q")
    assert z.min() >= 0 and z.max() <= 7 and np.mean((z > 1) & (z < 3)) > 0.55 and np.mean(z > 4) > 0.02
    u = draw_redshifts(5000, (0.0, 7.0), rng, "uniform")
    assert abs(u.mean() - 3.5) < 0.15


def test_spec_file_round_trip(tmp_path, empty_dir):
    sim = QuasarSimulator("parametric", data_dir=empty_dir, seed=13)
    b = sim.sample(2, z=np.array([2.2, 0.7]))
    a, e = int(b.params["pix_start"][0]), int(b.params["pix_end"][0]) + 1
    path = write_spec_fits(
        tmp_path, b.loglam[a:e], b.flux[0, a:e], b.ivar[0, a:e], b.and_mask[0, a:e], 15000, 61000, 42, 150.1, 2.2,
        z_true=2.2, extra={"model": b.model[0, a:e], "sky": b.sky[0, a:e], "SIM_SOURCE": "parametric"},
    )
    assert path.name == "spec-15000-61000-0042.fits"
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "COADD", "SPALL"]
        assert all(h.header["SIMULATD"] is True for h in hdul)
        assert hdul[0].header["PLATEID"] == 15000 and hdul[0].header["FIBERID"] == 42
        coadd = hdul[1].data
        assert coadd.columns.names == ["flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp", "sky", "model"]
        assert coadd["flux"].dtype == np.dtype(">f4") and coadd["and_mask"].dtype == np.dtype(">i4")
        assert np.array_equal(coadd["flux"], b.flux[0, a:e]) and np.array_equal(coadd["and_mask"], b.and_mask[0, a:e])
        assert np.array_equal(np.round(coadd["loglam"].astype(np.float64) * 1e4), np.round(b.loglam[a:e] * 1e4))
        meta = hdul[2].data
        assert meta["CLASS"][0] == "QSO" and meta["Z"][0] == pytest.approx(2.2) and meta["PLATE"][0] == 15000
        assert meta["SIM_SOURCE"][0] == "parametric"
    readers = pytest.importorskip("fnet.runtime.readers")
    spec = readers.read_spectra(path)[0]
    assert np.allclose(spec.flux, b.flux[0, a:e]) and np.allclose(spec.ivar, b.ivar[0, a:e])
    assert np.allclose(spec.loglam, b.loglam[a:e], atol=1e-6)
    assert spec.meta.get("PLATE") == 15000 and spec.meta.get("FIBERID") == 42


def test_write_simulated_set_and_to_spectra(tmp_path, empty_dir):
    cat = write_simulated_set(tmp_path / "sim", n=5, seed=3, source="parametric", data_dir=empty_dir)
    truth = fits.getdata(cat, 1)
    assert len(truth) == 5 and fits.getheader(cat, 1)["SIMULATD"] is True
    for row in truth:
        path = tmp_path / "sim" / row["FILENAME"].strip()
        assert path.exists()
        assert fits.getdata(path, 2)["Z"][0] == pytest.approx(row["Z"], rel=1e-6)
    b = QuasarSimulator("parametric", data_dir=empty_dir, seed=3).sample(3)
    specs = to_spectra(b, "sim")
    assert [s.meta["Z_TRUE"] for s in specs] == list(b.z)
    assert all(len(s.loglam) == b.params["pix_end"][i] - b.params["pix_start"][i] + 1 for i, s in enumerate(specs))
