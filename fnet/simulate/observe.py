"""Observation model: resolution, flux calibration to a magnitude, wavelength truncation, noise and sky residuals."""

from __future__ import annotations

import numpy as np

from fnet.simulate.noise import NODATA, NoiseLibrary

C_AA = 2.99792458e18  # speed of light, Å/s
# top-hat stand-ins for the SDSS r, i, z filters plus a "y"-like red window: (name, lo Å, hi Å, effective λ Å)
BANDS = (
    ("r", 5500.0, 6900.0, 6200.0),
    ("i", 6900.0, 8400.0, 7650.0),
    ("z", 8400.0, 9600.0, 9000.0),
    ("y", 9600.0, 10400.0, 10000.0),
)
NORM_REST_MIN = 1280.0  # normalisation band: the bluest one entirely redward of this rest wavelength (z band
# otherwise), averaged over its pixels redward of 1230 Å rest only, so the forest never sets the flux scale


def convolve_resolution(flux: np.ndarray, sigma_pix: np.ndarray, half: int = 4) -> np.ndarray:
    """Per-row Gaussian line-spread function in pixels (1e-4 dex; σ ≈ 0.9 px is R ≈ 2000), edge-replicated."""
    n, m = flux.shape
    offs = np.arange(-half, half + 1)
    w = np.exp(-0.5 * (offs[None, :] / np.maximum(sigma_pix, 1e-3)[:, None]) ** 2)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    padded = np.pad(flux, ((0, 0), (half, half)), mode="edge")
    out = np.zeros_like(flux)
    for j in range(len(offs)):
        out += w[:, j, None] * padded[:, j : j + m]
    return out


def ab_flux_density(mag: np.ndarray, lam_eff: np.ndarray) -> np.ndarray:
    """f_λ in 1e-17 erg/s/cm²/Å of an AB magnitude at wavelength lam_eff."""
    return 10.0 ** (-0.4 * (np.asarray(mag) + 48.6)) * C_AA / np.asarray(lam_eff) ** 2 * 1e17


def normalisation_band(z: np.ndarray) -> np.ndarray:
    """Index into BANDS of the bluest band entirely redward of 1280 Å rest; y (9600-10400 Å) beyond z ≈ 6.5."""
    edge = NORM_REST_MIN * (1.0 + np.asarray(z))
    los = np.array([b[1] for b in BANDS])
    idx = np.searchsorted(los, edge, side="left")
    return np.minimum(idx, len(BANDS) - 1)


