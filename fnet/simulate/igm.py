"""Intergalactic absorption: Lyα/Lyβ forest (lognormal field normalised to a published τ_eff(z)) and the Lyman limit.

The forest is a lognormal optical-depth field, τ = τ0(z_abs) · exp(σ_g g), with g a unit Gaussian field correlated
over ~1 pixel; τ0 is tabulated so that the mean transmission <exp(-τ)> equals exp(-τ_eff(z_abs)) with
τ_eff = 0.0018 (1+z)^3.92 (Faucher-Giguère et al. 2008). Lyβ adds 0.16 τ0(z_β) (f·λ ratio of Lyβ to Lyα).
"""

from __future__ import annotations

import numpy as np

from fnet.simulate.lattice import STEP, redshift_table

LYA = 1215.67
LYB = 1025.72
LYMAN_LIMIT = 911.75
LYB_OVER_LYA = 0.07912 * LYB / (0.4164 * LYA)  # optically-thin τ ratio f_β λ_β / f_α λ_α ≈ 0.160
REF_K0, REF_K1 = 25900, 38000  # lattice of the reference mean-transmission tables: 389 Å .. 6310 Å


def tau_eff_fg08(z_abs: np.ndarray) -> np.ndarray:
    """Lyα effective optical depth τ_eff = 0.0018 (1+z)^3.92 (Faucher-Giguère et al. 2008)."""
    return 0.0018 * (1.0 + np.asarray(z_abs, dtype=np.float64)) ** 3.92


