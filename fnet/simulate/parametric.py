"""Built-in parametric quasar model from published facts; needs no data files.

Continuum: broken power law f_ν ∝ ν^α, α ~ N(-0.5, 0.3) blueward of a break at 4000-6000 Å and ~N(-1.8, 0.4)
redward (Vanden Berk et al. 2001 measure -0.44 and -2.45). Emission lines: Vanden Berk et al. (2001, Table 2)
rest wavelengths, equivalent widths and Gaussian widths, the strongest broad lines as two Gaussians (core + wings)
with the same second moment; mean velocity offsets of the high-ionisation lines from the same table.
Fe II pseudo-continuum: broad Gaussian blends at the Table 2 Fe II positions plus the 2200-3000 Å UV bump;
Balmer continuum: Grandi (1982) optically thick form, T_e = 15000 K, τ = 1 at the edge (3646 Å).
"""

from __future__ import annotations

import numpy as np

from ..runtime.constants import C_KMS

from fnet.simulate.lattice import STEP, redshift_table


# name, lab wavelength Å, EW Å, Gaussian sigma Å, mean shift km/s, shift scatter km/s, kind
# kind: "B2" broad two-component, "B" broad single Gaussian, "N" narrow (shares the narrow-line strength factor)
# Values from Vanden Berk et al. (2001) Table 2; mean shifts = (observed composite / lab - 1)·c for the
# high-ionisation lines. N V: the table's 1.11 Å is what remains after a broad Lyα fit; 6 Å, σ 8 Å used instead.
LINES: tuple[tuple[str, float, float, float, float, float, str], ...] = (
    ("Lyd+Lye", 940.93, 2.95, 4.73, 0.0, 200.0, "B"),
    ("CIII977+NIII", 985.46, 6.55, 8.95, 0.0, 200.0, "B"),
    ("Lyb+OVI", 1033.03, 9.77, 7.76, 0.0, 300.0, "B"),
    ("FeIII_UV1", 1117.26, 3.66, 8.49, 0.0, 200.0, "B"),
    ("CIII*1176", 1175.70, 0.83, 2.28, 0.0, 200.0, "B"),
    ("Lya", 1215.67, 92.91, 19.46, 0.0, 200.0, "B2"),
    ("NV", 1240.14, 6.0, 8.0, 0.0, 300.0, "B"),
    ("OI+SiII", 1304.35, 1.66, 5.42, 0.0, 150.0, "B"),
    ("CII", 1335.30, 0.59, 3.86, 0.0, 150.0, "B"),
    ("SiIV+OIV]", 1399.80, 8.13, 12.50, -315.0, 300.0, "B2"),
    ("CIV", 1549.06, 23.78, 14.33, -563.0, 500.0, "B2"),
    ("HeII1640", 1640.42, 0.51, 4.43, -470.0, 300.0, "B"),
    ("OIII]+AlII", 1663.48, 0.50, 5.50, 0.0, 200.0, "B"),
    ("NIII]", 1750.26, 0.44, 5.12, 0.0, 200.0, "B"),
    ("AlIII", 1857.40, 0.40, 4.95, 0.0, 200.0, "B"),
    ("CIII]", 1908.73, 21.19, 23.58, -434.0, 300.0, "B2"),
    ("FeIII_UV48", 2076.62, 2.46, 16.99, 0.0, 150.0, "B"),
    ("[NeIV]", 2423.83, 0.77, 8.42, 0.0, 100.0, "B"),
    ("MgII", 2798.75, 32.28, 34.95, 162.0, 200.0, "B2"),
    ("HeI3189", 3188.67, 1.17, 12.77, 0.0, 100.0, "B"),
    ("[NeV]3347", 3346.82, 0.35, 5.50, 0.0, 50.0, "N"),
    ("[NeV]3427", 3426.84, 1.22, 9.09, 0.0, 50.0, "N"),
    ("[OII]", 3728.48, 1.56, 3.32, 0.0, 50.0, "N"),
    ("[NeIII]", 3869.85, 1.38, 5.31, 0.0, 50.0, "N"),
    ("Hd", 4102.89, 5.05, 18.62, 0.0, 150.0, "B"),
    ("Hg", 4341.68, 12.62, 20.32, 0.0, 150.0, "B"),
    ("HeII4686", 4687.02, 0.72, 5.92, 0.0, 100.0, "B"),
    ("Hb", 4862.68, 46.21, 40.44, 0.0, 150.0, "B2"),
    ("[OIII]4960", 4960.30, 3.50, 3.85, 0.0, 50.0, "N"),
    ("[OIII]5008", 5008.24, 13.23, 6.04, 0.0, 50.0, "N"),
    ("HeI5877", 5877.29, 4.94, 23.45, 0.0, 150.0, "B"),
    ("[OI]", 6302.05, 1.15, 3.14, 0.0, 50.0, "N"),
    ("[NII]6550", 6549.85, 0.43, 2.21, 0.0, 50.0, "N"),
    ("Ha", 6564.61, 194.52, 47.39, 0.0, 150.0, "B2"),
    ("[NII]6585", 6585.28, 2.02, 2.65, 0.0, 50.0, "N"),
    ("[SII]6718", 6718.29, 1.65, 3.09, 0.0, 50.0, "N"),
    ("[SII]6733", 6732.67, 1.49, 2.54, 0.0, 50.0, "N"),
    ("HeI7067", 7067.20, 3.06, 15.23, 0.0, 150.0, "B"),
    ("[OII]7321", 7321.48, 2.52, 14.26, 0.0, 100.0, "B"),
)
HIGH_IONISATION = {"SiIV+OIV]", "CIV", "HeII1640", "CIII]", "NV"}
# Fe II blends (centre Å, EW Å, sigma Å) from the same table, plus the broad UV "small blue bump" blend
FE_UV = (
    (2324.58, 3.56, 22.23), (2626.92, 0.81, 9.93), (2964.28, 4.93, 22.92), (3498.92, 1.38, 16.79), (2550.0, 30.0, 280.0)
)
FE_OPT = ((4564.71, 19.52, 61.69), (5305.97, 21.47, 74.83), (4930.75, 0.40, 3.98))
BALMER_EDGE = 3646.0