def scale_to_magnitude(model: np.ndarray, loglam: np.ndarray, z: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """Per-row factor making the mean f_λ over the normalisation band (pixels redward of 1230 Å rest) equal to
    that of AB magnitude mag."""
    lam = 10.0 ** loglam
    band = normalisation_band(z)
    scale = np.ones(len(z))
    for b, (_, lo, hi, eff) in enumerate(BANDS):
        rows = np.nonzero(band == b)[0]
        if len(rows) == 0:
            continue
        cols = np.nonzero((lam >= lo) & (lam <= hi))[0]
        sel = lam[None, cols] > 1230.0 * (1.0 + z[rows, None])
        sel[~sel.any(axis=1)] = True
        block = model[np.ix_(rows, cols)]
        mean = np.where(sel, block, 0.0).sum(axis=1) / sel.sum(axis=1)
        scale[rows] = ab_flux_density(mag[rows], eff) / np.maximum(mean, 1e-30)
    return scale


def calibration_errors(n: int, loglam: np.ndarray, rng: np.random.Generator, rms: float,
                       arm_step_rms: float, splice_bump_rms: float = 0.0, blue_end_rms: float = 0.0) -> np.ndarray:
    """Multiplicative spectrophotometric calibration errors, (n, m) float32 factors around 1.

    Real fibre spectra carry smooth flux-calibration errors of ~10 % over the optical range (BOSS
    spectrophotometry, with its blue excess for quasar targets on offset fibres: Margala et al. 2016, ApJ
    831, 157; LAMOST's relative calibration: Du et al. 2016, ApJS 227, 27) and a scale mismatch where the
    blue and red arms join (the dichroic near 5900-6300 Å in both designs). Model: exp(a1 P1 + a2 P2 + a3 P3)
    of x = log λ mapped onto [-1, 1] (Legendre P_k), a_k ~ N(0, rms / k), times a smoothed step (1 + s)
    redward of a junction drawn in 5700-6300 Å, s ~ N(0, arm_step_rms). Amplitudes are a modelling choice
    from those references, not fitted to any spectrum.

    Two optional failures of the same calibration (0 disables each; drawn after the terms above, so turning
    them on leaves those draws as they were):
    - splice_bump_rms: a smooth bump or dip where the arms are spliced, 1 + b exp(-(λ - λc)² / 2w²) with
      b ~ N(0, splice_bump_rms), λc within -200..+100 Å of the junction, w 50-200 Å: the two arms' throughput
      curves fall steeply there and their ratio is poorly known, so a co-added spectrum can carry a broad
      feature of a few hundred Å that is not in the source.
    - blue_end_rms: a calibration that fails below a wavelength λb of 3900-4500 Å (throughput and the standard
      stars' flux are lowest there): exp(c t²) (1 + e t ε) with t rising from 0 at λb to 1 at 3600 Å,
      c ~ N(0, 2 blue_end_rms) a steep rise or fall, e = |N(0, blue_end_rms)| pixel-to-pixel noise ε ~ N(0, 1)
      that the inverse variance does not know of.
    """
    m = len(loglam)
    x = np.linspace(-1.0, 1.0, m)
    legendre = np.stack([x, 0.5 * (3 * x**2 - 1), 0.5 * (5 * x**3 - 3 * x)])
    a = rng.standard_normal((n, 3)) * (rms / np.arange(1, 4))
    log_factor = a @ legendre
    junction = np.log10(rng.uniform(5700.0, 6300.0, n))
    step = arm_step_rms * rng.standard_normal(n)
    width = np.log10(1.0 + 40.0 / 6000.0)  # ~40 Å: the dichroic's transition
    ramp = 1.0 / (1.0 + np.exp(-(loglam[None, :] - junction[:, None]) / width))
    log_factor += np.log1p(np.clip(step, -0.5, None))[:, None] * ramp
    factor = np.exp(log_factor)
    if splice_bump_rms > 0:
        lam = 10.0 ** loglam[None, :]
        centre = 10.0 ** junction + rng.uniform(-200.0, 100.0, n)
        sigma = rng.uniform(50.0, 200.0, n)
        bump = np.clip(splice_bump_rms * rng.standard_normal(n), -0.5, None)
        factor *= 1.0 + bump[:, None] * np.exp(-0.5 * ((lam - centre[:, None]) / sigma[:, None]) ** 2)
    if blue_end_rms > 0:
        edge = np.log10(rng.uniform(3900.0, 4500.0, n))
        t = np.clip((edge[:, None] - loglam[None, :]) / (edge[:, None] - np.log10(3600.0)), 0.0, 1.0)
        tilt = 2.0 * blue_end_rms * rng.standard_normal(n)
        jitter = np.abs(blue_end_rms * rng.standard_normal(n))
        eps = rng.standard_normal((n, m))
        factor *= np.exp(tilt[:, None] * t**2) * np.clip(1.0 + jitter[:, None] * t * eps, 0.0, None)
    return factor.astype(np.float32)


def apply_calibration_errors(model: np.ndarray, loglam: np.ndarray, rng: np.random.Generator, cfg) -> None:
    """Multiply models (in place) by calibration errors when cfg asks for them (SimulatorConfig.calibration_rms,
    arm_step_rms, splice_bump_rms, blue_end_rms). Drawn from a child of rng's seed, so rng's own draws (and every
    other output) stay as they were without them."""
    if max(cfg.calibration_rms, cfg.arm_step_rms, cfg.splice_bump_rms, cfg.blue_end_rms) <= 0:
        return
    model *= calibration_errors(len(model), loglam, child_rng(rng), cfg.calibration_rms, cfg.arm_step_rms,
                                cfg.splice_bump_rms, cfg.blue_end_rms)


def child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent stream spawned from rng's seed: optional effects draw from it, so turning them on or off
    leaves every draw of rng itself (and so every other output) as it was."""
    return np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])


def snr_for_magnitude(mag: np.ndarray) -> np.ndarray:
    """Typical BOSS mean S/N per pixel at a magnitude: 10 F / sqrt(F + 4), F = 10^(-0.4 (mag - 20)).

    Sky-dominated at the faint end (S/N ∝ flux), source-dominated at the bright end; ≈ 20, 4.5, 0.8 at 18, 20, 22,
    close to the real DR16 files in the shared data (median S/N per pixel 0.6-34).
    """
    f = 10.0 ** (-0.4 * (np.asarray(mag) - 20.0))
    return 10.0 * f / np.sqrt(f + 4.0)


def draw_truncation(
    n: int, loglam: np.ndarray, rng: np.random.Generator, p_blue: float, p_red: float, p_gap: float
) -> dict[str, np.ndarray]:
    """Random observed window [pix_start, pix_end] and an optional dead gap [gap_start, gap_start + gap_len).

    Blue end: 3560-3610 Å as in most BOSS files, or with probability p_blue anywhere in 3560-3800 Å.
    Red end: 10300-10400 Å, or with probability p_red anywhere in 9000-10400 Å.
    Gap: with probability p_gap, 10-300 pixels lost at a random place (e.g. a dead amplifier / bad CCD region).
    """
    u = rng.random((7, n))
    lo = np.where(u[0] < p_blue, 3560.0 + 240.0 * u[1], 3560.0 + 50.0 * u[1])
    hi = np.where(u[2] < p_red, 9000.0 + 1400.0 * u[3], 10300.0 + 100.0 * u[3])
    pix_start = np.searchsorted(loglam, np.log10(lo))
    pix_end = np.searchsorted(loglam, np.log10(hi), side="right") - 1
    pix_end = np.clip(pix_end, pix_start + 1, len(loglam) - 1)
    has_gap = u[4] < p_gap
    gap_len = np.where(has_gap, (10 + 290 * u[5]).astype(np.int64), 0)
    gap_start = pix_start + (u[6] * np.maximum(pix_end - pix_start - gap_len, 1)).astype(np.int64)
    return {"pix_start": pix_start, "pix_end": pix_end, "gap_start": gap_start, "gap_len": gap_len}


def observe(
    model: np.ndarray,
    usable: np.ndarray,
    loglam: np.ndarray,
    z: np.ndarray,
    snr: np.ndarray,
    library: NoiseLibrary,
    vector: np.ndarray,
    window: dict[str, np.ndarray],
    rng: np.random.Generator,
    sky_residual: float = 1.0,
) -> dict[str, np.ndarray]:
    """Noisy observation of noiseless models through real (or synthetic) noise vectors.

    The chosen vector's ivar is rescaled so the mean S/N per usable pixel redward of 1260 Å rest equals snr;
    Gaussian noise of that ivar is added; its and_mask and zero-ivar pixels are carried over; sky-subtraction
    residuals proportional to the vector's sky lines are added (not reflected in ivar, as in real reductions).
    Pixels outside the window, in the gap, absent from the vector's file or not usable get flux 0, ivar 0 and
    the NODATA bit; zero-ivar pixels inside keep their real mask bits and get flux 0.
    """
    n, m = model.shape
    k = np.arange(m)[None, :]
    inside = (k >= window["pix_start"][:, None]) & (k <= window["pix_end"][:, None])
    gap = (k >= window["gap_start"][:, None]) & (k < (window["gap_start"] + window["gap_len"])[:, None])
    inside &= ~gap & library.present[vector] & usable
    ivar0 = library.ivar[vector]
    ivar0[~inside] = 0.0
    rest = 10.0 ** loglam[None, :] / (1.0 + z[:, None])
    sel = (ivar0 > 0) & (rest > 1260.0)
    sel = np.where(sel.any(axis=1, keepdims=True), sel, ivar0 > 0)
    s_now = np.where(sel, model * np.sqrt(ivar0), 0.0).sum(axis=1) / np.maximum(sel.sum(axis=1), 1)
    factor = (snr / np.maximum(s_now, 1e-12)) ** 2
    ivar = (ivar0 * factor[:, None].astype(np.float32)).astype(np.float32)
    sigma = np.zeros_like(ivar)
    pos = ivar > 0
    sigma[pos] = 1.0 / np.sqrt(ivar[pos])
    flux = model + sigma * rng.standard_normal((n, m), dtype=np.float32)
    if sky_residual > 0:
        # the three usual causes of sky-subtraction residuals: sky flux scale error (0.6%), wavelength offset
        # (0.015 pixel, first derivative) and line-spread mismatch (0.015 pixel², second derivative); with
        # sky_residual = 1 the pulls near bright sky lines have std ≈ 1.1-1.2, as (flux - model)·sqrt(ivar) of the
        # real DR16 quasars (1.18 near sky lines)
        a = (sky_residual * rng.standard_normal((3, n)) * np.array([0.006, 0.015, 0.015])[:, None]).astype(np.float32)
        flux += a[0][:, None] * library.sky_lines[vector]
        flux += a[1][:, None] * library.sky_lines_d1[vector]
        flux += a[2][:, None] * library.sky_lines_d2[vector]
    and_mask = library.and_mask[vector]
    flux[~inside] = 0.0
    and_mask[~inside] = and_mask[~inside] | np.int32(1 << NODATA)
    good = inside & (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar)
    flux[~good] = 0.0
    return {
        "flux": flux.astype(np.float32),
        "ivar": ivar,
        "and_mask": and_mask,
        "good": good,
        "sky": library.sky[vector] * inside,
        "ivar_factor": factor,
    }