class LognormalForest:
    """Lookup tables linking the lognormal amplitude τ0 to the mean transmission for a field of width sigma_g."""

    def __init__(self, sigma_g: float = 1.2, corr_pix: float = 1.0):
        self.sigma_g = float(sigma_g)
        x, w = np.polynomial.hermite_e.hermegauss(80)
        w = w / w.sum()
        self._log_tau0 = np.linspace(np.log(1e-7), np.log(1e5), 1500)
        tau0 = np.exp(self._log_tau0)
        mean_t = (w[None, :] * np.exp(-tau0[:, None] * np.exp(self.sigma_g * x[None, :]))).sum(axis=1)
        self._log_taueff = np.log(-np.log(np.clip(mean_t, 1e-300, 1.0 - 1e-15)))
        half = int(np.ceil(3 * corr_pix))
        k = np.exp(-0.5 * (np.arange(-half, half + 1) / max(corr_pix, 1e-3)) ** 2)
        self._kernel = (k / np.sqrt((k**2).sum())).astype(np.float32)  # unit variance after smoothing
        self._cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def tau0_for(self, tau_eff: np.ndarray) -> np.ndarray:
        """Lognormal amplitude τ0 whose mean transmission is exp(-tau_eff)."""
        t = np.log(np.clip(tau_eff, 1e-12, None))
        return np.exp(np.interp(t, self._log_taueff, self._log_tau0))

    def mean_transmission(self, tau0: np.ndarray) -> np.ndarray:
        """<exp(-τ0 e^{σ g})> for the table's σ."""
        return np.exp(-np.exp(np.interp(np.log(np.clip(tau0, 1e-30, None)), self._log_tau0, self._log_taueff)))

    def tau0_total(self, lam_obs: np.ndarray, lam_rest: np.ndarray) -> np.ndarray:
        """Lyα + Lyβ lognormal amplitude at observed wavelengths (0 redward of the quasar's Lyα)."""
        tau0 = np.where(lam_rest < LYA, self.tau0_for(tau_eff_fg08(lam_obs / LYA - 1.0)), 0.0)
        beta = lam_rest < LYB
        if np.any(beta):
            tau0 = tau0 + np.where(beta, LYB_OVER_LYA * self.tau0_for(tau_eff_fg08(lam_obs / LYB - 1.0)), 0.0)
        return tau0

    def gaussian_field(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Unit-variance Gaussian field correlated along axis 1 (float32)."""
        n, m = shape
        h = len(self._kernel) // 2
        white = rng.standard_normal((n, m + 2 * h), dtype=np.float32)
        out = np.zeros((n, m), dtype=np.float32)
        for j, w in enumerate(self._kernel):
            out += w * white[:, j : j + m]
        return out

    def _grid_tables(self, loglam: np.ndarray) -> dict[str, np.ndarray]:
        """Per-column Lyα and Lyβ amplitudes of the grid, and mean-transmission tables on a wide λ lattice."""
        key = (int(round(loglam[0] / STEP)), len(loglam))
        if key not in self._cache:
            lam = 10.0 ** np.asarray(loglam, dtype=np.float64)
            k_ref = np.arange(REF_K0, REF_K1 + 1)
            lam_ref = 10.0 ** (k_ref * STEP)
            ta_ref = self.tau0_for(tau_eff_fg08(lam_ref / LYA - 1.0))
            tb_ref = LYB_OVER_LYA * self.tau0_for(tau_eff_fg08(lam_ref / LYB - 1.0))
            self._cache[key] = {
                "ta": self.tau0_for(tau_eff_fg08(lam / LYA - 1.0)).astype(np.float32),
                "tb": (LYB_OVER_LYA * self.tau0_for(tau_eff_fg08(lam / LYB - 1.0))).astype(np.float32),
                "mean_a": self.mean_transmission(ta_ref).astype(np.float32),
                "mean_ab": self.mean_transmission(ta_ref + tb_ref).astype(np.float32),
            }
        return self._cache[key]

    def transmission(
        self,
        loglam: np.ndarray,
        z: np.ndarray,
        rng: np.random.Generator,
        z_ref_lya: np.ndarray | None = None,
        z_ref_lyb: np.ndarray | None = None,
    ) -> np.ndarray:
        """Forest transmission (n, m) float32 for quasars at z observed on the lattice loglam.

        z_ref_lya / z_ref_lyb (per row, NaN = none): the spectrum already contains the mean forest of a quasar at
        that redshift in the Lyα-only region (1025.72-1215.67 Å rest) / below Lyβ; the result is then divided by
        that mean, so only fluctuations and the change of the mean with redshift are added, never the mean twice.
        """
        z = np.asarray(z, dtype=np.float64)
        n, m = len(z), len(loglam)
        out = np.ones((n, m), dtype=np.float32)
        lam_obs = 10.0 ** np.asarray(loglam, dtype=np.float64)
        k_lya = np.searchsorted(lam_obs, LYA * (1.0 + z))  # first pixel at or redward of Lyα
        k_lyb = np.searchsorted(lam_obs, LYB * (1.0 + z))
        rows = np.nonzero(k_lya > 0)[0]
        if len(rows) == 0:
            return out
        kmax = int(k_lya[rows].max())
        tab = self._grid_tables(loglam)
        k = np.arange(kmax)[None, :]
        in_a = k < k_lya[rows, None]
        in_b = k < k_lyb[rows, None]
        zero = np.float32(0)
        tau0 = np.where(in_a, tab["ta"][None, :kmax], zero) + np.where(in_b, tab["tb"][None, :kmax], zero)
        g = self.gaussian_field((len(rows), kmax), rng)
        trans = np.exp(-tau0 * np.exp(np.float32(self.sigma_g) * g))
        ref = np.ones_like(trans)
        grid_k0 = int(round(loglam[0] / STEP))
        for zr_all, key, region in ((z_ref_lya, "mean_a", in_a & ~in_b), (z_ref_lyb, "mean_ab", in_b)):
            if zr_all is None:
                continue
            zr = np.asarray(zr_all, dtype=np.float64)[rows]
            has = np.nonzero(np.isfinite(zr))[0]
            if len(has) == 0:
                continue
            z_eff = (1.0 + z[rows[has]]) / (1.0 + zr[has]) - 1.0  # observed λ -> λ a z_ref quasar shows it at
            ref_mean, _ = redshift_table(tab[key], REF_K0, grid_k0, kmax, z_eff, nearest=True)
            ref[has] = np.where(region[has], ref_mean, ref[has])
        trans /= np.clip(ref, 0.05, None)
        out[rows, :kmax] = trans
        return out


# rest windows where a spectrum's built-in mean forest is measured: Lyα-only region and below Lyβ
FOREST_WINDOWS = ((1070.0, 1160.0), (960.0, 1015.0))
CONTINUUM_WINDOWS_UV = ((1320.0, 1330.0), (1440.0, 1460.0), (1690.0, 1705.0))


def builtin_forest(lam_rest: np.ndarray, flux: np.ndarray) -> tuple[float, float]:
    """Mean flux / power-law continuum (fitted in 1320-1705 Å windows) in the two FOREST_WINDOWS: the forest
    transmission a template already carries (≈1 for de-absorbed spectra); NaN where not covered."""
    xs, ys = [], []
    for a, b in CONTINUUM_WINDOWS_UV:
        sel = (lam_rest >= a) & (lam_rest <= b)
        if sel.sum() < 5 or np.mean(flux[sel]) <= 0:
            return np.nan, np.nan
        xs.append(np.log(np.mean(lam_rest[sel])))
        ys.append(np.log(np.mean(flux[sel])))
    slope, icpt = np.polyfit(xs, ys, 1)
    out = []
    for a, b in FOREST_WINDOWS:
        sel = (lam_rest >= a) & (lam_rest <= b)
        if sel.sum() < 20:
            out.append(np.nan)
            continue
        out.append(float(np.mean(flux[sel] / np.exp(slope * np.log(lam_rest[sel]) + icpt))))
    return out[0], out[1]


_REF_TABLE: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def forest_reference_redshift(transmission: np.ndarray, window: int) -> np.ndarray:
    """Quasar redshift whose FG08 mean transmission over FOREST_WINDOWS[window] equals `transmission`; NaN for
    values >= 0.97 (no built-in absorption worth removing) or NaN input."""
    global _REF_TABLE
    if _REF_TABLE is None:
        forest = LognormalForest()
        zs = np.linspace(0.0, 7.0, 281)
        means = []
        for a, b in FOREST_WINDOWS:
            rest = np.linspace(a, b, 60)
            means.append([forest.mean_transmission(forest.tau0_total(rest * (1 + z), rest)).mean() for z in zs])
        _REF_TABLE = (zs, np.array(means[0]), np.array(means[1]))
    zs, table = _REF_TABLE[0], _REF_TABLE[1 + window]
    t = np.asarray(transmission, dtype=np.float64)
    z = np.interp(-t, -table, zs)  # table decreases with z
    return np.where(np.isfinite(t) & (t < 0.97), z, np.nan)


def lyman_limit_transmission(lam_rest: np.ndarray, leak: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Quasar's own Lyman-limit cut: 1 redward of 911.75 Å, leak·exp(-(911.75-λ)/scale) blueward (per row)."""
    out = np.ones(lam_rest.shape, dtype=np.float32)
    below = lam_rest < LYMAN_LIMIT
    cols = np.nonzero(below.any(axis=0))[0]
    if len(cols):
        kmax = cols[-1] + 1
        d = (LYMAN_LIMIT - lam_rest[:, :kmax]).astype(np.float32)
        t = leak.astype(np.float32)[:, None] * np.exp(-np.clip(d, 0, None) / scale.astype(np.float32)[:, None])
        out[:, :kmax] = np.where(below[:, :kmax], t, np.float32(1))
    return out
