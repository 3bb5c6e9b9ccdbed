"""Galaxies for the class-mix simulator: BOSS eigenbases, redrock's galaxy PCA and archetypes, MARZ galaxies.

Sources (all under <data_dir>/templates/, put on one rest 1e-4 dex lattice span, flux-conserving):
- "rrPCA": galaxy/rrtemplate-galaxy-2016.fits, 5 PCA vectors (1167-10000 Å). Its ARCHETYPE_COEFF HDU holds the
  coefficients of 750 template galaxies (the DESI basis templates it was built from) in that basis: these are the
  seed coefficient vectors (the 129 whose reconstruction goes negative on > 0.1% of pixels are dropped), plus
  the projections of the other template galaxies that pass the test below (four MARZ galaxies).
- "BOSS-55740", "BOSS-56436": galaxy/spEigenGal-*.fits, 4 eigenvectors each (data to 9840 Å rest). Seeds: the
  least-squares projections of every template galaxy (the rrPCA reconstructions, the two redrock archetypes and
  the six MARZ galaxies) over their common wavelengths, kept when the rms residual is < 10% of the mean flux and
  the reconstruction stays positive.
- "rrArchetype": galaxy/rrarchetype-galaxy.fits, the LRG and ELG archetypes (1228-11000 Å) used directly.
- "MARZ": marz/marz_06..11 galaxies used directly (early, intermediate, late type; the composite, high-z
  star-forming and transitional ones never cover the whole grid, so they only seed the projections).
A basis draw is seed + 5% of the seeds' per-coefficient spread (the quasar simulator's COEFF_JITTER), redrawn if
it goes negative; a direct draw scales the template's emission lines (flux above a 151-pixel running median) by
exp(N(0, 0.3)). A source's weight for a subtype is scaled by min(1, its seeds of that subtype / 20). Every draw
gets a continuum tilt (λ/5500 Å)^β, β ~ N(0, tilt_sigma), for internal dust and aperture differences. A source
is used at z only if it covers the whole observed grid there (never extrapolated): rrPCA for z >= 0.04, BOSS
for z >= 0.057 (55740 also z <= 0.95), MARZ direct for 0.14-0.48, rrArchetype at every z. With `red_cover`
(SpectrumMixSimulator option galaxy_red_cover, e.g. 9200 Å) a source need only reach that observed wavelength,
and the pixels redward of its data are masked: so nearby galaxies (z < 0.04, where only the two archetypes reach
10,400 Å) get the whole library's variety, as real SDSS-I/II spectra that end near 9200 Å do.

Subtypes, measured on each seed's own rest spectrum (restframe.equivalent_width / d4000):
  "ELG"  EW([O II] 3728) >= 10 Å or EW(Hα) >= 20 Å (emission-line galaxy)
  "LRG"  passive: EW([O II]) < 5 Å, EW(Hα) < 5 Å and D4000 (f_λ, narrow) >= 1.3
  "intermediate" the rest (weak emission, moderate break)
Redshift per subtype (GALAXY_Z_SHAPES), truncated to z_range (default 0.005-1.2): 80% Gaussian + 20% uniform floor
so every z is populated. Gaussians: LRG N(0.5, 0.2) (the BOSS CMASS/eBOSS LRG peak), ELG N(0.8, 0.25) (eBOSS ELG
peak ~0.85), intermediate N(0.3, 0.2) (SDSS main-sample-like, low z). A modelling choice, not a fit; `z_shapes`
(SpectrumMixSimulator option galaxy_z_shapes) replaces any of them. The floor is uniform in z by default; with
`z_floor="log"` (option galaxy_z_floor) it is uniform in ln z, a prior with no preferred scale, which puts a
quarter of the floor below z 0.006 for z_range 0.001-1.2 (cz < 1800 km/s, where passive galaxies look like K stars)
instead of 0.4 % of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from fnet.runtime.constants import C_KMS
from fnet.simulate.lattice import STEP, redshift_table
from fnet.simulate.observe import child_rng
from fnet.simulate.restframe import (
    HALPHA, OII, d4000, equivalent_width, read_lattice_image, rebin_to_lattice, running_median, valid_range,
)

SUBTYPES = ("LRG", "ELG", "intermediate")
GALAXY_Z_SHAPES = {"LRG": (0.5, 0.2), "ELG": (0.8, 0.25), "intermediate": (0.3, 0.2)}
SPAN = (1150.0, 11000.0)  # rest Å of the common lattice span
BOSS_FILES = {"BOSS-55740": "galaxy/spEigenGal-55740.fits", "BOSS-56436": "galaxy/spEigenGal-56436.fits"}
MARZ_GALAXIES = ("marz_06_Early_Type_Absorption_Galaxy.fits", "marz_07_Intermediate_Type_Galaxy.fits",
                 "marz_08_Late_Type_Emission_Galaxy.fits", "marz_09_Composite_Galaxy.fits",
                 "marz_10_High_Redshift_Star_Forming_Galaxy.fits", "marz_11_Transitional_Galaxy.fits")
BOSS_RESOLUTION_SOURCES = ("BOSS-55740", "BOSS-56436", "MARZ")  # already at SDSS/BOSS resolution
COEFF_JITTER = 0.05
MIN_SEEDS = 20  # a source holding fewer seeds of a subtype gets weight n_seeds / MIN_SEEDS for it
LINE_SCALE_SIGMA = 0.3
Z_FLOORS = ("uniform", "log")  # the 20 % floor of a galaxy's redshift draw: uniform in z, or in ln z


# Narrow-line AGN (Seyfert 2 / LINER) emission added to a share of galaxies (GalaxyModel.draw nlagn_fraction):
# the galaxy population a spectrograph sees holds many (Kauffmann et al. 2003, MNRAS 346, 1055), and their
# [O III]/Hβ and [N II]/Hα ratios (Kewley et al. 2006, MNRAS 372, 961) are not those of the star-forming
# templates. Vacuum rest wavelengths (Å); each line's flux relative to [O III] 5007 is drawn per object below.
NLAGN_LINES = {"[NeV]3426": 3426.85, "[OII]3727": 3727.09, "[OII]3729": 3729.88, "[NeIII]3869": 3869.86,
               "Hgamma": 4341.69, "HeII4686": 4687.02, "Hbeta": 4862.68, "[OIII]4959": 4960.30,
               "[OIII]5007": 5008.24, "[OI]6300": 6302.05, "[NII]6548": 6549.86, "Halpha": 6564.61,
               "[NII]6584": 6585.27, "[SII]6716": 6718.29, "[SII]6731": 6732.67}


def narrow_line_agn(lam: np.ndarray, table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seyfert 2 / LINER narrow lines for rows of rest-frame spectra (lam Å): the added flux, same shape.

    Per object (broad priors spanning the AGN branches of the BPT diagram, a modelling choice, not a fit):
    EW([O III] 5007) log-uniform 3-300 Å on the row's own continuum near 5007 Å; log [O III]/Hβ ~ U(0, 1.1);
    log [N II] 6584/Hα ~ U(-0.25, 0.35); Hα/Hβ log-uniform 2.86-5 (case B to dusty); Hγ = 0.47 Hβ;
    [O III] 4959 = 5007/2.98, [N II] 6548 = 6584/3.05; log [O II]/[O III] ~ U(-0.8, 0.3) (split 1 : 1.3);
    log [Ne III]/[O III] ~ U(-1.3, -0.8); log [Ne V]/[O III] ~ U(-1.5, -0.8); log He II/Hβ ~ U(-1, -0.5);
    log [S II]/Hα ~ U(-0.6, 0) (6716/6731 ~ U(0.8, 1.3)); log [O I]/Hα ~ U(-1.5, -0.7); Gaussian lines of
    σ ~ U(80, 350) km/s. Rows without continuum near 5007 Å get nothing.
    """
    n = len(table)
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    near = (lam > 4900.0) & (lam < 5150.0)
    cont = np.median(table[:, near], axis=1) if near.any() else np.zeros(n)
    oiii = 10 ** u(np.log10(3.0), np.log10(300.0)) * np.maximum(cont, 0.0)
    hbeta = oiii / 10 ** u(0.0, 1.1)
    halpha = hbeta * 10 ** u(np.log10(2.86), np.log10(5.0))
    nii = halpha * 10 ** u(-0.25, 0.35)
    oii = oiii * 10 ** u(-0.8, 0.3)
    sii = halpha * 10 ** u(-0.6, 0.0)
    sii_ratio = u(0.8, 1.3)
    flux = {"[OIII]5007": oiii, "[OIII]4959": oiii / 2.98, "Hbeta": hbeta, "Hgamma": 0.47 * hbeta,
            "Halpha": halpha, "[NII]6584": nii, "[NII]6548": nii / 3.05, "[OII]3727": oii / 2.3,
            "[OII]3729": oii * 1.3 / 2.3, "[NeIII]3869": oiii * 10 ** u(-1.3, -0.8),
            "[NeV]3426": oiii * 10 ** u(-1.5, -0.8), "HeII4686": hbeta * 10 ** u(-1.0, -0.5),
            "[SII]6716": sii * sii_ratio / (1 + sii_ratio), "[SII]6731": sii / (1 + sii_ratio),
            "[OI]6300": halpha * 10 ** u(-1.5, -0.7)}
    sigma_v = u(80.0, 350.0)
    added = np.zeros_like(table)
    for name, centre in NLAGN_LINES.items():
        width = centre * sigma_v / C_KMS  # Å
        window = np.nonzero(np.abs(lam - centre) < 6 * width.max())[0]
        if len(window) == 0:
            continue
        shape = np.exp(-0.5 * ((lam[None, window] - centre) / width[:, None]) ** 2) / (np.sqrt(2 * np.pi) * width[:, None])
        added[:, window] += (flux[name][:, None] * shape).astype(added.dtype)
    return added