_NAMES = [row[0] for row in LINES]
_LAB = np.array([row[1] for row in LINES])
_EW = np.array([row[2] for row in LINES])
_SIG_KMS = np.array([row[3] / row[1] * C_KMS for row in LINES])
_SHIFT = np.array([row[4] for row in LINES])
_SCATTER = np.array([row[5] for row in LINES])
_KIND = np.array([row[6] for row in LINES])
_HIGH = np.array([n in HIGH_IONISATION for n in _NAMES])
# two-component split with the same total second moment: (EW fraction, width factor)
_COMPONENTS = ((0.5, 0.55), (0.5, 1.35))

REST_K0, REST_K1 = 25900, 40600  # rest tables cover 10^2.59 = 389 Å .. 10^4.06 = 11482 Å (z up to 7.5)


def _rest_tables() -> dict[str, np.ndarray]:
    """Fixed-shape rest-frame tables on the 1e-4 lattice: Fe II UV, Fe II optical and the Balmer continuum."""
    lam = 10.0 ** (np.arange(REST_K0, REST_K1 + 1) * STEP)

    def blends(items):
        out = np.zeros_like(lam)
        for c, ew, s in items:
            out += ew / (np.sqrt(2 * np.pi) * s) * np.exp(-0.5 * ((lam - c) / s) ** 2)
        return out

    # Balmer continuum, Grandi (1982): B_λ(T_e) (1 - exp(-τ (λ/λ_BE)^3)), smoothed edge, = 1 at 3000 Å
    hc_k = 1.4388e8  # h c / k in Å K
    planck = lam**-5 / np.expm1(hc_k / (lam * 15000.0))
    bc = planck * -np.expm1(-((lam / BALMER_EDGE) ** 3)) * 0.5 * (1.0 - np.tanh((lam - BALMER_EDGE) / 25.0))
    bc /= np.interp(3000.0, lam, bc)
    return {k: v.astype(np.float32) for k, v in (("fe_uv", blends(FE_UV)), ("fe_opt", blends(FE_OPT)), ("balmer", bc))}


_TABLES: dict[str, np.ndarray] | None = None


def rest_tables() -> dict[str, np.ndarray]:
    """Cached rest-frame tables."""
    global _TABLES
    if _TABLES is None:
        _TABLES = _rest_tables()
    return _TABLES


def draw_params(n: int, rng: np.random.Generator, line_shifts: bool = True) -> dict[str, np.ndarray]:
    """Per-object continuum, line strength/width/shift and Fe II / Balmer amplitudes."""
    nl = len(LINES)
    g = rng.standard_normal((8, n))
    e = rng.standard_normal((3, n, nl))
    narrow = _KIND == "N"
    ew_log = np.where(narrow, 0.6 * g[2][:, None], 0.25 * g[3][:, None]) + np.where(narrow, 0.2, 0.25) * e[0]
    # the [O III] doublet keeps its atomic 1:2.98 ratio
    i4960, i5008 = _NAMES.index("[OIII]4960"), _NAMES.index("[OIII]5008")
    ew_log[:, i4960] = ew_log[:, i5008]
    width = np.exp(np.where(narrow, 0.2, 0.2) * g[4][:, None] + 0.1 * e[1])
    wind = g[5][:, None]
    shift = _SHIFT[None, :] + _SCATTER[None, :] * np.where(_HIGH, 0.8 * wind + 0.6 * e[2], e[2])
    if not line_shifts:
        shift = np.zeros_like(shift)
    return {
        "alpha1": -0.5 + 0.3 * g[0],
        "alpha2": -1.8 + 0.4 * g[1],
        "lam_break": 4000.0 + 2000.0 * rng.random(n),
        "ew": _EW[None, :] * np.exp(ew_log),
        "sigma_kms": _SIG_KMS[None, :] * width,
        "shift_kms": shift,
        "fe_uv": np.exp(0.4 * g[6]),
        "fe_opt": np.exp(0.5 * g[7]),
        "balmer": 0.05 + 0.25 * rng.random(n),
    }


