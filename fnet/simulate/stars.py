"""Stars for the class-mix simulator: the 123 real BOSS stellar templates, the BOSS cataclysmic-variable eigenbasis
and the five MARZ stars, at radial velocities of a few hundred km/s (|z| < 0.002).

Sources (all under <data_dir>/templates/):
- star/spEigenStar-55734.fits: 123 real star spectra on the 1e-4 dex lattice (3050-11960 Å; the six white-dwarf,
  carbon and L-dwarf spectra hold data only over ~3585-10330 Å: their constant edge padding is reported as not
  covered, never used). A draw is template i, blended with weight w ~ U(0, blend_max) with one of i's three
  nearest templates of the same spectral group (distance: rms of log flux over 3600-10300 Å); groups with
  physically distinct members (WD, carbon, L, CV) are never blended. This fills the space between neighbouring
  types without inventing shapes: the distribution is the template set itself plus linear interpolation.
- star/spEigenCVstar-55734.fits: 3 eigenvectors. Coefficients: c0 = 1, c_k ~ N(0, s_k) with
  s_k = sqrt(EIGENk / EIGEN0)·|e0|/|ek|, i.e. the header eigenvalues read as the variance of the training set's
  projections on unit-norm vectors (an assumption: no real CV spectra outside the evaluation sets are available
  to fit), with draws that go negative (> 0.5% of pixels below -2% of the median; ~19%) rejected and redrawn.
- marz/marz_0{1..5}_*_Star.fits: MARZ A, K, M3, M5, G stars, rebinned flux-conserving onto the lattice. They cover
  only 3510-7427 Å (A, K, M5) or 3810-9199 Å (M3, G): outside that each is continued by its best-matching BOSS
  template times the smoothed MARZ/BOSS ratio at the nearest edge, so no star carries a class-specific mask.

Group weights (STAR_GROUP_WEIGHTS) are a judgement of what a UV-excess / XDQSO-style quasar target list at high
Galactic latitude picks up: F/G halo turn-off stars first, then A/BHB stars, K/M dwarfs, white dwarfs, subdwarfs,
a few CVs, and rare O/B, carbon and L-type objects. Radial velocity: v ~ N(0, velocity_sigma) truncated at
±velocity_max (defaults 120 and 550 km/s: halo-like), z = sqrt((1+β)/(1-β)) - 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from fnet.runtime.constants import C_KMS
from fnet.simulate.lattice import STEP, redshift_table
from fnet.simulate.restframe import read_lattice_image, rebin_to_lattice, running_median, valid_range

STAR_FILE = "star/spEigenStar-55734.fits"
CV_FILE = "star/spEigenCVstar-55734.fits"
MARZ_STARS = ("marz_01_A_Star.fits", "marz_02_K_Star.fits", "marz_03_M3_Star.fits", "marz_04_M5_Star.fits",
              "marz_05_G_Star.fits")
STAR_GROUP_WEIGHTS = {
    "O": 0.005, "B": 0.03, "A": 0.15, "F": 0.25, "G": 0.17, "K": 0.12, "M": 0.08, "WD": 0.09, "subdwarf": 0.05,
    "CV": 0.03, "carbon": 0.01, "L": 0.005,
}
BLENDED_GROUPS = ("O", "B", "A", "F", "G", "K", "M", "subdwarf")
SHAPE_RANGE = (3600.0, 10300.0)  # Å, where every BOSS star template holds data


def star_group(name: str) -> str:
    """Spectral group of a BOSS/MARZ star template name ('F3/F5V (30743)' -> 'F', 'WDhotter' -> 'WD')."""
    if "WD" in name:
        return "WD"
    if name.startswith("sd"):
        return "subdwarf"
    if name == "Carbon":
        return "carbon"
    if name == "Ldwarf":
        return "L"
    if name == "CV":
        return "CV"
    return name[0].upper()


@dataclass
class StarLibrary:
    """Star spectra on one rest lattice span: rows (N, L) from k0, per-row valid [lo, hi], names, groups."""

    k0: int
    rows: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    names: list[str]
    groups: list[str]
    sources: list[str]
    neighbours: np.ndarray  # (N, 3) nearest same-group templates (-1: none)
    cv_k0: int
    cv_basis: np.ndarray  # (3, Lcv)
    cv_sigma: np.ndarray  # (3,) coefficient spread, c0 = 1

    @classmethod
    def load(cls, data_dir: Path) -> "StarLibrary":
        tdir = Path(data_dir) / "templates"
        k0, rows, hdr = read_lattice_image(tdir / STAR_FILE)
        names = [str(hdr.get(f"NAME{i}", f"star{i}")).strip() for i in range(rows.shape[0])]
        lo, hi = valid_range(rows)
        sources = ["BOSS"] * len(names)
        lam = 10.0 ** ((k0 + np.arange(rows.shape[1])) * STEP)
        marz_rows, marz_lo, marz_hi = [], [], []
        for fname in MARZ_STARS:
            path = tdir / "marz" / fname
            if not path.exists():
                continue
            with fits.open(path, memmap=False) as hdul:
                name = str(hdul[0].header.get("TNAME", fname)).replace(" Star", "")
                mk0, mflux = rebin_to_lattice(hdul["WAVE"].data, np.clip(hdul["FLUX"].data, 0.0, None))
            row = _splice(mk0, mflux, k0, rows, lo, hi)
            marz_rows.append(row)
            valid = row > 0
            marz_lo.append(int(np.argmax(valid)))
            marz_hi.append(int(len(row) - 1 - np.argmax(valid[::-1])))
            names.append(f"MARZ {name}")
            sources.append("MARZ")
        if marz_rows:
            rows = np.vstack([rows, np.array(marz_rows)])
            lo = np.concatenate([lo, marz_lo])
            hi = np.concatenate([hi, marz_hi])
        groups = [star_group(n.replace("MARZ ", "")) for n in names]
        cv_k0, cv_basis, cv_hdr = read_lattice_image(tdir / CV_FILE)
        eig = np.array([float(cv_hdr[f"EIGEN{i}"]) for i in range(cv_basis.shape[0])])
        norms = np.sqrt((cv_basis**2).sum(axis=1))
        cv_sigma = np.sqrt(eig / eig[0]) * norms[0] / norms
        neighbours = _neighbours(lam, rows, groups)
        return cls(k0, rows.astype(np.float32), np.asarray(lo), np.asarray(hi), names, groups, sources, neighbours,
                   cv_k0, cv_basis, cv_sigma)

    def group_members(self, group: str) -> np.ndarray:
        return np.array([i for i, g in enumerate(self.groups) if g == group], dtype=np.int64)


def _splice(mk0: int, mflux: np.ndarray, k0: int, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A MARZ star on the BOSS span: its own flux where it has data, the best-matching BOSS template times the
    smoothed ratio at the nearest MARZ edge elsewhere (inside that template's valid range)."""
    L = rows.shape[1]
    a, b = max(mk0 - k0, 0), min(mk0 - k0 + len(mflux), L)
    seg = mflux[a - (mk0 - k0) : b - (mk0 - k0)]
    cand = np.nonzero((lo <= a) & (hi >= b - 1))[0]
    lseg = np.log(np.clip(seg, 1e-3 * np.median(seg), None))
    best, best_d = cand[0], np.inf
    for i in cand:
        lr = np.log(np.clip(rows[i, a:b], 1e-6, None))
        d = np.std(lseg - lr)
        if d < best_d:
            best, best_d = i, d
    ratio = running_median((seg / np.clip(rows[best, a:b], 1e-12, None))[None, :], 201)[0]
    out = np.zeros(L)
    out[a:b] = seg
    out[lo[best] : a] = rows[best, lo[best] : a] * ratio[0]
    out[b : hi[best] + 1] = rows[best, b : hi[best] + 1] * ratio[-1]
    return out