def classify(lam: np.ndarray, flux: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Subtype of each rest spectrum (rows of flux on wavelengths lam) and its EW([O II]), EW(Hα), D4000."""
    e_o, e_a, brk = equivalent_width(lam, flux, OII), equivalent_width(lam, flux, HALPHA), d4000(lam, flux)
    a = np.nan_to_num(e_a, nan=0.0)
    o = np.nan_to_num(e_o, nan=0.0)
    elg = (o >= 10.0) | (a >= 20.0)
    lrg = ~elg & (o < 5.0) & (a < 5.0) & (np.nan_to_num(brk, nan=0.0) >= 1.3)
    sub = np.where(elg, "ELG", np.where(lrg, "LRG", "intermediate"))
    return sub, {"ew_oii": e_o, "ew_ha": e_a, "d4000": brk}


@dataclass
class Source:
    """One galaxy source on the span: a basis with seed coefficients, or direct template rows."""

    name: str
    lo: int  # valid span indices (inclusive)
    hi: int
    basis: np.ndarray | None = None  # (nb, L) on the span
    coeffs: np.ndarray | None = None  # (ns, nb) seed coefficient vectors
    rows: np.ndarray | None = None  # (ns, L) direct templates
    seed_names: list[str] = field(default_factory=list)
    subtypes: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U12"))

    @property
    def n_seeds(self) -> int:
        return len(self.subtypes)

    def covers(self, k0: int, lam_min: float, lam_max: float, z: np.ndarray) -> np.ndarray:
        """True where the source's valid range holds the whole observed grid at z."""
        lo = 10 ** ((k0 + self.lo) * STEP) * (1 + z)
        hi = 10 ** ((k0 + self.hi) * STEP) * (1 + z)
        return (lo <= lam_min * (1 + 1e-6)) & (hi >= lam_max * (1 - 1e-6))


def _place(k0: int, L: int, sk0: int, values: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Rows given from lattice index sk0 put on the span (k0, L): array, first and last covered span index."""
    values = np.atleast_2d(values)
    out = np.zeros((values.shape[0], L))
    a = sk0 - k0
    i0, i1 = max(a, 0), min(a + values.shape[1], L)
    out[:, i0:i1] = values[:, i0 - a : i1 - a]
    return out, i0, i1 - 1


class GalaxyLibrary:
    """All galaxy sources found under data_dir/templates on one rest lattice span."""

    def __init__(self, data_dir: Path):
        tdir = Path(data_dir) / "templates"
        self.k0 = int(np.ceil(np.log10(SPAN[0]) / STEP))
        L = int(np.floor(np.log10(SPAN[1]) / STEP)) - self.k0 + 1
        self.lam = 10.0 ** ((self.k0 + np.arange(L)) * STEP)
        self.sources: dict[str, Source] = {}
        seeds, seed_lo, seed_hi, seed_names = [], [], [], []

        with fits.open(tdir / "galaxy/rrtemplate-galaxy-2016.fits", memmap=False) as hdul:
            hdr, vecs, coef = hdul[0].header, np.asarray(hdul[0].data, float), np.asarray(hdul[1].data, float)
        lam = float(hdr["CRVAL1"]) + float(hdr["CDELT1"]) * np.arange(vecs.shape[1])
        reb = [rebin_to_lattice(lam, v) for v in vecs]
        basis, lo, hi = _place(self.k0, L, reb[0][0], np.array([r[1] for r in reb]))
        spec = coef @ basis
        med = np.median(spec[:, lo : hi + 1], axis=1, keepdims=True)
        ok = (med[:, 0] > 0) & (np.mean(spec[:, lo : hi + 1] < -0.01 * med, axis=1) <= 0.001)
        rr = Source("rrPCA", lo, hi, basis=basis, coeffs=coef[ok] / med[ok],
                    seed_names=[f"rrPCA#{i}" for i in np.nonzero(ok)[0]])
        self.sources["rrPCA"] = rr
        seeds.append(spec[ok] / med[ok])
        seed_lo += [lo] * int(ok.sum())
        seed_hi += [hi] * int(ok.sum())
        seed_names += rr.seed_names

        direct_marz = []
        with fits.open(tdir / "galaxy/rrarchetype-galaxy.fits", memmap=False) as hdul:
            h1 = hdul[1].header
            arch = np.stack(hdul[1].data["ARCHETYPE"]).astype(float)
            names = [str(s).strip() for s in hdul[1].data["SUBTYPE"]]
        lam = float(h1["CRVAL1"]) + float(h1["CDELT1"]) * np.arange(arch.shape[1])
        reb = [rebin_to_lattice(lam, a) for a in arch]
        rows, lo, hi = _place(self.k0, L, reb[0][0], np.array([r[1] for r in reb]))
        rows /= np.median(rows[:, lo : hi + 1], axis=1, keepdims=True)
        self.sources["rrArchetype"] = Source("rrArchetype", lo, hi, rows=rows,
                                             seed_names=[f"rrArchetype {n}" for n in names])
        seeds.append(rows)
        seed_lo += [lo] * len(rows)
        seed_hi += [hi] * len(rows)
        seed_names += self.sources["rrArchetype"].seed_names
        for fname in MARZ_GALAXIES:
            path = tdir / "marz" / fname
            if not path.exists():
                continue
            with fits.open(path, memmap=False) as hdul:
                name = str(hdul[0].header.get("TNAME", fname))
                mk0, mflux = rebin_to_lattice(hdul["WAVE"].data, np.clip(hdul["FLUX"].data, 0.0, None))
            row, lo, hi = _place(self.k0, L, mk0, mflux)
            row /= np.median(row[0, lo : hi + 1])
            seeds.append(row)
            seed_lo.append(lo)
            seed_hi.append(hi)
            seed_names.append(f"MARZ {name}")
            direct_marz.append((row[0], lo, hi, f"MARZ {name}"))
        all_seeds = np.vstack(seeds)
        seed_lo, seed_hi = np.array(seed_lo), np.array(seed_hi)

        # direct MARZ source: the templates that cover a common range widest (early/intermediate/late type)
        if direct_marz:
            widest = max(hi - lo for _, lo, hi, _ in direct_marz)
            use = [d for d in direct_marz if d[2] - d[1] == widest]
            self.sources["MARZ"] = Source("MARZ", use[0][1], use[0][2], rows=np.array([d[0] for d in use]),
                                          seed_names=[d[3] for d in use])
        for name, fname in BOSS_FILES.items():
            if not (tdir / fname).exists():
                continue
            bk0, bvec, _ = read_lattice_image(tdir / fname)
            first, last = valid_range(bvec)
            bvec = bvec[:, first.max() : last.min() + 1]
            basis, lo, hi = _place(self.k0, L, bk0 + int(first.max()), bvec)
            self.sources[name] = self._projected(name, basis, lo, hi, all_seeds, seed_lo, seed_hi, seed_names)
        extra = self._projected("rrPCA", rr.basis, rr.lo, rr.hi, all_seeds[len(rr.coeffs):],
                                seed_lo[len(rr.coeffs):], seed_hi[len(rr.coeffs):], seed_names[len(rr.coeffs):])
        rr.coeffs = np.vstack([rr.coeffs, extra.coeffs])
        rr.seed_names += extra.seed_names
        for src in self.sources.values():
            sp = src.coeffs @ src.basis if src.basis is not None else src.rows
            src.subtypes, _ = classify(self.lam, sp)

    def _projected(self, name, basis, lo, hi, seeds, s_lo, s_hi, s_names) -> Source:
        """Least-squares projections of seed spectra on a basis over their common range, kept when good."""
        coeffs, names = [], []
        for spec, a, b, nm in zip(seeds, s_lo, s_hi, s_names):
            a, b = max(a, lo), min(b, hi)
            if b - a < 2000:
                continue
            A = basis[:, a : b + 1].T
            c, *_ = np.linalg.lstsq(A, spec[a : b + 1], rcond=None)
            rec = c @ basis[:, lo : hi + 1]
            mean = float(np.mean(spec[a : b + 1]))
            rms = float(np.sqrt(np.mean((A @ c - spec[a : b + 1]) ** 2)))
            if mean > 0 and rms < 0.1 * mean and np.mean(rec < -0.01 * mean) <= 0.001:
                coeffs.append(c / mean)
                names.append(nm)
        return Source(name, lo, hi, basis=basis, coeffs=np.array(coeffs).reshape(-1, basis.shape[0]),
                      seed_names=names)


_LIBS: dict[Path, GalaxyLibrary] = {}


def galaxy_library(data_dir: Path) -> GalaxyLibrary:
    key = Path(data_dir).resolve()
    if key not in _LIBS:
        _LIBS[key] = GalaxyLibrary(key)
    return _LIBS[key]


class GalaxyModel:
    """Noiseless observed-frame galaxy spectra on the lattice grid (before resolution and flux calibration)."""

    def __init__(self, data_dir: Path, subtype_weights: dict[str, float] | None = None,
                 source_weights: dict[str, float] | None = None, z_range: tuple[float, float] = (0.005, 1.2),
                 tilt_sigma: float = 0.2, z_shapes: dict[str, tuple[float, float]] | None = None,
                 red_cover: float | None = None, z_floor: str = "uniform"):
        self.lib = galaxy_library(data_dir)
        if z_floor not in Z_FLOORS:
            raise ValueError(f"galaxy z_floor must be one of {Z_FLOORS}, got {z_floor!r}")
        if z_floor == "log" and not z_range[0] > 0:
            raise ValueError(f"galaxy z_floor 'log' needs a z_range starting above 0, got {tuple(z_range)}")
        self.z_floor = z_floor
        # observed Å up to which a source must cover the grid (None: all of it); redward of what it covers the
        # spectrum is left uncovered, i.e. masked like an early red end (SDSS-I/II and LAMOST stop near 9200 Å)
        if red_cover is not None and red_cover <= 0:
            raise ValueError(f"galaxy red_cover must be an observed wavelength in Å (> 0), got {red_cover}")
        self.red_cover = red_cover
        # (mean, sigma) of the Gaussian part of each subtype's z draw; GALAXY_Z_SHAPES unless given
        self.z_shapes = {**GALAXY_Z_SHAPES, **{k: tuple(map(float, v)) for k, v in (z_shapes or {}).items()}}
        if set(self.z_shapes) - set(SUBTYPES) or any(len(v) != 2 or v[1] <= 0 for v in self.z_shapes.values()):
            raise ValueError(f"galaxy z_shapes must map subtypes {SUBTYPES} to (mean, sigma > 0), got {z_shapes}")
        sw = {"LRG": 0.4, "ELG": 0.4, "intermediate": 0.2} if subtype_weights is None else dict(subtype_weights)
        if set(sw) - set(SUBTYPES):
            raise ValueError(f"galaxy subtypes must be among {SUBTYPES}, got {sorted(sw)}")
        self.subtype_weights = sw
        self.source_weights = {s: 1.0 for s in self.lib.sources} if source_weights is None else dict(source_weights)
        self.z_range, self.tilt_sigma = tuple(z_range), tilt_sigma

    def _eligible(self, z: np.ndarray, subtype: str, lam_min: float, lam_max: float) -> np.ndarray:
        """(n, n_sources) weights of the sources that cover the grid at z and hold seeds of the subtype."""
        if self.red_cover is not None:
            lam_max = min(lam_max, self.red_cover)
        cols = []
        for name, src in self.lib.sources.items():
            # a source with few seeds of the subtype is down-weighted: never dozens of draws around one seed
            w = self.source_weights.get(name, 0.0) * min(1.0, np.sum(src.subtypes == subtype) / MIN_SEEDS)
            cols.append(src.covers(self.lib.k0, lam_min, lam_max, z) * w)
        return np.stack(cols, axis=1)

    def subtype_ok(self, z: np.ndarray, lam_min: float, lam_max: float) -> np.ndarray:
        """(n, len(SUBTYPES)) True where some source can make that subtype at z."""
        return np.stack([self._eligible(z, s, lam_min, lam_max).sum(axis=1) > 0 for s in SUBTYPES], axis=1)

    def draw_z(self, subtype: np.ndarray, rng: np.random.Generator, lam_min: float, lam_max: float,
               z_range: tuple[float, float] | None = None) -> np.ndarray:
        """Redshifts per subtype (80% Gaussian z_shapes, 20% uniform) inside z_range, where drawable."""
        lo, hi = z_range or self.z_range
        z = np.full(len(subtype), np.nan)
        todo = np.ones(len(z), bool)
        for _ in range(200):
            if not todo.any():
                break
            rows = np.nonzero(todo)[0]
            mu = np.array([self.z_shapes[s][0] for s in subtype[rows]])
            sd = np.array([self.z_shapes[s][1] for s in subtype[rows]])
            gaussian = rng.random(len(rows)) < 0.8
            shaped = mu + sd * rng.standard_normal(len(rows))
            if self.z_floor == "log" and lo > 0:  # same number of draws as the uniform floor: other streams unchanged
                floor = np.exp(rng.uniform(np.log(lo), np.log(hi), len(rows)))
            else:
                floor = rng.uniform(lo, hi, len(rows))
            draw = np.where(gaussian, shaped, floor)
            ok = (draw >= lo) & (draw <= hi)
            col = np.array([SUBTYPES.index(s) for s in subtype[rows]])
            ok &= self.subtype_ok(np.where(ok, draw, lo), lam_min, lam_max)[np.arange(len(rows)), col]
            z[rows[ok]] = draw[ok]
            todo[rows[ok]] = False
        if todo.any():
            raise ValueError(f"no galaxy source can make {sorted(set(subtype[todo]))} inside z_range {lo, hi}")
        return z

    def draw_subtypes(self, n: int, rng: np.random.Generator, weights: dict[str, float] | None = None,
                      z: np.ndarray | None = None, lam_min: float = 0.0, lam_max: float = 0.0) -> np.ndarray:
        """Subtypes from the weights; with z given, only among those drawable at each z."""
        w = self.subtype_weights if weights is None else weights
        p = np.array([w.get(s, 0.0) for s in SUBTYPES], dtype=np.float64)
        p = np.broadcast_to(p, (n, len(SUBTYPES))).copy()
        if z is not None:
            p *= self.subtype_ok(z, lam_min, lam_max)
            p[p.sum(axis=1) == 0] = self.subtype_ok(z, lam_min, lam_max)[p.sum(axis=1) == 0]
        tot = p.sum(axis=1)
        if np.any(tot <= 0):
            raise ValueError("no galaxy subtype can be drawn at some of the requested redshifts")
        pick = np.argmax(np.cumsum(p, axis=1) > (rng.random(n) * tot)[:, None], axis=1)
        return np.array(SUBTYPES, dtype=object)[pick].astype(str)

    def rest_spectra(self, subtype: np.ndarray, z: np.ndarray, rng: np.random.Generator, lam_min: float,
                     lam_max: float, nlagn_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rest-frame spectra on the library span (n, L), valid (n, L) and info (source, seed, ew/d4000, nlagn)."""
        lib = self.lib
        n, L = len(z), len(lib.lam)
        table = np.zeros((n, L), np.float32)
        valid = np.zeros((n, L), np.float32)
        names = list(lib.sources)
        source = np.empty(n, dtype=object)
        seed = np.empty(n, dtype=object)
        for s in sorted(set(subtype)):
            rows = np.nonzero(subtype == s)[0]
            w = self._eligible(z[rows], s, lam_min, lam_max)
            pick = np.argmax(np.cumsum(w, axis=1) > (rng.random(len(rows)) * w.sum(axis=1))[:, None], axis=1)
            for j, name in enumerate(names):
                sub = rows[pick == j]
                if len(sub) == 0:
                    continue
                src = lib.sources[name]
                cand = np.nonzero(src.subtypes == s)[0]
                k = cand[rng.integers(0, len(cand), len(sub))]
                table[sub] = self._realise(src, k, rng)
                valid[sub, src.lo : src.hi + 1] = 1.0
                source[sub] = name
                seed[sub] = np.array(src.seed_names, dtype=object)[k]
        nlagn = np.zeros(n, bool)
        if nlagn_fraction > 0:  # a child stream: without it every other draw stays as it was
            child = child_rng(rng)
            nlagn = child.random(n) < nlagn_fraction
            if nlagn.any():
                table[nlagn] += narrow_line_agn(lib.lam, table[nlagn], child) * (valid[nlagn] > 0)
        beta = self.tilt_sigma * rng.standard_normal(n)
        table *= ((lib.lam[None, :] / 5500.0) ** beta[:, None]).astype(np.float32)
        table[valid == 0] = 0.0
        measured = classify(lib.lam, table)[1]
        info = {"source": source.astype(str), "seed": seed.astype(str), "tilt": beta, "nlagn": nlagn, **measured}
        return table, valid, info

    def _realise(self, src: Source, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Spectra from seeds k of one source: jittered coefficients (redrawn if negative) or scaled lines."""
        if src.basis is not None:
            spread = src.coeffs.std(axis=0)
            out = np.zeros((len(k), src.basis.shape[1]))
            todo = np.arange(len(k))
            for attempt in range(4):
                jit = 0.0 if attempt == 3 else COEFF_JITTER
                c = src.coeffs[k[todo]] + jit * spread * rng.standard_normal((len(todo), len(spread)))
                sp = c @ src.basis
                seg = sp[:, src.lo : src.hi + 1]
                ok = np.mean(seg < -0.01 * np.median(seg, axis=1, keepdims=True), axis=1) <= 0.001
                ok |= attempt == 3
                out[todo[ok]] = sp[ok]
                todo = todo[~ok]
                if len(todo) == 0:
                    break
            return np.clip(out, 0.0, None)
        rows = src.rows[k]
        cont = running_median(rows, 151)
        lines = np.clip(rows - cont, 0.0, None)
        scale = np.exp(LINE_SCALE_SIGMA * rng.standard_normal(len(k)))[:, None]
        return np.clip(rows + (scale - 1.0) * lines, 0.0, None)

    def draw(self, n: int, loglam: np.ndarray, rng: np.random.Generator, z: np.ndarray | None = None,
             subtype: np.ndarray | None = None, z_range: tuple[float, float] | None = None,
             subtype_weights: dict[str, float] | None = None, nlagn_fraction: float = 0.0):
        """model (n, m) float32 (arbitrary scale), covered (n, m), info (z, subtype, source, seed, ew_oii, ...).

        nlagn_fraction: share of the galaxies given narrow-line AGN emission (narrow_line_agn; subtype "+NLAGN").
        """
        lam_min, lam_max = 10 ** loglam[0], 10 ** loglam[-1]
        if subtype is None:
            subtype = self.draw_subtypes(n, rng, subtype_weights, z, lam_min, lam_max)
        if z is None:
            z = self.draw_z(subtype, rng, lam_min, lam_max, z_range)
        z = np.asarray(z, dtype=np.float64)
        table, valid, info = self.rest_spectra(subtype, z, rng, lam_min, lam_max, nlagn_fraction)
        k0 = int(round(loglam[0] / STEP))
        flux, covered = redshift_table(table, self.lib.k0, k0, len(loglam), z)
        inside, _ = redshift_table(valid, self.lib.k0, k0, len(loglam), z)
        covered &= inside > 0.999
        flux[~covered] = 0.0
        info.update(z=z, subtype=np.char.add(np.asarray(subtype).astype(str), np.where(info["nlagn"], "+NLAGN", "")),
                    boss_resolution=np.isin(info["source"], BOSS_RESOLUTION_SOURCES))
        return flux.astype(np.float32), covered, info