def continuum(lam_rest: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Broken power law f_λ ∝ λ^-(2+α), continuous at the break; same shape as lam_rest."""
    lb = p["lam_break"][:, None]
    a1, a2 = p["alpha1"][:, None], p["alpha2"][:, None]
    x = np.log(lam_rest / lb)
    return np.exp(np.where(x < 0, -(2.0 + a1) * x, -(2.0 + a2) * x))


def continuum_ln(ln_lam_obs: np.ndarray, z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Same broken power law evaluated from ln(observed λ) (m,) and z (n,): one exp per pixel."""
    x = (ln_lam_obs[None, :] - (np.log1p(z) + np.log(p["lam_break"]))[:, None]).astype(np.float32)
    s1 = (-(2.0 + p["alpha1"])).astype(np.float32)[:, None]
    s2 = (-(2.0 + p["alpha2"])).astype(np.float32)[:, None]
    return np.exp(x * np.where(x < 0, s1, s2))


def _continuum_at(lam: float | np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Continuum of every row at rest wavelength(s) lam: (n,) or (n, k)."""
    lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    return continuum(np.broadcast_to(lam, (len(p["alpha1"]), len(lam))), p)


def emission_lines(
    loglam: np.ndarray, z: np.ndarray, p: dict[str, np.ndarray], window_sigma: float = 4.0
) -> np.ndarray:
    """Sum of Gaussian emission lines (n, m) float32, each evaluated only within ±window_sigma of its centre."""
    n, m = len(z), len(loglam)
    k0 = int(round(loglam[0] / STEP))
    cont_c = _continuum_at(_LAB, p)  # (n, nl): EW is relative to the local power-law continuum
    lnz = np.log10(1.0 + np.asarray(z, dtype=np.float64))
    comps, pad = [], 0
    for j, kind in enumerate(_KIND):
        lam_c = _LAB[j] * (1.0 + p["shift_kms"][:, j] / C_KMS)
        pix_c = (np.log10(lam_c) + lnz) / STEP - k0  # fractional pixel of the line centre (n,)
        for frac, wfac in _COMPONENTS if kind == "B2" else ((1.0, 1.0),):
            sig_ln = p["sigma_kms"][:, j] * wfac / C_KMS
            sig_pix = sig_ln / (np.log(10.0) * STEP)
            reach = window_sigma * sig_pix
            rows = np.nonzero((pix_c + reach >= 0) & (pix_c - reach <= m - 1))[0]
            if len(rows) == 0:
                continue
            half = int(np.ceil(reach[rows].max()))
            pad = max(pad, 2 * half + 2)
            amp = frac * p["ew"][rows, j] * cont_c[rows, j] / (np.sqrt(2 * np.pi) * sig_ln[rows] * lam_c[rows])
            comps.append((rows, pix_c[rows], sig_pix[rows], amp, half))
    # padded output: windows that stick out of the grid need no clipping; each component touches each row once,
    # so fancy-indexed += is exact
    out = np.zeros((n, m + 2 * pad), dtype=np.float32)
    for rows, pc, sp, amp, half in comps:
        base = np.floor(pc)
        d = np.arange(-half, half + 1, dtype=np.float32)[None, :] - (pc - base).astype(np.float32)[:, None]
        d *= (1.0 / sp).astype(np.float32)[:, None]
        d *= d
        d *= np.float32(-0.5)
        np.exp(d, out=d)
        d *= amp.astype(np.float32)[:, None]
        cols = (base.astype(np.int64) + pad)[:, None] + np.arange(-half, half + 1)[None, :]
        out[rows[:, None], cols] += d
    return out[:, pad : pad + m]


def rest_model(loglam: np.ndarray, z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Unabsorbed rest-frame model f_λ (arbitrary units) at the observed lattice pixels, (n, m) float32."""
    z = np.asarray(z, dtype=np.float64)
    m = len(loglam)
    k0 = int(round(loglam[0] / STEP))
    flux = continuum_ln(np.log(10.0) * loglam, z, p)
    tables = rest_tables()
    for key, pivot in (("fe_uv", 2500.0), ("fe_opt", 4800.0), ("balmer", 3000.0)):
        vals, _ = redshift_table(tables[key], REST_K0, k0, m, z, nearest=True)
        vals *= (p[key] * _continuum_at(pivot, p)[:, 0]).astype(np.float32)[:, None]
        flux += vals
    flux += emission_lines(loglam, z, p)
    return flux