def _neighbours(lam: np.ndarray, rows: np.ndarray, groups: list[str], k: int = 3) -> np.ndarray:
    """The k nearest templates of the same blendable group by rms log-flux difference over SHAPE_RANGE."""
    sel = (lam > SHAPE_RANGE[0]) & (lam < SHAPE_RANGE[1])
    shape = np.log(np.clip(rows[:, sel], 1e-6, None))
    shape = running_median(shape, 25)
    shape -= shape.mean(axis=1, keepdims=True)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    garr = np.array(groups)
    for i in range(len(rows)):
        if groups[i] not in BLENDED_GROUPS:
            continue
        same = np.nonzero((garr == groups[i]) & (np.arange(len(rows)) != i))[0]
        if len(same) == 0:
            continue
        d = np.sqrt(np.mean((shape[same] - shape[i]) ** 2, axis=1))
        near = same[np.argsort(d)[:k]]
        out[i, : len(near)] = near
    return out


_LIBS: dict[Path, StarLibrary] = {}


def star_library(data_dir: Path) -> StarLibrary:
    key = Path(data_dir).resolve()
    if key not in _LIBS:
        _LIBS[key] = StarLibrary.load(key)
    return _LIBS[key]


class StarModel:
    """Noiseless observed-frame star spectra on the lattice grid (before resolution and flux calibration)."""

    def __init__(self, data_dir: Path, group_weights: dict[str, float] | None = None, velocity_sigma: float = 120.0,
                 velocity_max: float = 550.0, blend_max: float = 0.3):
        self.lib = star_library(data_dir)
        weights = dict(STAR_GROUP_WEIGHTS if group_weights is None else group_weights)
        present = set(self.lib.groups) | {"CV"}
        unknown = set(weights) - present
        if unknown:
            raise ValueError(f"unknown star groups {sorted(unknown)}; known: {sorted(present)}")
        self.group_names = [g for g in weights if weights[g] > 0]
        w = np.array([weights[g] for g in self.group_names], dtype=np.float64)
        self.group_p = w / w.sum()
        self.velocity_sigma, self.velocity_max, self.blend_max = velocity_sigma, velocity_max, blend_max

    def draw_velocity(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Radial velocities (km/s), N(0, sigma) truncated at ±velocity_max."""
        v = rng.normal(0.0, self.velocity_sigma, n)
        bad = np.abs(v) > self.velocity_max
        while bad.any():
            v[bad] = rng.normal(0.0, self.velocity_sigma, bad.sum())
            bad = np.abs(v) > self.velocity_max
        return v

    def _cv_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n CV spectra from the eigenbasis, rejecting draws that go negative; placed on the star span."""
        lib = self.lib
        out = np.zeros((n, lib.rows.shape[1]), np.float32)
        done = 0
        while done < n:
            c = np.ones((n - done, len(lib.cv_sigma)))
            c[:, 1:] = rng.standard_normal((n - done, len(lib.cv_sigma) - 1)) * lib.cv_sigma[1:]
            sp = c @ lib.cv_basis
            med = np.median(sp, axis=1, keepdims=True)
            ok = (med[:, 0] > 0) & (np.mean(sp < -0.02 * med, axis=1) <= 0.005)
            sp = np.clip(sp[ok], 0.0, None)
            a = lib.cv_k0 - lib.k0
            take = min(len(sp), n - done)
            out[done : done + take, a : a + sp.shape[1]] = sp[:take]
            done += take
        return out

    def draw(self, n: int, loglam: np.ndarray, rng: np.random.Generator, z: np.ndarray | None = None):
        """model (n, m) float32 (arbitrary scale), covered (n, m) and info: z, v_kms, template, group, partner,
        blend, source. z given: those redshifts (radial velocities follow from them), else drawn."""
        lib = self.lib
        groups = np.array(self.group_names, dtype=object)[rng.choice(len(self.group_names), n, p=self.group_p)]
        idx = np.full(n, -1)
        partner = np.full(n, -1)
        blend = np.zeros(n)
        for g in sorted(set(groups) - {"CV"}):
            rows = np.nonzero(groups == g)[0]
            members = lib.group_members(g)
            idx[rows] = members[rng.integers(0, len(members), len(rows))]
        u_pick, u_w = rng.random(n), rng.random(n)
        if z is None:
            v = self.draw_velocity(n, rng)
            beta = v / C_KMS
            z = np.sqrt((1.0 + beta) / (1.0 - beta)) - 1.0
        else:
            z = np.asarray(z, dtype=np.float64)
            a2 = (1.0 + z) ** 2
            v = C_KMS * (a2 - 1.0) / (a2 + 1.0)
        is_cv = groups == "CV"
        table = np.zeros((n, lib.rows.shape[1]), np.float32)
        valid = np.zeros((n, lib.rows.shape[1]), np.float32)
        span = np.arange(lib.rows.shape[1])[None, :]
        for r in np.nonzero(~is_cv)[0]:
            i = idx[r]
            nb = lib.neighbours[i][lib.neighbours[i] >= 0]
            lo, hi = lib.lo[i], lib.hi[i]
            row = lib.rows[i]
            if len(nb) and self.blend_max > 0:
                j = nb[int(u_pick[r] * len(nb))]
                w = self.blend_max * u_w[r]
                row = (1.0 - w) * row + w * lib.rows[j] * (np.median(row) / np.median(lib.rows[j]))
                partner[r], blend[r] = j, w
                lo, hi = max(lo, lib.lo[j]), min(hi, lib.hi[j])
            table[r] = row
            valid[r, lo : hi + 1] = 1.0
        if is_cv.any():
            table[is_cv] = self._cv_rows(int(is_cv.sum()), rng)
            a = lib.cv_k0 - lib.k0
            cv_lo, cv_hi = valid_range(lib.cv_basis)
            valid[is_cv] = ((span >= a + cv_lo.max()) & (span <= a + cv_hi.min())).astype(np.float32)
        k0 = int(round(loglam[0] / STEP))
        flux, covered = redshift_table(table, lib.k0, k0, len(loglam), z)
        inside, _ = redshift_table(valid, lib.k0, k0, len(loglam), z)
        covered &= inside > 0.999
        flux[~covered] = 0.0
        names = np.array(lib.names + ["CV"], dtype=object)
        info = {
            "z": z, "v_kms": v, "template": names[np.where(is_cv, len(lib.names), idx)].astype(str),
            "group": groups.astype(str), "template_index": idx, "partner": partner, "blend": blend,
            "source": np.where(is_cv, "BOSS-CV", np.array(lib.sources + ["BOSS-CV"], dtype=object)[idx]).astype(str),
        }
        return flux.astype(np.float32), covered, info
