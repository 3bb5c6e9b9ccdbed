"""QuasarSimulator: BOSS-like quasar spectra at any redshift 0-7, batched and vectorised (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fnet.runtime.spectrum import Spectrum
from fnet.simulate import absorbers, parametric
from fnet.simulate.igm import LognormalForest, lyman_limit_transmission
from fnet.simulate.lattice import lattice
from fnet.simulate.noise import NoiseLibrary
from fnet.simulate.observe import (
    apply_calibration_errors,
    draw_truncation,
    observe,
    scale_to_magnitude,
    snr_for_magnitude,
)
from fnet.simulate.paths import resolve_data_dir
from fnet.simulate.realdata import boss_spectra
from fnet.simulate.restframe import convolve_and_erode
from fnet.simulate.templates import TemplateLibrary, template_library

SOURCES = ("auto", "templates", "parametric", "mixed")
Z_DISTRIBUTIONS = ("uniform", "dr16q")


@dataclass
class SimulatorConfig:
    """Knobs of the simulation; defaults follow published statistics and the real BOSS files."""

    wave_range: tuple[float, float] = (3560.0, 10400.0)  # grid: lattice pixels loglam = 1e-4 k inside this range
    mag_range: tuple[float, float] = (18.0, 22.5)  # AB magnitude in the normalisation band, uniform
    snr_range: tuple[float, float] | None = None  # if set, mean S/N per pixel log-uniform here (else from mag)
    parametric_fraction: float = 0.5  # share of parametric spectra in "mixed" mode
    template_weights: dict[str, float] = field(
        default_factory=lambda: {
            "QSO-LOZ": 1.0, "QSO-HIZ": 1.0, "QSO-None": 1.0, "VandenBerk2001": 0.5, "Selsing2015": 0.5
        }
    )
    forest: bool = True  # Lyα/Lyβ forest (lognormal field, FG08 mean)
    forest_sigma: float = 1.2  # lognormal width of the forest optical depth
    lyman_limit: bool = True  # quasar's own Lyman-limit cut with a small leak
    absorber_rate: float = 1.0  # multiplier on the LLS/DLA incidence (0 disables)
    bal_fraction: float = 0.10  # fraction with BAL troughs (observed ~10-15%)
    line_shifts: bool = True  # parametric: mean high-ionisation blueshifts and per-object scatter
    resolution_sigma: tuple[float, float] = (0.8, 1.3)  # LSF σ in pixels for parametric spectra (R ≈ 1700-2700)
    template_extra_sigma: tuple[float, float] = (0.3, 0.6)  # templates are already at BOSS resolution
    sky_residual: float = 1.0  # scale of sky-subtraction residuals (0 disables)
    calibration_rms: float = 0.0  # smooth flux-calibration errors (observe.calibration_errors; 0 disables)
    arm_step_rms: float = 0.0  # blue/red arm scale mismatch at the dichroic (0 disables)
    splice_bump_rms: float = 0.0  # broad bump/dip where the arms are spliced (0 disables)
    blue_end_rms: float = 0.0  # flux calibration failing below ~3900-4500 Å: rise/fall and unflagged noise (0 disables)
    p_blue_cut: float = 0.25  # probability of a late blue start (3560-3800 Å)
    p_red_cut: float = 0.30  # probability of an early red end (9000-10400 Å)
    p_gap: float = 0.05  # probability of a 10-300 pixel gap
    noise: str = "auto"  # "real" (shared BOSS vectors), "synthetic", or "auto" (real when available)
    z_dist: str = "uniform"  # default redshift distribution of sample(): "uniform" or "dr16q"


@dataclass
class SimulatedBatch:
    """A batch on one shared lattice grid; pixels outside each spectrum's observed window have good=False."""

    loglam: np.ndarray  # (m,) float64, = 1e-4 k
    flux: np.ndarray  # (n, m) float32, 1e-17 erg/s/cm²/Å
    ivar: np.ndarray  # (n, m) float32
    and_mask: np.ndarray  # (n, m) int32 (SDSS spPixMask bits; NODATA outside the observed window)
    good: np.ndarray  # (n, m) bool: inside the window, ivar > 0 and finite
    z: np.ndarray  # (n,) float64 true redshift
    model: np.ndarray  # (n, m) float32 noiseless flux (what the noise was added to), also outside the window
    sky: np.ndarray  # (n, m) float32 sky spectrum of the noise vector used
    params: dict[str, np.ndarray]  # per-object: source, snr, mag, bal, dla, n_lls, noise_vector, pix_start, ...

    def __len__(self) -> int:
        return len(self.z)


