"""Real-template spectral shapes: redrock PCA bases drawn around coefficients fitted to real BOSS quasars, and the
Vanden Berk (2001) / Selsing (2016) composites with a random power-law tilt and line-strength scaling.

Everything lives on the 1e-4 dex rest lattice; a template is never extrapolated: pixels it does not cover are
reported (redshift_table's `covered`) and a source is only eligible at redshifts where it covers the whole grid
redward of the Lyman limit.

Mean Lyα-forest absorption already inside a template is MEASURED, never assumed (igm.builtin_forest: mean flux /
power law through the 1320-1705 Å continuum windows, in 1070-1160 Å and 960-1015 Å) and converted to the redshift
of a quasar with that FG08 mean; the forest is then applied relative to it (only fluctuations and the change of
the mean with z are added). Measured on the shared files:
- QSO-HIZ v1.1 fitted models are DE-ABSORBED in 1025.72-1215.67 Å (ratio 1.00; its header: "Lyman forest
  correction applied to training sample flux in RF [1025.72,1215.67]") but absorbed below Lyβ (0.80, a z≈2.9
  quasar's mean), contrary to the shared README's blanket statement.
- QSO-None (BOSS spEigenQSO) fitted models carry a deep, widely scattered forest (median 0.60, 16-84%: 0.32-0.78):
  handled per fitted vector. Its basis holds data only over 605-8356 Å (edges are constant padding: trimmed).
- VandenBerk2001 ≈ 0.66 (a z≈3.4 quasar), Selsing2015 ≈ 0.84 (z≈2.5; its exact zeros are masked points).
Both redrock bases are fitted redward of Lyα only, so the forest never biases the fitted coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from fnet.simulate.igm import LYA, LYMAN_LIMIT, builtin_forest, forest_reference_redshift
from fnet.simulate.lattice import STEP, redshift_basis, redshift_table
from fnet.simulate.realdata import RealSpectrum, boss_spectra

REDROCK_FILES = {
    "QSO-LOZ": "rrtemplate-QSO-LOZ-v1.1.fits",
    "QSO-HIZ": "rrtemplate-QSO-HIZ-v1.1.fits",
    "QSO-None": "rrtemplate-QSO-None-v0.1.fits",
}
COMPOSITE_FILES = {"VandenBerk2001": "VandenBerk2001.dat", "Selsing2015": "Selsing2015.dat"}
# pipeline-redshift ranges of real spectra each basis is fitted to (basis built from z<1.7 / z>1.3 quasars)
FIT_Z_RANGE = {"QSO-LOZ": (0.0, 1.68), "QSO-HIZ": (1.30, 9.0), "QSO-None": (0.0, 9.0)}
# rest wavelength below which fit pixels are ignored: the forest of the data (and, for HIZ, the de-absorbed template
# there) would otherwise bias the coefficients; the forest is added later by igm
FIT_MIN_REST = {"QSO-LOZ": LYA, "QSO-HIZ": LYA, "QSO-None": LYA}
# line-free continuum windows (rest Å) used to split a composite into power-law continuum + lines
CONTINUUM_WINDOWS = ((1320, 1330), (1440, 1460), (1690, 1705), (2160, 2180), (3020, 3100), (4150, 4250),
                     (5550, 5650), (6000, 6200), (7700, 7900), (8100, 8300), (9500, 9700), (10500, 10800))
COMPOSITE_NOISY = (1150.0, 6500.0)  # composites are smoothed (boxcar) blueward / redward of these
# a fitted vector may seed a draw only if its spectrum was observed over >= 60% (log λ) of the target's rest window
# and reached within 10% of the window's blue end: PCA extrapolated blueward (into C IV / Lyα) makes fake features
MIN_OVERLAP = 0.6
MAX_BLUE_EXTRAPOLATION = 1.10
COEFF_JITTER = 0.05  # Gaussian perturbation per coefficient, in units of that coefficient's spread over the fits


def _read_redrock(path: Path) -> tuple[int, np.ndarray]:
    """Rest lattice start index and basis (nb, L) of a redrock template, from its header wavelength solution."""
    with fits.open(path, memmap=False) as hdul:
        hdr = hdul[0].header
        basis = np.asarray(hdul[0].data, dtype=np.float64)
    crval, cdelt = float(hdr["CRVAL1"]), float(hdr.get("CDELT1", STEP))
    crpix = float(hdr.get("CRPIX1", 1.0))
    if not hdr.get("LOGLAM", 1):
        raise ValueError(f"{path}: linear wavelength templates are not supported")
    start = crval - (crpix - 1.0) * cdelt
    k0 = round(start / STEP)
    if abs(cdelt - STEP) > 1e-9 or abs(start / STEP - k0) > 1e-3:
        # resample inside the template's own range only (never extend its edges)
        ll = start + cdelt * np.arange(basis.shape[1])
        k0 = int(np.ceil(ll[0] / STEP))
        grid = np.arange(k0, int(np.floor(ll[-1] / STEP)) + 1) * STEP
        basis = np.stack([np.interp(grid, ll, b) for b in basis])
    return _trim_flat_edges(int(k0), basis)


def _trim_flat_edges(k0: int, basis: np.ndarray) -> tuple[int, np.ndarray]:
    """Drop leading/trailing pixels where every vector is constant: padding, not data (QSO-None v0.1 holds data
    only over 605-8356 Å and repeats its edge values out to 450 and 10400 Å)."""
    varies = np.any(np.diff(basis, axis=1) != 0, axis=0)
    if not varies.any():
        raise ValueError("template basis is constant")
    first = int(np.argmax(varies))
    last = len(varies) - int(np.argmax(varies[::-1]))  # index of the last pixel that differs from its neighbour
    return k0 + first, basis[:, first : last + 1]


def _boxcar(x: np.ndarray, width: int) -> np.ndarray:
    """Running mean with edge-normalised window."""
    kern = np.ones(width)
    return np.convolve(x, kern, mode="same") / np.convolve(np.ones_like(x), kern, mode="same")


def _read_composite(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """Composite on the rest lattice inside its own range: start index, flux, power-law continuum estimate."""
    table = np.loadtxt(path, comments="#")
    lam, flux = table[:, 0], table[:, 1]
    valid = flux != 0  # exact zeros are masked points (Selsing: 757, mostly telluric; VdB: 8 below 820 Å)
    lam, flux = lam[valid], flux[valid]
    k0 = int(np.ceil(np.log10(lam[0]) / STEP))
    k1 = int(np.floor(np.log10(lam[-1]) / STEP))
    grid = 10.0 ** (np.arange(k0, k1 + 1) * STEP)
    f = np.interp(grid, lam, flux)
    smooth = _boxcar(f, 21)
    noisy = (grid < COMPOSITE_NOISY[0]) | (grid > COMPOSITE_NOISY[1])
    f = np.where(noisy, smooth, f)
    xs, ys = [], []
    for a, b in CONTINUUM_WINDOWS:
        sel = (grid >= a) & (grid <= b)
        if sel.sum() > 5 and np.median(f[sel]) > 0:
            xs.append(np.log(np.mean(grid[sel])))
            ys.append(np.log(np.median(f[sel])))
    xs, ys = np.array(xs), np.array(ys)
    lg = np.log(grid)
    cont = np.interp(lg, xs, ys)
    lo, hi = lg < xs[0], lg > xs[-1]
    cont[lo] = ys[0] + (ys[1] - ys[0]) / (xs[1] - xs[0]) * (lg[lo] - xs[0])
    cont[hi] = ys[-1] + (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * (lg[hi] - xs[-1])
    return k0, f, np.exp(cont)


@dataclass
class FitSet:
    """Coefficient vectors fitted to real spectra with one basis (normalised to unit mean model flux)."""

    coeffs: np.ndarray  # (nf, nb)
    rest_lo: np.ndarray  # observed rest-frame range of each fitted spectrum, Å
    rest_hi: np.ndarray
    z: np.ndarray
    rchi2: np.ndarray
    snr: np.ndarray
    forest_a: np.ndarray  # built-in forest transmission of each fitted model, Lyα-only / below-Lyβ window
    forest_b: np.ndarray
    files: list[str] = field(default_factory=list)
    n_tried: int = 0


@dataclass
class PCABasis:
    """A redrock basis on the rest lattice and the coefficient vectors fitted to real quasars."""

    name: str
    k0: int
    basis: np.ndarray
    fits: FitSet | None = None

    @property
    def lam_range(self) -> tuple[float, float]:
        """Rest wavelength coverage, Å."""
        return 10 ** (self.k0 * STEP), 10 ** ((self.k0 + self.basis.shape[1] - 1) * STEP)


@dataclass
class Composite:
    """A composite spectrum on the rest lattice, split into continuum and lines for tilting and line scaling."""

    name: str
    k0: int
    flux: np.ndarray
    continuum: np.ndarray
    forest: tuple[float, float] = (np.nan, np.nan)

    @property
    def lam_range(self) -> tuple[float, float]:
        """Rest wavelength coverage, Å."""
        return 10 ** (self.k0 * STEP), 10 ** ((self.k0 + len(self.flux) - 1) * STEP)


def fit_basis(basis: PCABasis, spectra: list[RealSpectrum]) -> FitSet:
    """Ivar-weighted least-squares fits of the basis to real QSO spectra at their pipeline (spAll) redshift."""
    zlo, zhi = FIT_Z_RANGE[basis.name]
    rows = []
    tried = 0
    nb = basis.basis.shape[0]
    for spec in spectra:
        if spec.spec_class != "QSO" or spec.zwarning != 0 or not (zlo <= spec.z <= zhi):
            continue
        tried += 1
        vals, cov = redshift_table(basis.basis, basis.k0, int(spec.k[0]), len(spec.k), np.full(nb, spec.z))
        rest = 10.0 ** (spec.k * STEP) / (1.0 + spec.z)
        use = cov.all(axis=0) & (spec.ivar > 0) & np.isfinite(spec.flux) & (rest >= FIT_MIN_REST[basis.name])
        if use.sum() < 500:
            continue
        sw = np.sqrt(spec.ivar[use])
        a = vals[:, use].T * sw[:, None]
        coef, *_ = np.linalg.lstsq(a, spec.flux[use] * sw, rcond=None)
        resid = spec.flux[use] * sw - a @ coef
        rchi2 = float(resid @ resid / max(use.sum() - nb, 1))
        model = coef @ basis.basis
        lo_k = max(int(spec.k[0] - np.log10(1 + spec.z) / STEP - basis.k0), 0)
        hi_k = min(int(spec.k[-1] - np.log10(1 + spec.z) / STEP - basis.k0), basis.basis.shape[1] - 1)
        seg = model[lo_k : hi_k + 1]
        lam_seg = 10 ** ((basis.k0 + np.arange(lo_k, hi_k + 1)) * STEP)
        red = seg[lam_seg > 1250.0] if np.any(lam_seg > 1250.0) else seg
        norm = float(np.mean(red))
        if not np.isfinite(norm) or norm <= 0 or np.mean(seg[lam_seg > LYMAN_LIMIT] < -0.05 * norm) > 0.01:
            continue
        snr = float(np.median(spec.flux[use] * sw))
        fa, fb = builtin_forest(10 ** ((basis.k0 + np.arange(len(model))) * STEP), model)
        rows.append((coef / norm, rest[0], rest[-1], spec.z, rchi2, snr, fa, fb, spec.path.name))
    if not rows:
        empty = np.zeros(0)
        return FitSet(np.zeros((0, nb)), empty, empty, empty, empty, empty, empty, empty, [], tried)
    cols = list(zip(*rows))
    return FitSet(
        coeffs=np.array(cols[0]),
        rest_lo=np.array(cols[1]),
        rest_hi=np.array(cols[2]),
        z=np.array(cols[3]),
        rchi2=np.array(cols[4]),
        snr=np.array(cols[5]),
        forest_a=np.array(cols[6]),
        forest_b=np.array(cols[7]),
        files=list(cols[8]),
        n_tried=tried,
    )


class TemplateLibrary:
    """All template sources found under data_dir/templates, with redrock bases fitted to data_dir's BOSS quasars."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        tdir = self.data_dir / "templates"
        self.bases: dict[str, PCABasis] = {}
        self.composites: dict[str, Composite] = {}
        spectra = boss_spectra(self.data_dir)
        for name, fname in REDROCK_FILES.items():
            if (tdir / fname).exists():
                k0, basis = _read_redrock(tdir / fname)
                pca = PCABasis(name, k0, basis)
                pca.fits = fit_basis(pca, spectra)
                if len(pca.fits.coeffs) >= 2:
                    self.bases[name] = pca
        for name, fname in COMPOSITE_FILES.items():
            if (tdir / fname).exists():
                comp = Composite(name, *_read_composite(tdir / fname))
                comp.forest = builtin_forest(10 ** ((comp.k0 + np.arange(len(comp.flux))) * STEP), comp.flux)
                self.composites[name] = comp

    @property
    def sources(self) -> list[str]:
        """Names of the usable template sources."""
        return list(self.bases) + list(self.composites)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per source: spectra tried, vectors kept, median reduced chi2 / S/N, z range, built-in forest."""
        out: dict[str, dict[str, float]] = {}
        for name, b in self.bases.items():
            f = b.fits
            out[name] = {
                "tried": f.n_tried,
                "kept": len(f.coeffs),
                "median_rchi2": float(np.median(f.rchi2)),
                "median_snr": float(np.median(f.snr)),
                "z_min": float(f.z.min()),
                "z_max": float(f.z.max()),
                "forest_lya": float(np.nanmedian(f.forest_a)) if np.isfinite(f.forest_a).any() else float("nan"),
                "forest_lyb": float(np.nanmedian(f.forest_b)) if np.isfinite(f.forest_b).any() else float("nan"),
            }
        for name, c in self.composites.items():
            out[name] = {"forest_lya": c.forest[0], "forest_lyb": c.forest[1]}
        return out

    def _window(self, z: np.ndarray, lam_min: float, lam_max: float) -> tuple[np.ndarray, np.ndarray]:
        """Rest window a quasar at z shows on the grid, redward of the Lyman limit."""
        return np.maximum(lam_min / (1.0 + z), LYMAN_LIMIT), lam_max / (1.0 + z)

    def _candidates(self, basis: PCABasis, z: np.ndarray, lam_min: float, lam_max: float) -> np.ndarray:
        """(n, nf) bool: fitted vectors observed over >= MIN_OVERLAP of each target's rest window (log λ)."""
        lo, hi = self._window(z, lam_min, lam_max)
        f = basis.fits
        a = np.maximum(np.log(lo)[:, None], np.log(f.rest_lo)[None, :])
        b = np.minimum(np.log(hi)[:, None], np.log(f.rest_hi)[None, :])
        frac = np.clip(b - a, 0, None) / np.log(hi / lo)[:, None]
        return (frac >= MIN_OVERLAP) & (f.rest_lo[None, :] <= MAX_BLUE_EXTRAPOLATION * lo[:, None])

    def eligible(self, name: str, z: np.ndarray, lam_min: float, lam_max: float) -> np.ndarray:
        """True where the source covers the whole grid redward of the Lyman limit at z (and has seed vectors)."""
        z = np.asarray(z, dtype=np.float64)
        lo, hi = self._window(z, lam_min, lam_max)
        src = self.bases.get(name) or self.composites.get(name)
        if src is None:
            return np.zeros(len(z), bool)
        t_lo, t_hi = src.lam_range
        ok = (t_lo <= lo * (1 + 1e-6)) & (t_hi >= hi * (1 - 1e-6))
        if name in self.bases:
            ok &= self._candidates(self.bases[name], z, lam_min, lam_max).any(axis=1)
        return ok

    def draw(
        self, name: str, loglam: np.ndarray, z: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rest-frame spectra of one source for quasars at z on the lattice loglam: flux (n, m) float32, covered
        (n, m), and per-row info (forest reference redshifts, fit indices)."""
        if name in self.bases:
            flux, covered, info = self._draw_basis(self.bases[name], loglam, z, rng)
        else:
            flux, covered, info = self._draw_composite(self.composites[name], loglam, z, rng)
        # blueward of a template's start only the Lyman-limit region may remain: it is ~black, so 0 is used
        below_ll = 10.0 ** loglam[None, :] < LYMAN_LIMIT * (1.0 + np.asarray(z, dtype=np.float64)[:, None])
        return flux, covered | below_ll, info

    def _draw_basis(self, b: PCABasis, loglam, z, rng):
        """Mix two fitted vectors (weight 0.5-1 on the first) + small jitter; redraw spectra that go negative."""
        z = np.asarray(z, dtype=np.float64)
        n, m = len(z), len(loglam)
        k0 = int(round(loglam[0] / STEP))
        lam_min, lam_max = 10 ** loglam[0], 10 ** loglam[-1]
        f = b.fits
        cand = self._candidates(b, z, lam_min, lam_max)
        spread = f.coeffs.std(axis=0) + 1e-12
        flux = np.zeros((n, m), dtype=np.float32)
        covered = np.zeros((n, m), dtype=bool)
        first = np.zeros(n, dtype=np.int64)
        second = np.zeros(n, dtype=np.int64)
        weight = np.ones(n)
        todo = np.arange(n)
        rest_ok = (10.0 ** loglam[None, :] / (1.0 + z[:, None])) > LYMAN_LIMIT
        for attempt in range(12):
            if len(todo) == 0:
                break
            c = cand[todo]
            # pick two candidates uniformly among each row's allowed fits (fall back to any fit if none)
            c = np.where(c.any(axis=1, keepdims=True), c, True)
            cum = np.cumsum(c, axis=1)
            tot = cum[:, -1]
            i = np.argmax(cum > (rng.random(len(todo)) * tot)[:, None], axis=1)
            j = np.argmax(cum > (rng.random(len(todo)) * tot)[:, None], axis=1)
            w = 0.5 + 0.5 * rng.random(len(todo))
            jitter = COEFF_JITTER * spread[None, :] * rng.standard_normal((len(todo), f.coeffs.shape[1]))
            if attempt == 11:  # last resort: an unperturbed fitted vector (positive by construction)
                j, w, jitter = i, np.ones(len(todo)), 0.0
            coef = w[:, None] * f.coeffs[i] + (1 - w)[:, None] * f.coeffs[j] + jitter
            vals, cov = redshift_basis(b.basis, coef, b.k0, k0, m, z[todo])
            use = cov & rest_ok[todo]
            mean = np.where(use, vals, 0).sum(axis=1) / np.maximum(use.sum(axis=1), 1)
            neg = (use & (vals < -0.05 * mean[:, None])).sum(axis=1) > 0.01 * use.sum(axis=1)
            ok = (mean > 0) & ~neg
            done = todo[ok]
            flux[done] = vals[ok]
            covered[done] = cov[ok]
            first[done], second[done], weight[done] = i[ok], j[ok], w[ok]
            todo = todo[~ok]
        # forest transmission built into the mixed model (NaN-safe mix of the two fitted models' values)
        mix_a = weight * f.forest_a[first] + (1 - weight) * f.forest_a[second]
        mix_b = weight * f.forest_b[first] + (1 - weight) * f.forest_b[second]
        info = {
            "fit_index": first,
            "z_ref_lya": forest_reference_redshift(mix_a, 0),
            "z_ref_lyb": forest_reference_redshift(mix_b, 1),
            "resolution_done": np.ones(n, dtype=bool),
        }
        return flux, covered, info

    def _draw_composite(self, comp: Composite, loglam, z, rng):
        """Composite with a random power-law tilt (Δα_ν ~ N(0, 0.3)) and line strengths scaled by lognormal(0.3)."""
        z = np.asarray(z, dtype=np.float64)
        n, m = len(z), len(loglam)
        k0 = int(round(loglam[0] / STEP))
        tot, covered = redshift_table(comp.flux.astype(np.float32), comp.k0, k0, m, z)
        cont, _ = redshift_table(comp.continuum.astype(np.float32), comp.k0, k0, m, z)
        ln_rest = (np.log(10.0) * loglam)[None, :] - np.log1p(z)[:, None]
        d_alpha = 0.3 * rng.standard_normal(n)
        line_scale = np.exp(0.3 * rng.standard_normal(n))
        tilt = np.exp((-d_alpha[:, None] * (ln_rest - np.log(2000.0))).astype(np.float32))
        # lines are scaled only redward of 1170 Å (the forest is handled by igm)
        ramp = np.clip((np.exp(ln_rest) - 1150.0) / 40.0, 0.0, 1.0).astype(np.float32)
        scale = 1.0 + (line_scale[:, None].astype(np.float32) - 1.0) * ramp
        flux = (cont + scale * (tot - cont)) * tilt
        flux[~covered] = 0
        info = {
            "fit_index": np.full(n, -1),
            "z_ref_lya": np.full(n, forest_reference_redshift(comp.forest[0], 0)),
            "z_ref_lyb": np.full(n, forest_reference_redshift(comp.forest[1], 1)),
            "resolution_done": np.ones(n, dtype=bool),
            "d_alpha": d_alpha,
            "line_scale": line_scale,
        }
        return flux.astype(np.float32), covered, info


_LIBRARIES: dict[Path, TemplateLibrary] = {}


def template_library(data_dir: Path) -> TemplateLibrary:
    """The TemplateLibrary of a data folder, built (and fitted) once per process."""
    key = Path(data_dir).resolve()
    if key not in _LIBRARIES:
        _LIBRARIES[key] = TemplateLibrary(key)
    return _LIBRARIES[key]
