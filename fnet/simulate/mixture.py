"""SpectrumMixSimulator: a quasar target list's mix of quasars, low-z AGN with hosts, stars and galaxies.

Same calling convention and output as QuasarSimulator (so the training loop can use it through
data.simulator_class = "fnet.simulate:SpectrumMixSimulator"):

    sim = SpectrumMixSimulator(seed=1, mix={"QSO": 0.62, "AGN": 0.05, "STAR": 0.25, "GALAXY": 0.08})
    b = sim.sample(256, z_range=(0.0, 7.0))     # SimulatedBatch; b.params["spectype"] in CLASSES

Components of `mix` (weights, normalised): "QSO" (QuasarSimulator.sample, unchanged), "AGN" (quasar + host,
agn.py; spectype QSO, subtype "AGN+host"), "STAR" (stars.py), "GALAXY" (galaxies.py). Default DEFAULT_MIX: about
two thirds quasars, as in BOSS/eBOSS quasar target lists (Ross et al. 2012, ApJS 199, 3: the BOSS CORE sample is
"just over 50%" z > 2.2 quasars, the rest of its targets mostly stars and lower-z quasars; Myers et al. 2015, ApJS
221, 27: eBOSS CORE returns ~77 quasars deg⁻² from ~115 targets deg⁻² — treat the target density as
approximate), the rest mostly stars (colour-selected point sources) and a few galaxies (compact or AGN-like).

Every class goes through the same observing model: the QuasarSimulator's SimulatorConfig (`quasar` option) and its
noise library (real BOSS ivar/mask/sky vectors when ../shared/data is there), its resolution step, its
flux calibration, its magnitude → S/N law, its truncation/gap windows and its sky residuals (restframe.py's
convolve_and_erode and observe_rows call the very functions QuasarSimulator.sample uses). Only the magnitude
ranges differ per class (uniform; defaults: QSO the quasar config's 18-22.5, STAR 17.5-22, GALAXY 18.5-22.5
(fibre magnitudes of galaxies are faint), AGN 17-21.5 (low-z AGN in target lists are bright)).

Redshifts: quasars as QuasarSimulator (z_range, z_dist); stars z = v_r/c-like (|v| <= 550 km/s, |z| < 0.002,
possibly slightly negative); galaxies per subtype inside galaxy_z_range ∩ z_range; AGN uniform in agn_z_range ∩
z_range. With z given, `given_z` = "eligible" (default) draws each row's component only among those whose z range
holds its z (a star needs |z| <= 0.002); "override" keeps the mix exactly and uses the given z for quasars only
(batch.z is always the truth).

params (per object): spectype (str, one of CLASSES), spectype_index (int8 into CLASSES), component, subtype
(quasars "QSO"/"QSO-BAL", AGN "AGN+host", star group e.g. "F"/"WD"/"CV", galaxy "LRG"/"ELG"/"intermediate"),
template (star template / galaxy seed / quasar source), host_fraction (AGN: host share at rest 5100 Å; 0 for
QSO; NaN otherwise), log_l5100, v_kms (stars), ew_oii/ew_ha/d4000 (galaxies and AGN hosts, rest frame), plus
QuasarSimulator's keys (source, snr, mag, bal, dla, n_lls, noise_vector, fit_index, wdisp, lyman_leak, window).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fnet.simulate.agn import HostedAGNModel
from fnet.simulate.galaxies import Z_FLOORS, GalaxyModel
from fnet.simulate.restframe import convolve_and_erode, observe_rows
from fnet.simulate.simulator import QuasarSimulator, SimulatedBatch
from fnet.simulate.stars import StarModel

CLASSES = ("QSO", "STAR", "GALAXY")
COMPONENTS = ("QSO", "AGN", "STAR", "GALAXY")
COMPONENT_CLASS = {"QSO": "QSO", "AGN": "QSO", "STAR": "STAR", "GALAXY": "GALAXY"}
DEFAULT_MIX = {"QSO": 0.62, "AGN": 0.05, "STAR": 0.25, "GALAXY": 0.08}
STAR_Z_MAX = 0.002
GIVEN_Z = ("eligible", "override")


@dataclass
class MixConfig:
    """Knobs of SpectrumMixSimulator (all documented in the module docstring and docs/simulator-classes.md)."""

    mix: dict = field(default_factory=lambda: dict(DEFAULT_MIX))
    quasar_source: str = "auto"  # QuasarSimulator source
    quasar: dict = field(default_factory=dict)  # SimulatorConfig fields: the observing model of every class
    star_mag_range: tuple[float, float] = (17.5, 22.0)
    galaxy_mag_range: tuple[float, float] = (18.5, 22.5)
    agn_mag_range: tuple[float, float] = (17.0, 21.5)
    star_groups: dict | None = None  # stars.STAR_GROUP_WEIGHTS
    star_velocity_sigma: float = 120.0  # km/s
    star_velocity_max: float = 550.0  # km/s
    star_blend_max: float = 0.3
    galaxy_subtypes: dict | None = None  # {"LRG": 0.4, "ELG": 0.4, "intermediate": 0.2}
    galaxy_sources: dict | None = None  # weight per galaxy source (default 1 each)
    galaxy_z_range: tuple[float, float] = (0.005, 1.2)
    galaxy_tilt_sigma: float = 0.2
    galaxy_z_shapes: dict | None = None  # {"LRG": (mean, sigma), ...}: galaxies.GALAXY_Z_SHAPES by default
    galaxy_nlagn_fraction: float = 0.0  # share of GALAXY rows with narrow-line AGN emission (galaxies.narrow_line_agn)
    galaxy_red_cover: float | None = None  # observed Å a galaxy source must reach (None: the whole grid); see galaxies
    galaxy_z_floor: str = "uniform"  # the 20 % floor of galaxy redshifts: "uniform" in z or "log" (uniform in ln z)
    agn_z_range: tuple[float, float] = (0.03, 0.8)
    agn_host_subtypes: dict | None = None  # {"LRG": 0.5, "intermediate": 0.3, "ELG": 0.2}
    agn_host_scatter_dex: float = 0.2
    given_z: str = "eligible"


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


class SpectrumMixSimulator:
    """Quasars, hosted low-z AGN, stars and galaxies through one observing model, in a configurable mix."""

    def __init__(self, data_dir: Path | str | None = None, seed: int | None = None,
                 config: MixConfig | dict | None = None, **options: Any):
        base = asdict(config) if isinstance(config, MixConfig) else dict(config or {})
        base.update(options)
        known = {f.name for f in fields(MixConfig)}
        if set(base) - known:
            raise TypeError(f"unknown SpectrumMixSimulator options {sorted(set(base) - known)}")
        self.config = cfg = MixConfig(**base)
        if set(cfg.mix) - set(COMPONENTS) or any(float(v) < 0 for v in cfg.mix.values()):
            raise ValueError(f"mix must map some of {COMPONENTS} to weights >= 0, got {cfg.mix}")
        w = np.array([float(cfg.mix.get(c, 0.0)) for c in COMPONENTS])
        if w.sum() <= 0:
            raise ValueError("mix weights sum to 0")
        self.weights = w / w.sum()
        if cfg.given_z not in GIVEN_Z:
            raise ValueError(f"given_z must be one of {GIVEN_Z}, got {cfg.given_z!r}")
        if cfg.galaxy_z_floor not in Z_FLOORS:  # checked here too: a mix without galaxies never builds GalaxyModel
            raise ValueError(f"galaxy_z_floor must be one of {Z_FLOORS}, got {cfg.galaxy_z_floor!r}")
        self.rng = np.random.default_rng(seed)
        self.qso = QuasarSimulator(cfg.quasar_source, data_dir=data_dir, config=dict(cfg.quasar))
        self.loglam, self.noise, self.obs_config = self.qso.loglam, self.qso.noise, self.qso.config
        need = {c for c, p in zip(COMPONENTS, self.weights) if p > 0} - {"QSO"}
        root = self.qso.data_dir
        if need and (root is None or not (Path(root) / "templates" / "star").is_dir()
                     or not (Path(root) / "templates" / "galaxy").is_dir()):
            raise FileNotFoundError(
                f"components {sorted(need)} need the star/galaxy templates under <data_dir>/templates "
                f"(data dir: {root}); set mix={{'QSO': 1}} or point data_dir/FNET_SHARED_DATA at them")
        self.stars = self.galaxies = self.agn = None
        if "STAR" in need:
            self.stars = StarModel(root, cfg.star_groups, cfg.star_velocity_sigma, cfg.star_velocity_max,
                                   cfg.star_blend_max)
        if need & {"GALAXY", "AGN"}:
            self.galaxies = GalaxyModel(root, cfg.galaxy_subtypes, cfg.galaxy_sources, cfg.galaxy_z_range,
                                        cfg.galaxy_tilt_sigma, cfg.galaxy_z_shapes, cfg.galaxy_red_cover,
                                        cfg.galaxy_z_floor)
        if "AGN" in need:
            self.agn = HostedAGNModel(self.qso, self.galaxies, cfg.agn_z_range, cfg.agn_host_subtypes,
                                      cfg.agn_host_scatter_dex)

    # ----------------------------------------------------------------------------------------------------------
    def _ranges(self, z_range: tuple[float, float]) -> dict[str, tuple[float, float] | None]:
        """z interval of each component inside z_range (None: the component cannot appear)."""
        cfg = self.config
        return {
            "QSO": _overlap((0.0, np.inf), z_range),
            "AGN": _overlap(cfg.agn_z_range, z_range),
            "STAR": (-STAR_Z_MAX, STAR_Z_MAX) if z_range[0] <= STAR_Z_MAX and z_range[1] >= 0 else None,
            "GALAXY": _overlap(cfg.galaxy_z_range, z_range),
        }

    def _components(self, n: int, z: np.ndarray | None, z_range, rng) -> np.ndarray:
        """Component index per row (into COMPONENTS)."""
        cfg = self.config
        p = np.broadcast_to(self.weights, (n, len(COMPONENTS))).copy()
        if z is None or cfg.given_z == "override":
            ranges = self._ranges(z_range)
            p *= np.array([ranges[c] is not None for c in COMPONENTS])
        else:
            lam_min, lam_max = 10 ** self.loglam[0], 10 ** self.loglam[-1]
            ok = np.stack([
                z >= 0,
                (z >= cfg.agn_z_range[0]) & (z <= cfg.agn_z_range[1]),
                np.abs(z) <= STAR_Z_MAX,
                (z >= cfg.galaxy_z_range[0]) & (z <= cfg.galaxy_z_range[1]),
            ], axis=1)
            if self.galaxies is not None:
                gal_ok = self.galaxies.subtype_ok(z, lam_min, lam_max).any(axis=1)
                ok[:, 1] &= gal_ok
                ok[:, 3] &= gal_ok
            p *= ok
        tot = p.sum(axis=1)
        if np.any(tot <= 0):
            raise ValueError("some rows can be no component of the mix at their redshift / z_range")
        return np.argmax(np.cumsum(p, axis=1) > (rng.random(n) * tot)[:, None], axis=1)

    def sample(self, n: int, z: np.ndarray | None = None, z_range: tuple[float, float] = (0.0, 7.0),
               rng: np.random.Generator | None = None, z_dist: str | None = None) -> SimulatedBatch:
        """n objects of the mix as BOSS-like observations on one lattice grid (see the module docstring)."""
        cfg = self.config
        rng = self.rng if rng is None else rng
        streams = [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=8)]
        z_range = (float(z_range[0]), float(z_range[1]))
        if z is not None:
            z = np.broadcast_to(np.asarray(z, dtype=np.float64), (n,)).copy()
            if not np.isfinite(z).all():
                raise ValueError("redshifts must be finite")
        comp = self._components(n, z, z_range, streams[0])
        ranges = self._ranges(z_range)
        given = z is not None and cfg.given_z == "eligible"
        ll, m = self.loglam, len(self.loglam)
        out = _Collector(n, m, ll)

        rows = np.nonzero(comp == 0)[0]
        if len(rows):
            b = self.qso.sample(len(rows), z=None if z is None else z[rows], z_range=z_range, rng=streams[1],
                                z_dist=z_dist)
            out.put_batch(rows, b, "QSO")
            out.set(rows, subtype=np.where(b.params["bal"], "QSO-BAL", "QSO"), template=b.params["source"],
                    host_fraction=0.0)
        rows = np.nonzero(comp == 2)[0]
        if len(rows):
            model, cov, info = self.stars.draw(len(rows), ll, streams[2], z=z[rows] if given else None)
            sig = streams[5].uniform(*self.obs_config.template_extra_sigma, len(rows))
            model, cov = convolve_and_erode(np.maximum(model, 0.0), cov, sig)
            mag = streams[5].uniform(*cfg.star_mag_range, len(rows))
            obs = observe_rows(model, cov, ll, info["z"], mag, self.noise, self.obs_config, streams[5])
            out.put_obs(rows, obs, info["z"], "STAR", source=info["source"], wdisp=np.hypot(1.0, sig))
            out.set(rows, subtype=info["group"], template=info["template"], v_kms=info["v_kms"])
        rows = np.nonzero(comp == 3)[0]
        if len(rows):
            zg = z[rows] if given else None
            model, cov, info = self.galaxies.draw(len(rows), ll, streams[3], z=zg, z_range=ranges["GALAXY"],
                                                  nlagn_fraction=cfg.galaxy_nlagn_fraction)
            s_full = streams[6].uniform(*self.obs_config.resolution_sigma, len(rows))
            s_tpl = streams[6].uniform(*self.obs_config.template_extra_sigma, len(rows))
            sig = np.where(info["boss_resolution"], s_tpl, s_full)
            model, cov = convolve_and_erode(model, cov, sig)
            mag = streams[6].uniform(*cfg.galaxy_mag_range, len(rows))
            obs = observe_rows(model, cov, ll, info["z"], mag, self.noise, self.obs_config, streams[6])
            wd = np.where(info["boss_resolution"], np.hypot(1.0, sig), sig)
            out.put_obs(rows, obs, info["z"], "GALAXY", source=info["source"], wdisp=wd)
            out.set(rows, subtype=info["subtype"], template=info["seed"], ew_oii=info["ew_oii"],
                    ew_ha=info["ew_ha"], d4000=info["d4000"])
        rows = np.nonzero(comp == 1)[0]
        if len(rows):
            mag = streams[7].uniform(*cfg.agn_mag_range, len(rows))
            za = z[rows] if given else streams[7].uniform(*ranges["AGN"], len(rows))
            model, cov, info = self.agn.draw(len(rows), ll, mag, streams[4], self.obs_config, z=za)
            obs = observe_rows(model, cov, ll, info["z"], mag, self.noise, self.obs_config, streams[7])
            out.put_obs(rows, obs, info["z"], "AGN", source=np.char.add("AGN:", info["qso_source"]),
                        wdisp=np.hypot(1.0, info["sigma"]))
            out.set(rows, subtype="AGN+host", template=info["host_seed"], host_fraction=info["host_fraction"],
                    log_l5100=info["log_l5100"], bal=info["bal"], host_subtype=info["host_subtype"])
        return out.batch()


class _Collector:
    """Rows of the different components gathered into one SimulatedBatch with one params schema."""

    FLOAT_KEYS = ("snr", "mag", "wdisp", "lyman_leak", "host_fraction", "log_l5100", "v_kms", "ew_oii", "ew_ha",
                  "d4000")
    INT_KEYS = ("dla", "n_lls", "noise_vector", "fit_index", "pix_start", "pix_end", "gap_start", "gap_len")
    STR_KEYS = ("source", "component", "spectype", "subtype", "template", "host_subtype")

    def __init__(self, n: int, m: int, loglam: np.ndarray):
        self.loglam = loglam
        self.arrays = {
            "flux": np.zeros((n, m), np.float32), "ivar": np.zeros((n, m), np.float32),
            "and_mask": np.zeros((n, m), np.int32), "good": np.zeros((n, m), bool),
            "model": np.zeros((n, m), np.float32), "sky": np.zeros((n, m), np.float32),
        }
        self.z = np.zeros(n)
        self.p: dict[str, np.ndarray] = {k: np.full(n, np.nan) for k in self.FLOAT_KEYS}
        self.p.update({k: np.zeros(n, np.int64) for k in self.INT_KEYS})
        self.p["fit_index"][:] = -1
        self.p.update({k: np.full(n, "", dtype=object) for k in self.STR_KEYS})
        self.p["bal"] = np.zeros(n, bool)

    def set(self, rows: np.ndarray, **values: Any) -> None:
        for k, v in values.items():
            self.p[k][rows] = v

    def put_batch(self, rows: np.ndarray, b: SimulatedBatch, component: str) -> None:
        for k in self.arrays:
            self.arrays[k][rows] = getattr(b, k)
        self.z[rows] = b.z
        for k in ("source", "snr", "mag", "bal", "dla", "n_lls", "noise_vector", "fit_index", "wdisp",
                  "lyman_leak", "pix_start", "pix_end", "gap_start", "gap_len"):
            self.p[k][rows] = b.params[k]
        self.set(rows, component=component, spectype=COMPONENT_CLASS[component])

    def put_obs(self, rows: np.ndarray, obs: dict, z: np.ndarray, component: str, **extra: Any) -> None:
        for k in ("flux", "ivar", "and_mask", "good", "model"):
            self.arrays[k][rows] = obs[k]
        self.arrays["sky"][rows] = obs["sky"]
        self.z[rows] = z
        for k in ("snr", "mag", "noise_vector", "pix_start", "pix_end", "gap_start", "gap_len"):
            self.p[k][rows] = obs[k]
        self.set(rows, component=component, spectype=COMPONENT_CLASS[component], **extra)

    def batch(self) -> SimulatedBatch:
        params = dict(self.p)
        for k in self.STR_KEYS:
            params[k] = params[k].astype(str)
        params["spectype_index"] = np.array([CLASSES.index(s) for s in params["spectype"]], dtype=np.int8)
        return SimulatedBatch(loglam=self.loglam.copy(), z=self.z, params=params, **self.arrays)