def draw_redshifts(n: int, z_range: tuple[float, float], rng: np.random.Generator, dist: str = "uniform") -> np.ndarray:
    """Redshifts: uniform in z_range, or "dr16q" (mixture peaked at z≈1-3 with tails), truncated to z_range."""
    lo, hi = z_range
    if dist == "uniform":
        return rng.uniform(lo, hi, n)
    if dist != "dr16q":
        raise ValueError(f"z_dist must be one of {Z_DISTRIBUTIONS}, got {dist!r}")
    # rough DR16Q shape: low-z bump, main peak at 2-2.5, high-z tail, plus a flat floor to keep all z populated
    comps = np.array([[1.3, 0.5, 0.30], [2.3, 0.45, 0.45], [3.2, 0.7, 0.17], [np.nan, np.nan, 0.08]])
    out = np.empty(0)
    while len(out) < n:
        k = rng.choice(len(comps), size=2 * n, p=comps[:, 2])
        gauss = comps[k, 0] + comps[k, 1] * rng.standard_normal(2 * n)
        draw = np.where(np.isnan(comps[k, 0]), rng.uniform(lo, hi, 2 * n), gauss)
        out = np.concatenate([out, draw[(draw >= lo) & (draw <= hi)]])
    return out[:n]


class QuasarSimulator:
    """Simulated BOSS quasar observations from real templates, a parametric model, or a mix of both."""

    def __init__(
        self,
        source: str = "auto",
        data_dir: Path | str | None = None,
        seed: int | None = None,
        config: SimulatorConfig | dict | None = None,
    ):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if isinstance(config, dict):
            config = SimulatorConfig(**config)
        self.config = config or SimulatorConfig()
        self.data_dir = resolve_data_dir(data_dir)
        self.rng = np.random.default_rng(seed)
        self.k0, self.loglam = lattice(*self.config.wave_range)
        self.templates: TemplateLibrary | None = None
        if source in ("auto", "templates", "mixed") and self.data_dir is not None:
            lib = template_library(self.data_dir)
            self.templates = lib if lib.sources else None
        if source in ("templates", "mixed") and self.templates is None:
            raise FileNotFoundError(
                f"source={source!r} needs the template files under <data_dir>/templates "
                f"(data dir: {self.data_dir}); use source='parametric' or point data_dir/FNET_SHARED_DATA at them"
            )
        self.source = ("mixed" if self.templates is not None else "parametric") if source == "auto" else source
        self.noise = self._noise_library()
        self.forest = LognormalForest(self.config.forest_sigma)

    def _noise_library(self) -> NoiseLibrary:
        """Real BOSS vectors when present (and allowed), else synthetic ones (fixed seed: same for every run)."""
        mode = self.config.noise
        if mode not in ("auto", "real", "synthetic"):
            raise ValueError(f"config.noise must be auto, real or synthetic, got {mode!r}")
        if mode != "synthetic" and self.data_dir is not None:
            spectra = boss_spectra(self.data_dir)
            if spectra:
                return NoiseLibrary.from_real(spectra, self.k0, len(self.loglam))
        if mode == "real":
            raise FileNotFoundError(f"no BOSS spec files under {self.data_dir}/sdss for real noise vectors")
        return NoiseLibrary.synthetic(self.loglam, np.random.default_rng(12345))

    def _assign_sources(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per-object source name: 'parametric' or a template source eligible (full coverage) at its z."""
        n = len(z)
        names = np.full(n, "parametric", dtype=object)
        if self.source == "parametric" or self.templates is None:
            return names
        u = rng.random(n)
        want_template = np.ones(n, bool) if self.source == "templates" else u >= self.config.parametric_fraction
        srcs = self.templates.sources
        lam_min, lam_max = 10 ** self.loglam[0], 10 ** self.loglam[-1]
        w = np.stack(
            [self.templates.eligible(s, z, lam_min, lam_max) * self.config.template_weights.get(s, 1.0) for s in srcs],
            axis=1,
        )
        tot = w.sum(axis=1)
        pick = np.argmax(np.cumsum(w, axis=1) > (rng.random(n) * tot)[:, None], axis=1)
        ok = want_template & (tot > 0)
        names[ok] = np.array(srcs, dtype=object)[pick[ok]]
        return names

    def noiseless(self, z: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Noiseless quasar models at z after absorption and resolution, before flux calibration (arbitrary scale):
        model (n, m) float32, usable (n, m) bool (template coverage, eroded by the LSF) and per-object parameters
        (source, is_template, sigma, fit_index, logn, bal, lyman_leak). Used by fnet.simulate.mixture for the
        quasar component of low-z AGN; draws with the same stream layout as sample()."""
        z = np.asarray(z, dtype=np.float64)
        streams = [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=10)]
        return self._intrinsic(z, streams)

    def _intrinsic(self, z: np.ndarray, streams: list[np.random.Generator]):
        """Steps 1-3 of sample() (intrinsic spectrum, absorption, resolution) with sample()'s random streams."""
        cfg = self.config
        n = len(z)
        ll, m = self.loglam, len(self.loglam)
        lam = 10.0**ll
        source = self._assign_sources(z, streams[1])

        # 1. intrinsic spectrum (arbitrary units) and where it is defined
        model = np.zeros((n, m), np.float32)
        usable = np.ones((n, m), bool)
        z_ref_lya = np.full(n, np.nan)
        z_ref_lyb = np.full(n, np.nan)
        is_template = source != "parametric"
        fit_index = np.full(n, -1)
        rows = np.nonzero(~is_template)[0]
        pp = parametric.draw_params(n, streams[2], line_shifts=cfg.line_shifts)
        if len(rows):
            sub = {k: v[rows] for k, v in pp.items()}
            model[rows] = parametric.rest_model(ll, z[rows], sub)
        for name in sorted(set(source[is_template])):
            rows = np.nonzero(source == name)[0]
            flux, covered, info = self.templates.draw(name, ll, z[rows], streams[2])
            model[rows] = flux
            usable[rows] = covered
            z_ref_lya[rows] = info["z_ref_lya"]
            z_ref_lyb[rows] = info["z_ref_lyb"]
            fit_index[rows] = info["fit_index"]
        np.maximum(model, 0.0, out=model)

        # 2. absorption: forest, Lyman limit, LLS/DLAs, BAL troughs
        rest = lam[None, :] / (1.0 + z[:, None])
        if cfg.forest:
            model *= self.forest.transmission(ll, z, streams[3], z_ref_lya, z_ref_lyb)
        zabs, logn = absorbers.draw_systems(z, lam[0], streams[4], cfg.absorber_rate)
        if cfg.absorber_rate > 0 and np.isfinite(zabs).any():
            model *= absorbers.absorber_transmission(lam, zabs, logn).astype(np.float32)
        bal = absorbers.draw_bal(n, cfg.bal_fraction, streams[5])
        if bal["bal"].any():
            model *= absorbers.bal_transmission(rest, bal).astype(np.float32)
        ll_rng = streams[6]
        leak, scale = 0.15 * ll_rng.random(n), 20.0 + 80.0 * ll_rng.random(n)
        if cfg.lyman_limit:
            model *= lyman_limit_transmission(rest, leak, scale).astype(np.float32)

        # 3. resolution; pixels near a template's coverage edge are not usable after smoothing
        obs_rng = streams[7]
        s_par = obs_rng.uniform(*cfg.resolution_sigma, n)
        s_tpl = obs_rng.uniform(*cfg.template_extra_sigma, n)
        sigma = np.where(is_template, s_tpl, s_par)
        model, usable = convolve_and_erode(model, usable, sigma)  # model is float32 already: no copy, same bits

        aux = {"source": source, "is_template": is_template, "sigma": sigma, "fit_index": fit_index, "logn": logn,
               "bal": bal, "lyman_leak": leak}
        return model, usable, aux

    def sample(
        self,
        n: int,
        z: np.ndarray | None = None,
        z_range: tuple[float, float] = (0.0, 7.0),
        rng: np.random.Generator | None = None,
        z_dist: str | None = None,
    ) -> SimulatedBatch:
        """Simulate n quasars (at the given z, else drawn from z_dist over z_range) as BOSS-like observations."""
        cfg = self.config
        rng = self.rng if rng is None else rng
        # independent streams per component: switching one component off never changes the others' draws
        streams = [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=10)]
        if z is None:
            z = draw_redshifts(n, z_range, streams[0], z_dist or cfg.z_dist)
        z = np.broadcast_to(np.asarray(z, dtype=np.float64), (n,)).copy()
        if np.any(z < 0) or np.any(~np.isfinite(z)):
            raise ValueError("redshifts must be finite and >= 0")
        model, usable, aux = self._intrinsic(z, streams)
        ll, n = self.loglam, len(z)
        source, is_template, sigma = aux["source"], aux["is_template"], aux["sigma"]
        fit_index, logn, bal, leak = aux["fit_index"], aux["logn"], aux["bal"], aux["lyman_leak"]
        obs_rng = streams[7]

        # 4. flux calibration and S/N
        mag = obs_rng.uniform(*cfg.mag_range, n)
        model *= scale_to_magnitude(model, ll, z, mag).astype(np.float32)[:, None]
        apply_calibration_errors(model, ll, obs_rng, cfg)
        if cfg.snr_range is None:
            snr = snr_for_magnitude(mag) * np.exp(0.25 * obs_rng.standard_normal(n))
        else:
            lo, hi = np.log(cfg.snr_range[0]), np.log(cfg.snr_range[1])
            snr = np.exp(obs_rng.uniform(lo, hi, n))

        # 5. observation through real noise vectors, truncation, masks
        vec_rng = streams[8]
        vector = vec_rng.integers(0, len(self.noise), n)
        window = draw_truncation(n, ll, vec_rng, cfg.p_blue_cut, cfg.p_red_cut, cfg.p_gap)
        obs = observe(model, usable, ll, z, snr, self.noise, vector, window, streams[9], cfg.sky_residual)

        on = cfg.absorber_rate > 0
        n_dla = np.sum(np.nan_to_num(logn, nan=0.0) >= absorbers.LOGN_DLA, axis=1) if on else np.zeros(n, int)
        n_lls = np.sum(np.isfinite(logn), axis=1) if on else np.zeros(n, int)
        params: dict[str, Any] = {
            "source": source.astype(str),
            "snr": snr,
            "mag": mag,
            "bal": bal["bal"] & (cfg.bal_fraction > 0),
            "dla": n_dla,
            "n_lls": n_lls,
            "noise_vector": vector,
            "fit_index": fit_index,
            "wdisp": np.where(is_template, np.hypot(1.0, sigma), sigma),
            "lyman_leak": leak if cfg.lyman_limit else np.ones(n),
            **window,
        }
        return SimulatedBatch(
            loglam=ll.copy(),
            flux=obs["flux"],
            ivar=obs["ivar"],
            and_mask=obs["and_mask"],
            good=obs["good"],
            z=z,
            model=model.astype(np.float32, copy=False),
            sky=obs["sky"].astype(np.float32),
            params=params,
        )


def to_spectra(batch: SimulatedBatch, source_name: str) -> list[Spectrum]:
    """One Spectrum per object, trimmed to its observed window (inner gaps stay, with good=False)."""
    out = []
    for i in range(len(batch)):
        a, b = int(batch.params["pix_start"][i]), int(batch.params["pix_end"][i]) + 1
        meta = {
            "Z_TRUE": float(batch.z[i]),
            "SIMULATED": True,
            "SIM_SOURCE": str(batch.params["source"][i]),
            "SIM_SNR": float(batch.params["snr"][i]),
        }
        out.append(
            Spectrum(
                source=source_name,
                row=i,
                loglam=batch.loglam[a:b].astype(np.float64),
                flux=batch.flux[i, a:b].astype(np.float64),
                ivar=batch.ivar[i, a:b].astype(np.float64),
                good=batch.good[i, a:b].copy(),
                format="simulated",
                meta=meta,
            )
        )
    return out
