"""fnet.simulate.mixture: stars, galaxies and hosted AGN next to the quasars, through the same observing model."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from conftest import require_shared
from fnet.simulate import CLASSES, QuasarSimulator, SpectrumMixSimulator, write_simulated_set
from fnet.simulate.agn import host_fraction, host_to_qso_ratio
from fnet.simulate.mixture import DEFAULT_MIX, STAR_Z_MAX
from fnet.simulate.noise import NODATA
from fnet.simulate.restframe import HALPHA, OII, running_median
from fnet.simulate.stars import C_KMS

CLEAN = dict(sky_residual=0.0, bal_fraction=0.0, absorber_rate=0.0)
CA_K = 3934.78


def _templates():
    require_shared("templates", "star")
    require_shared("templates", "galaxy")


@pytest.fixture(scope="module")
def mixed_batch():
    _templates()
    sim = SpectrumMixSimulator(seed=5, mix={"QSO": 0.4, "AGN": 0.1, "STAR": 0.35, "GALAXY": 0.15},
                               quasar={"sky_residual": 0.0})
    return sim, sim.sample(900)


def _local_extremum(y: np.ndarray, k: int, half: int = 12, sign: int = 1) -> int:
    seg = sign * y[k - half : k + half + 1]
    return k - half + int(np.argmax(seg))


def test_class_fractions_follow_the_mix(mixed_batch):
    sim, b = mixed_batch
    comp = b.params["component"]
    n = len(b)
    for name, p in zip(("QSO", "AGN", "STAR", "GALAXY"), sim.weights):
        frac = np.mean(comp == name)
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (name, frac, p)
    assert set(b.params["spectype"]) == set(CLASSES)
    assert np.all(np.array(CLASSES)[b.params["spectype_index"]] == b.params["spectype"])
    agn = comp == "AGN"
    assert np.all(b.params["spectype"][agn] == "QSO") and np.all(b.params["subtype"][agn] == "AGN+host")
    # the default resembles a quasar target list: about two thirds quasars, stars the main contaminant
    qso = DEFAULT_MIX["QSO"] + DEFAULT_MIX["AGN"]
    assert 0.6 < qso / sum(DEFAULT_MIX.values()) < 0.75 and DEFAULT_MIX["STAR"] > DEFAULT_MIX["GALAXY"]
    for name in ("flux", "ivar", "model"):
        assert np.isfinite(getattr(b, name)).all()


def test_stars_are_at_rest_and_match_their_template(mixed_batch):
    sim, b = mixed_batch
    rows = np.nonzero(b.params["component"] == "STAR")[0]
    assert len(rows) > 200
    assert np.all(np.abs(b.z[rows]) < STAR_Z_MAX)
    assert np.std(b.params["v_kms"][rows]) > 60  # a few hundred km/s, not all at rest
    lib = sim.stars.lib
    lam = 10**b.loglam
    tlam = 10 ** ((lib.k0 + np.arange(lib.rows.shape[1])) * 1e-4)
    sel = (lam > 3800) & (lam < 9000)

    def lines(y):  # continuum-normalised, mean-subtracted: correlation of the absorption/emission lines
        y = y / np.maximum(running_median(y, 101), 1e-12) - 1.0
        return y - y.mean(axis=-1, keepdims=True)

    tmpl = lines(np.stack([np.interp(lam[sel], tlam, t) for t in lib.rows]))
    tmpl /= np.linalg.norm(tmpl, axis=1, keepdims=True)
    hits, vel_ok, tried = 0, 0, 0
    v_grid = np.arange(-800.0, 801.0, 10.0)
    for i in rows[:80]:
        if b.params["subtype"][i] == "CV":
            continue
        tried += 1
        own = lib.names.index(b.params["template"][i])
        rest = lines(np.interp(lam[sel] * (1 + b.z[i]), lam, b.model[i])[None, :])[0]
        corr = tmpl @ (rest / np.linalg.norm(rest))
        hits += int(own in np.argsort(corr)[-2:])
        # velocity: the correlation with the own template peaks at the true radial velocity (within 1 pixel)
        own_lines = lib.rows[own] / np.maximum(running_median(lib.rows[own], 101)[0], 1e-12) - 1.0
        obs = lines(b.model[i, sel][None, :])[0]
        cc = [np.dot(obs, np.interp(lam[sel] / (1 + v / C_KMS), tlam, own_lines)) for v in v_grid]
        vel_ok += int(abs(v_grid[int(np.argmax(cc))] - b.params["v_kms"][i]) <= 69.0)
    assert tried > 50
    assert hits / tried > 0.85, (hits, tried)
    assert vel_ok / tried > 0.85, (vel_ok, tried)


def test_galaxy_features_land_at_their_redshift():
    _templates()
    sim = SpectrumMixSimulator(seed=8, mix={"GALAXY": 1}, quasar={**CLEAN, "snr_range": (40, 40)})
    b = sim.sample(160)
    lam = 10**b.loglam
    checked = {"Ha": 0, "OII": 0, "CaK": 0}
    for i in range(len(b)):
        z, sub = b.z[i], b.params["subtype"][i]
        for key, line, ew_key in (("Ha", HALPHA, "ew_ha"), ("OII", OII, "ew_oii")):
            k = int(np.argmin(np.abs(lam - line * (1 + z))))
            if sub != "ELG" or not (30 < k < len(lam) - 30) or not (b.params[ew_key][i] > 15):
                continue
            assert abs(_local_extremum(b.model[i], k) - k) <= 2, (key, z, b.params["template"][i])
            if b.good[i, k - 12 : k + 13].all():
                smooth = np.convolve(b.flux[i], np.ones(3) / 3, mode="same")
                assert abs(_local_extremum(smooth, k) - k) <= 2, (key, "noisy", z)
            checked[key] += 1
        k = int(np.argmin(np.abs(lam - CA_K * (1 + z))))
        if sub == "LRG" and 30 < k < len(lam) - 30:
            assert abs(_local_extremum(b.model[i], k, half=6, sign=-1) - k) <= 2, ("Ca K", z)
            red = b.model[i, (lam > 4000 * (1 + z)) & (lam < 4100 * (1 + z))].mean()
            blue = b.model[i, (lam > 3850 * (1 + z)) & (lam < 3950 * (1 + z))].mean()
            assert red / blue > 1.25  # the 4000 Å break sits at 4000(1+z)
            checked["CaK"] += 1
    assert min(checked.values()) >= 8, checked
    assert np.all((b.z >= 0.005) & (b.z <= 1.2))
    assert {"LRG", "ELG", "intermediate"} <= set(b.params["subtype"])


def test_agn_host_fraction_follows_the_luminosity_relation():
    _templates()
    assert host_to_qso_ratio(np.array([44.0]))[0] == pytest.approx(0.8052)
    assert host_fraction(np.array([43.0]))[0] == pytest.approx(3.4252 / 4.4252, rel=1e-4)
    assert host_fraction(np.array([45.2]))[0] == 0.0
    sim = SpectrumMixSimulator(seed=9, mix={"AGN": 1}, quasar=CLEAN)
    b = sim.sample(240)
    f, logl, z = b.params["host_fraction"], b.params["log_l5100"], b.z
    assert np.all((z >= 0.03) & (z <= 0.8)) and np.all((f >= 0) & (f < 1))
    assert np.median(f[logl < 43.5]) > 0.6 and np.median(f[logl > 44.8]) < 0.15
    assert np.mean(f[z < 0.5] > 0.5) > np.mean(f[z > 0.5] > 0.5) + 0.15  # host-dominated at low z
    # the recorded luminosity is that of the calibrated spectrum (the fixed point converged)
    lam = 10**b.loglam
    rest = lam[None, :] / (1 + z[:, None])
    win = (rest > 5050) & (rest < 5150) & (b.model > 0)
    f5100 = np.where(win, b.model, 0).sum(axis=1) / win.sum(axis=1)
    assert np.allclose(sim.agn.log_l5100(f5100, z), logl, atol=0.03)


def test_non_quasars_share_the_quasars_noise_masks_and_truncation(mixed_batch):
    sim, b = mixed_batch
    is_q = b.params["component"] == "QSO"
    pull = (b.flux - b.model) * np.sqrt(b.ivar)
    k = np.arange(len(b.loglam))
    lam = 10**b.loglam
    stats = {}
    for name, rows in (("qso", np.nonzero(is_q)[0]), ("other", np.nonzero(~is_q)[0])):
        p = pull[rows][b.good[rows]]
        assert abs(p.std() - 1.0) < 0.03 and abs(p.mean()) < 0.03, name
        start, end = lam[b.params["pix_start"][rows]], lam[b.params["pix_end"][rows]]
        masked = []
        for i in rows:
            v = b.params["noise_vector"][i]
            inside = (k >= b.params["pix_start"][i]) & (k <= b.params["pix_end"][i]) & sim.noise.present[v]
            inside &= ~((k >= b.params["gap_start"][i]) & (k < b.params["gap_start"][i] + b.params["gap_len"][i]))
            assert np.all(b.and_mask[i, ~inside] & (1 << NODATA))
            masked.append(np.mean(b.and_mask[i, inside] != 0))
        stats[name] = (np.mean(start > 3610), np.mean(end < 10300), np.mean(b.params["gap_len"][rows] > 0),
                       np.mean(masked), len(rows))
    (bq, rq, gq, mq, nq), (bo, ro, go, mo, no) = stats["qso"], stats["other"]
    tol = lambda p: 4 * np.sqrt(p * (1 - p) * (1 / nq + 1 / no)) + 0.01  # noqa: E731
    assert abs(bq - bo) < tol(bq) and abs(rq - ro) < tol(rq) and abs(gq - go) < tol(gq), stats
    assert 0.67 < mo / mq < 1.5, stats
    assert sim.noise is sim.qso.noise


def test_same_seed_same_batch():
    _templates()
    a = SpectrumMixSimulator(seed=11).sample(40)
    b = SpectrumMixSimulator(seed=11).sample(40)
    c = SpectrumMixSimulator(seed=12).sample(40)
    for name in ("flux", "ivar", "and_mask", "good", "z", "model", "sky"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for key in a.params:
        assert np.array_equal(a.params[key], b.params[key], equal_nan=a.params[key].dtype.kind == "f"), key
    assert not np.array_equal(a.flux, c.flux)
    sim = SpectrumMixSimulator(seed=1)
    d, e = sim.sample(8, rng=np.random.default_rng(3)), sim.sample(8, rng=np.random.default_rng(3))
    assert np.array_equal(d.flux, e.flux)


def test_given_redshifts():
    _templates()
    z = np.tile([0.0005, 0.3, 2.5], 40)
    b = SpectrumMixSimulator(seed=2).sample(len(z), z=z)
    assert np.array_equal(b.z, z)  # "eligible": every row keeps its z
    comp = b.params["component"]
    assert set(comp[z == 2.5]) == {"QSO"} and "STAR" in set(comp[z == 0.0005]) and "GALAXY" in set(comp[z == 0.3])
    assert not np.any(comp[z != 0.0005] == "STAR")
    o = SpectrumMixSimulator(seed=2, given_z="override").sample(len(z), z=z)
    q = o.params["component"] == "QSO"
    assert np.array_equal(o.z[q], z[q]) and (~q).sum() > 10


def test_galaxy_redshift_shapes_are_configurable():
    _templates()
    default = SpectrumMixSimulator(seed=5, mix={"GALAXY": 1}).sample(200)
    nearby = SpectrumMixSimulator(seed=5, mix={"GALAXY": 1}, galaxy_z_range=(0.001, 1.2),
                                  galaxy_z_shapes={"LRG": (0.1, 0.05), "ELG": (0.1, 0.05),
                                                   "intermediate": (0.1, 0.05)}).sample(200)
    assert np.median(nearby.z) < 0.2 < np.median(default.z)
    assert nearby.z.min() >= 0.001 and nearby.z.max() <= 1.2
    with pytest.raises(ValueError, match="z_shapes"):
        SpectrumMixSimulator(seed=5, mix={"GALAXY": 1}, galaxy_z_shapes={"LRG": (0.1, 0.0)})


def test_quasar_noiseless_matches_sample():
    """QuasarSimulator.noiseless draws exactly what sample() calibrates and observes (same streams)."""
    sim = QuasarSimulator("parametric", data_dir="/nonexistent", seed=1)
    z = np.linspace(0.1, 4.0, 12)
    b = sim.sample(12, z=z, rng=np.random.default_rng(4))
    model, usable, aux = sim.noiseless(z, np.random.default_rng(4))
    for i in range(12):
        ok = usable[i] & (model[i] > 1e-3 * model[i].max())
        ratio = b.model[i, ok] / model[i, ok]
        assert np.allclose(ratio, ratio[0], rtol=1e-5)
    assert list(aux["source"]) == list(b.params["source"])


def test_needs_templates_or_quasars_only(tmp_path):
    with pytest.raises(FileNotFoundError):
        SpectrumMixSimulator(data_dir=tmp_path, seed=1)
    b = SpectrumMixSimulator(data_dir=tmp_path, seed=1, mix={"QSO": 1}).sample(6)
    assert set(b.params["spectype"]) == {"QSO"} and np.isfinite(b.flux).all()
    with pytest.raises(TypeError):
        SpectrumMixSimulator(data_dir=tmp_path, mix={"QSO": 1}, no_such_option=3)
    with pytest.raises(ValueError):
        SpectrumMixSimulator(data_dir=tmp_path, mix={"QUASAR": 1})


def test_write_mixed_set_records_the_class(tmp_path):
    _templates()
    cat = write_simulated_set(tmp_path / "mix", n=12, seed=4, mix={"mix": {"QSO": 1, "STAR": 1, "GALAXY": 1}})
    truth = fits.getdata(cat, 1)
    assert {"SPECTYPE", "SUBTYPE", "HOST_FRAC"} <= set(truth.columns.names)
    assert set(truth["SPECTYPE"]) == {"QSO", "STAR", "GALAXY"}
    for row in truth:
        meta = fits.getdata(tmp_path / "mix" / row["FILENAME"].strip(), 2)
        assert meta["CLASS"][0] == row["SPECTYPE"] and meta["Z"][0] == pytest.approx(row["Z"], abs=1e-6)


def test_calibration_errors_are_smooth_factors_of_the_documented_size():
    from fnet.simulate.observe import calibration_errors

    loglam = np.arange(35520, 40140) * 1e-4
    f = calibration_errors(4000, loglam, np.random.default_rng(0), rms=0.1, arm_step_rms=0.0)
    log_f = np.log(f.astype(np.float64))
    # Legendre terms with sigmas 0.1, 0.05, 0.033: at the ends all add up, at the centre only P2 (= -1/2) is left
    assert np.std(log_f[:, 0]) == pytest.approx(np.sqrt(0.1**2 + 0.05**2 + (0.1 / 3) ** 2), rel=0.08)
    assert np.std(log_f[:, len(loglam) // 2]) == pytest.approx(0.025, rel=0.1)
    assert abs(np.mean(log_f)) < 0.005 and np.abs(np.diff(log_f, 2)).max() < 1e-6  # smooth
    step = np.log(calibration_errors(4000, loglam, np.random.default_rng(1), rms=0.0, arm_step_rms=0.05))
    blue, red = step[:, loglam < np.log10(5600)], step[:, loglam > np.log10(6500)]
    assert np.abs(blue).max() < 0.01 and np.std(red[:, -1]) == pytest.approx(0.05, rel=0.1)


def test_calibration_errors_are_off_by_default_and_change_nothing_else_when_on():
    _templates()
    base = dict(mix={"QSO": 0.4, "STAR": 0.3, "GALAXY": 0.3}, quasar=dict(CLEAN))
    off = SpectrumMixSimulator(seed=9, **base).sample(60)
    again = SpectrumMixSimulator(seed=9, **{**base, "quasar": {**CLEAN, "calibration_rms": 0.0}}).sample(60)
    on = SpectrumMixSimulator(seed=9, **{**base, "quasar": {**CLEAN, "calibration_rms": 0.1,
                                                            "arm_step_rms": 0.05}}).sample(60)
    assert np.array_equal(off.flux, again.flux) and np.array_equal(off.z, on.z)
    assert np.array_equal(off.params["spectype"], on.params["spectype"])
    both = (off.model > 0) & (on.model > 0)
    ratio = np.where(both, on.model / np.where(both, off.model, 1.0), np.nan)
    spread = np.nanstd(np.log(ratio), axis=1)
    assert np.all(spread[np.isfinite(spread)] < 0.5) and np.nanmean(spread) > 0.01  # changed, by factors near 1


def test_splice_bumps_and_blue_ends_act_only_where_documented_and_leave_the_other_terms_as_they_were():
    from fnet.simulate.observe import calibration_errors

    loglam = np.arange(35520, 40140) * 1e-4
    lam = 10**loglam
    base = calibration_errors(3000, loglam, np.random.default_rng(3), rms=0.1, arm_step_rms=0.05)
    bump = calibration_errors(3000, loglam, np.random.default_rng(3), rms=0.1, arm_step_rms=0.05,
                              splice_bump_rms=0.1) / base
    far = (lam < 4400) | (lam > 7400)  # > 5 widths from every possible centre (5500-6400 Å, w <= 200 Å)
    assert np.allclose(bump[:, far], 1.0, atol=1e-4)
    peak = np.log(bump[:, (lam > 5500) & (lam < 6400)]).astype(np.float64)
    extreme = peak[np.arange(len(peak)), np.abs(peak).argmax(axis=1)]
    assert np.std(extreme) == pytest.approx(0.1, rel=0.15)  # b ~ N(0, 0.1) at the bump's centre
    blue = calibration_errors(3000, loglam, np.random.default_rng(3), rms=0.1, arm_step_rms=0.05,
                              blue_end_rms=0.3) / base
    assert np.allclose(blue[:, lam > 4500], 1.0, atol=1e-5)  # nothing redward of the latest edge
    end = blue[:, lam < 3650].astype(np.float64)
    level = np.median(end, axis=1)
    assert np.std(np.log(level)) > 0.3  # a steep rise or fall, c ~ N(0, 0.6) at the very end
    assert np.median(np.std(end / level[:, None], axis=1)) > 0.05  # and pixel noise the ivar does not know
    assert np.all(blue >= 0)


def test_galaxy_red_cover_brings_the_whole_library_to_nearby_galaxies():
    _templates()
    shapes = {"LRG": [0.3, 0.25], "ELG": [0.2, 0.35], "intermediate": [0.1, 0.15]}
    common = dict(seed=1, mix={"GALAXY": 1}, galaxy_z_range=(0.001, 1.2), galaxy_z_shapes=shapes,
                  quasar=dict(CLEAN))
    whole = SpectrumMixSimulator(**common).sample(400)
    cut = SpectrumMixSimulator(**common, galaxy_red_cover=9200.0).sample(400)
    near_whole, near_cut = whole.z < 0.03, cut.z < 0.03
    assert set(whole.params["source"][near_whole]) == {"rrArchetype"}  # the only sources reaching 10,400 Å
    assert len(set(cut.params["source"][near_cut]) - {"rrArchetype"}) >= 2
    lam = 10**cut.loglam
    for i in np.nonzero(near_cut & (cut.params["source"] != "rrArchetype"))[0]:
        assert cut.good[i, (lam > 5000) & (lam < 9200)].mean() > 0.9  # observed where the source has data
        assert not cut.good[i, lam > 10050 * (1 + cut.z[i])].any()  # masked beyond its data (≤ 10,000 Å rest)


def test_narrow_line_agn_lines_have_the_documented_ratios():
    from fnet.simulate.galaxies import NLAGN_LINES, narrow_line_agn

    lam = 10 ** (np.arange(30000, 40000) * 1e-4)  # rest Å on the 1e-4 dex lattice
    table = np.ones((300, len(lam)), np.float32)  # flat continuum of 1 per Å
    added = narrow_line_agn(lam, table, np.random.default_rng(4)).astype(np.float64)
    dlam = lam * np.log(10) * 1e-4

    def line_flux(centre):
        near = np.abs(lam - centre) < 8.0
        return (added[:, near] * dlam[near]).sum(axis=1)
    oiii, oiii_b = line_flux(NLAGN_LINES["[OIII]5007"]), line_flux(NLAGN_LINES["[OIII]4959"])
    hb, ha, nii = line_flux(NLAGN_LINES["Hbeta"]), line_flux(NLAGN_LINES["Halpha"]), line_flux(NLAGN_LINES["[NII]6584"])
    assert np.all((oiii > 2.5) & (oiii < 310))  # EW([O III]) in 3-300 Å on the unit continuum (wide lines clipped)
    assert np.allclose(oiii_b / oiii, 1 / 2.98, rtol=0.08)
    assert np.all((np.log10(oiii / hb) > -0.05) & (np.log10(oiii / hb) < 1.15))
    assert np.all((np.log10(nii / ha) > -0.35) & (np.log10(nii / ha) < 0.45))  # [N II] 6548 / Hα blend the window
    assert np.all(added >= 0) and not added[:, lam < 3300].any()


def test_a_share_of_galaxies_gets_narrow_line_agn_emission_only_when_asked():
    _templates()
    kw = dict(mix={"GALAXY": 1.0}, quasar=dict(CLEAN))
    plain = SpectrumMixSimulator(seed=11, **kw).sample(200)
    agn = SpectrumMixSimulator(seed=11, galaxy_nlagn_fraction=0.3, **kw).sample(200)
    flagged = np.char.endswith(agn.params["subtype"].astype(str), "+NLAGN")
    assert not np.char.endswith(plain.params["subtype"].astype(str), "+NLAGN").any()
    assert 0.2 < flagged.mean() < 0.4 and np.array_equal(plain.z, agn.z)
    assert np.array_equal(plain.model[~flagged], agn.model[~flagged])
    assert np.all((agn.model[flagged] - plain.model[flagged]).max(axis=1) > 0)


def test_a_log_uniform_galaxy_z_floor_fills_the_nearby_galaxies():
    from fnet.simulate.galaxies import GalaxyModel

    _templates()
    root = require_shared()
    uniform = GalaxyModel(root, z_range=(0.001, 1.2), red_cover=9200.0)
    log = GalaxyModel(root, z_range=(0.001, 1.2), red_cover=9200.0, z_floor="log")
    subtype = np.array(["LRG", "ELG", "intermediate"] * 1000)
    lam = (3566.0, 10323.0)
    zu = uniform.draw_z(subtype, np.random.default_rng(6), *lam)
    zl = log.draw_z(subtype, np.random.default_rng(6), *lam)
    assert np.all((zl >= 0.001) & (zl <= 1.2))
    same = zu == zl  # the Gaussian part is drawn from the same stream in both
    assert 0.7 < same.mean() < 0.85
    floor = zl[~same]
    assert np.mean(zu < 0.006) < 0.01
    # uniform in ln z over 0.001-1.2: ln(6)/ln(1200) = 25 % of the floor below z 0.006 (the Gaussian rows add a few)
    assert 0.18 < np.mean(floor < 0.006) < 0.32
    with pytest.raises(ValueError, match="z_floor must be one of"):
        GalaxyModel(root, z_floor="cubic")
    with pytest.raises(ValueError, match="starting above 0"):
        GalaxyModel(root, z_range=(0.0, 1.2), z_floor="log")
    with pytest.raises(ValueError, match="galaxy_z_floor must be one of"):
        SpectrumMixSimulator(mix={"QSO": 1}, galaxy_z_floor="Log")  # refused even where no galaxy is drawn
