"""Low-redshift AGN: a quasar (QuasarSimulator's own noiseless model) plus its host galaxy (GalaxyModel).

Host fraction: the mean relation of Shen et al. (2011, ApJS 194, 45, eq. 1), measured by decomposing SDSS DR7
quasar fibre spectra (Vanden Berk et al. 2006 eigenspectra), between host and quasar light at rest 5100 Å:
    L_host / L_QSO = 0.8052 - 1.5502 x + 0.9121 x² - 0.1577 x³,  x = log10(λL_λ,tot(5100) / 1e44 erg/s),
and 0 for x >= 1.053. It is applied with a lognormal scatter of `scatter_dex` (default 0.2 dex) on the ratio, and
x floored at -1.5 (the relation is not measured below; there the host holds ~85% of the light). The host thus
dominates at low luminosity (~45% at 1e44, ~77% at 1e43 erg/s), which in a magnitude-limited target list means
mostly at z < 0.5. Nothing here is fitted to the evaluation spectra.

A draw: z ~ U(z_range) (default 0.03-0.8); the quasar from QuasarSimulator.noiseless at z; the host from
GalaxyModel with host_subtypes weights (default LRG 0.5, intermediate 0.3, ELG 0.2: AGN hosts are mostly massive,
bulge-dominated galaxies) at the same z. Both are normalised to unit mean flux over rest 5050-5150 Å; the fraction
f is found by a fixed-point iteration: the combination (1-f)·QSO + f·host is scaled to the object's magnitude,
which fixes λL_λ(5100) (flat ΛCDM, H0 = 70, Ωm = 0.3), which fixes f through the relation above.
"""

from __future__ import annotations

import numpy as np

from fnet.simulate.galaxies import GalaxyModel
from fnet.simulate.observe import scale_to_magnitude
from fnet.simulate.restframe import convolve_and_erode

SHEN11 = (0.8052, -1.5502, 0.9121, -0.1577)
SHEN11_X_MAX = 1.053
X_FLOOR = -1.5
MPC_CM = 3.0856775814913673e24
NORM_WINDOW = (5050.0, 5150.0)


def host_to_qso_ratio(log_l5100: np.ndarray) -> np.ndarray:
    """Mean L_host/L_QSO at rest 5100 Å for total λL_λ(5100) = 10**log_l5100 erg/s (Shen et al. 2011, eq. 1)."""
    x = np.maximum(np.asarray(log_l5100, dtype=np.float64) - 44.0, X_FLOOR)
    r = SHEN11[0] + SHEN11[1] * x + SHEN11[2] * x**2 + SHEN11[3] * x**3
    return np.where(x >= SHEN11_X_MAX, 0.0, np.maximum(r, 0.0))


def host_fraction(log_l5100: np.ndarray, scatter: np.ndarray | float = 0.0) -> np.ndarray:
    """Host share of the rest-5100 Å flux, host/(host + QSO), with log10 scatter added to the ratio."""
    r = host_to_qso_ratio(log_l5100) * 10.0 ** np.asarray(scatter)
    return r / (1.0 + r)


def _window_mean(model: np.ndarray, usable: np.ndarray, lam: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Mean of each row over usable pixels at rest 5050-5150 Å (4000-6500 Å if none there)."""
    rest = lam[None, :] / (1.0 + z[:, None])
    out = np.full(len(z), np.nan)
    for lo, hi in (NORM_WINDOW, (4000.0, 6500.0)):
        sel = usable & (rest > lo) & (rest < hi)
        cnt = sel.sum(axis=1)
        val = np.where(sel, model, 0.0).sum(axis=1) / np.maximum(cnt, 1)
        take = np.isnan(out) & (cnt > 0)
        out[take] = val[take]
    return out


class HostedAGNModel:
    """Quasar + host galaxy at low z with a luminosity-dependent host fraction."""

    def __init__(self, qso, galaxies: GalaxyModel, z_range: tuple[float, float] = (0.03, 0.8),
                 host_subtypes: dict[str, float] | None = None, scatter_dex: float = 0.2):
        self.qso, self.galaxies = qso, galaxies
        self.z_range = tuple(z_range)
        self.host_subtypes = {"LRG": 0.5, "intermediate": 0.3, "ELG": 0.2} if host_subtypes is None else host_subtypes
        self.scatter_dex = scatter_dex
        from astropy.cosmology import FlatLambdaCDM  # lazily: importing astropy.cosmology costs ~0.5 s

        self.cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3)

    def log_l5100(self, flux_5100_obs: np.ndarray, z: np.ndarray) -> np.ndarray:
        """log10 λL_λ at rest 5100 Å (erg/s) from the observed f_λ there (1e-17 erg/s/cm²/Å)."""
        d = self.cosmo.luminosity_distance(np.asarray(z)).value * MPC_CM
        l_lam = 4.0 * np.pi * d**2 * (1.0 + z) * np.asarray(flux_5100_obs) * 1e-17
        return np.log10(np.maximum(5100.0 * l_lam, 1e30))

    def draw(self, n: int, loglam: np.ndarray, mag: np.ndarray, rng: np.random.Generator, cfg,
             z: np.ndarray | None = None):
        """Convolved noiseless model (n, m) float32 (arbitrary scale: observe_rows calibrates it to mag), usable
        (n, m) and info (z, host_fraction, log_l5100, qso_source, host_source, host_subtype, sigma)."""
        streams = [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=4)]
        if z is None:
            z = streams[0].uniform(*self.z_range, n)
        z = np.asarray(z, dtype=np.float64)
        lam = 10.0 ** loglam
        q, q_use, q_aux = self.qso.noiseless(z, streams[1])
        h, h_use, h_info = self.galaxies.draw(n, loglam, streams[2], z=z, subtype_weights=self.host_subtypes)
        s_rng = streams[3]
        s_full = s_rng.uniform(*cfg.resolution_sigma, n)
        s_tpl = s_rng.uniform(*cfg.template_extra_sigma, n)
        h_sigma = np.where(h_info["boss_resolution"], s_tpl, s_full)
        h, h_use = convolve_and_erode(h, h_use, h_sigma)
        usable = q_use & h_use
        qn = q / _window_mean(q, usable, lam, z)[:, None].astype(np.float32)
        hn = h / _window_mean(h, usable, lam, z)[:, None].astype(np.float32)
        scatter = self.scatter_dex * s_rng.standard_normal(n)
        f = np.full(n, 0.5)
        for _ in range(8):
            tot = ((1.0 - f)[:, None] * qn + f[:, None] * hn).astype(np.float32)
            tot[~usable] = 0.0
            s = scale_to_magnitude(tot, loglam, z, mag)  # f_λ at rest 5100 Å = s (both parts are 1 there)
            logl = self.log_l5100(s, z)
            f = host_fraction(logl, scatter)
        tot = ((1.0 - f)[:, None] * qn + f[:, None] * hn).astype(np.float32)
        tot[~usable] = 0.0
        info = {
            "z": z, "host_fraction": f, "log_l5100": logl, "qso_source": q_aux["source"].astype(str),
            "host_source": h_info["source"], "host_subtype": h_info["subtype"], "host_seed": h_info["seed"],
            "bal": q_aux["bal"]["bal"], "sigma": q_aux["sigma"], "host_sigma": h_sigma,
        }
        return tot, usable, info

