"""Training data: a simulated stream and memory-mapped shards, both yielding whole batches.

Every dataset here yields ``(x, target, z, class_index)`` batches: x (B, 1, npix) float32 network
input, target per head (fnet.train.heads.make_targets: (B, 1) float32 scaled z, (B,) int64 bin or
(B, K) float32 soft bin labels), z (B,) float32 true redshift, class_index (B,) int64 into the
head's ``classes`` (the simulator's ``params["spectype"]``; quasar-only sources and shards are QSO;
all zeros for a head without classes). Use them with
``DataLoader(ds, batch_size=None)`` (``make_loader``): batching happens inside, because the
simulator and the preprocessing are vectorised over a batch.

Simulated stream (``SimulatedStream``)
    simulator -> fnet.runtime.preprocess.prepare_arrays (the runtime's own rebinning and
    normalisation, so training input == inference input) -> tensors. Batch ``step`` of epoch
    ``e`` is drawn with ``np.random.default_rng(SeedSequence([seed, e, step]))``, whatever the
    number of DataLoader workers, so a run is reproducible and a resumed run sees the same data
    as an uninterrupted one. Workers take steps w, w + W, w + 2W, ...; the DataLoader's
    round-robin then returns them in step order.

Shard layout (``ShardDataset``): the format fnet.dataset.shards owns, written by fnet.dataset.build
(real spectra from a DR12Q/DR16Q-style catalog, ``fnet-build-dataset``) or by
``fnet.dataset.write_shard`` (simulated or test data); listed and validated by ``fnet.dataset.list_shards``::

    ROOT/
      manifest.json   optional; written by the builder: {"grid", "normalisation", "shards": [{"name",
                      "split", "count"}, ...], ...}. When present it is the list of shards to read.
      shard-00000/
        x.npy         (N, npix) float16 (or float32): network input, already rebinned + normalised
        z.npy         (N,) float32: true redshift
        meta.json     {"count": N, "grid": {"loglam_start", "loglam_step", "npix"}, "normalisation": {...},
                       "split": "train" | "val" | "test", ...provenance}
        [ids.npy, coverage.npy, sn_median.npy, split.npy, catalog_row.npy: per-row extras, not needed here]
      shard-00001/ ...

    Every shard holds rows of one split; ``ShardDataset(root, split="train")`` keeps the shards of
    that split. Shards are opened with ``np.load(mmap_mode="r")`` lazily in each worker (memory
    maps are not pickled to workers), so a dataset larger than RAM streams from the page cache.
    Every shard's grid and normalisation must equal the training config's: a model trained on
    differently prepared input would silently be wrong at inference. float16 x halves disk and
    page-cache use; ``ivar_unit_norm`` inputs are clipped to +-clip, well inside float16 range.

``ToySimulator`` is a small self-contained quasar model (power law + broad lines + mean Lya
forest + noise) with the simulator interface, for smoke runs and tests; real training uses
fnet.simulate.QuasarSimulator.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fnet.dataset.shards import list_shards
from fnet.runtime.constants import C_KMS, PAPER_GRID
from fnet.runtime.grid import Grid
from fnet.runtime.preprocess import prepare_arrays

from .heads import make_targets

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
QUASAR = "QSO"  # the class of every spectrum from a quasar-only source (QuasarSimulator, DR12Q/DR16Q shards)


# --------------------------------------------------------------------------------------------
# Toy simulator (tests, smoke runs)
# --------------------------------------------------------------------------------------------

# Rest wavelength (A), rest equivalent width (A), velocity FWHM (km/s) of the broad lines.
_TOY_LINES = np.array([
    (1215.67, 60.0, 4000.0), (1240.14, 15.0, 4000.0), (1399.8, 8.0, 5000.0), (1549.06, 30.0, 4500.0),
    (1908.73, 20.0, 5000.0), (2799.12, 30.0, 4000.0), (4862.68, 50.0, 4000.0), (5008.24, 15.0, 800.0),
    (6564.61, 200.0, 3500.0),
])


@dataclass
class ToyBatch:
    """Same fields as fnet.simulate.SimulatedBatch."""

    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    good: np.ndarray
    z: np.ndarray
    params: dict = field(default_factory=dict)


class ToySimulator:
    """Power-law continuum + Gaussian broad lines + mean Lya forest + Gaussian noise on a BOSS-like grid."""

    def __init__(self, seed: int | None = None, loglam_start: float = PAPER_GRID["loglam_start"],
                 loglam_step: float = PAPER_GRID["loglam_step"], npix: int = PAPER_GRID["npix"], sn_range: tuple[float, float] = (2.0, 20.0), truncate_fraction: float = 0.2,
                 source: str = "toy"):
        self.rng = np.random.default_rng(seed)
        self.loglam = loglam_start + loglam_step * np.arange(npix)
        self.sn_range = sn_range
        self.truncate_fraction = truncate_fraction

    def sample(self, n: int, z: np.ndarray | None = None, z_range: tuple[float, float] = (0.0, 7.0),
               rng: np.random.Generator | None = None) -> ToyBatch:
        """n spectra at redshifts z (or uniform in z_range)."""
        rng = rng or self.rng
        z = rng.uniform(*z_range, n) if z is None else np.asarray(z, dtype=np.float64)
        lam = 10.0 ** self.loglam[None, :]
        rest = lam / (1.0 + z[:, None])
        alpha = rng.normal(-1.5, 0.4, n)[:, None]
        flux = (rest / 2000.0) ** alpha
        for lam0, ew, fwhm in _TOY_LINES:
            sigma = lam0 * fwhm * rng.uniform(0.7, 1.4, n)[:, None] / C_KMS / 2.3548
            amp = ew * rng.lognormal(0.0, 0.4, n)[:, None] / (np.sqrt(2 * np.pi) * sigma)
            cont = (lam0 / 2000.0) ** alpha
            flux = flux + amp * cont * np.exp(-0.5 * ((rest - lam0) / sigma) ** 2)
        forest = rest < 1215.67
        tau = 0.0018 * (lam / 1215.67) ** 3.92
        flux = np.where(forest, flux * np.exp(-tau), flux)
        flux = np.where(rest < 912.0, flux * 0.05, flux)
        scale = rng.lognormal(1.0, 0.5, n)[:, None]
        flux = flux * scale
        sn = rng.uniform(*self.sn_range, n)[:, None]
        sigma_f = np.median(flux, axis=1, keepdims=True) / sn
        flux = flux + rng.normal(size=flux.shape) * sigma_f
        ivar = np.broadcast_to(1.0 / sigma_f**2, flux.shape).copy()
        good = np.ones(flux.shape, dtype=bool)
        cut = rng.random(n) < self.truncate_fraction  # real files have truncated coverage
        if cut.any():
            m = flux.shape[1]
            lo = rng.integers(0, m // 4, n)
            hi = m - rng.integers(0, m // 4, n)
            idx = np.arange(m)[None, :]
            good &= ~(cut[:, None] & ((idx < lo[:, None]) | (idx >= hi[:, None])))
        ivar[~good] = 0.0
        return ToyBatch(self.loglam.copy(), flux, ivar, np.zeros(flux.shape, np.int32), good, z,
                        {"alpha": alpha[:, 0], "sn": sn[:, 0]})


def make_simulator(class_path: str, options: dict, seed: int) -> Any:
    """Instantiate "module:Class" (e.g. fnet.simulate:QuasarSimulator) with options and a seed."""
    module_name, _, cls_name = class_path.partition(":")
    if not cls_name:
        raise ValueError(f"simulator_class must look like 'package.module:Class', got {class_path!r}")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**dict(options), seed=int(seed))


def draw_z(n: int, z_range: tuple[float, float], sampling: str, rng: np.random.Generator) -> np.ndarray | None:
    """Training redshifts: None (leave to the simulator), uniform in z, or uniform in ln(1+z)."""
    if sampling == "simulator":
        return None
    lo, hi = z_range
    if sampling == "uniform":
        return rng.uniform(lo, hi, n)
    if sampling == "log1p":
        return np.expm1(rng.uniform(np.log1p(lo), np.log1p(hi), n))
    raise ValueError(f"unknown z sampling {sampling!r}")


def simulate_labelled(simulator: Any, n: int, grid: Grid, normalisation: dict, z_range: tuple[float, float],
                      rng: np.random.Generator, z_sampling: str = "simulator") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate n spectra prepared exactly as the runtime does: x (n, npix) float32, z (n,), spectype (n,) str."""
    z = draw_z(n, z_range, z_sampling, rng)
    b = simulator.sample(n, z=z, z_range=tuple(z_range), rng=rng)
    p = prepare_arrays(b.loglam, b.flux, b.ivar, b.good, grid, normalisation)
    spectype = b.params.get("spectype") if isinstance(b.params, dict) else None
    spectype = np.full(n, QUASAR, dtype=object) if spectype is None else np.asarray(spectype, dtype=object)
    return p.x, np.asarray(b.z, dtype=np.float64), spectype


def simulate_prepared(simulator: Any, n: int, grid: Grid, normalisation: dict, z_range: tuple[float, float],
                      rng: np.random.Generator, z_sampling: str = "simulator") -> tuple[np.ndarray, np.ndarray]:
    """Simulate n spectra and prepare them exactly as the runtime does; returns x (n, npix) float32, z (n,)."""
    x, z, _ = simulate_labelled(simulator, n, grid, normalisation, z_range, rng, z_sampling)
    return x, z


def class_indices(spectype: np.ndarray | None, head: dict, n: int) -> np.ndarray:
    """Class labels as int64 indices into head["classes"] (zeros for a head without classes)."""
    classes = head.get("classes") or []
    if not classes:
        return np.zeros(n, dtype=np.int64)
    names = np.full(n, QUASAR, dtype=object) if spectype is None else np.asarray(spectype, dtype=object)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names.tolist()) - set(lookup))
    if unknown:
        raise ValueError(f"training labels {unknown} are not among the head's classes {classes}")
    return np.array([lookup[c] for c in names], dtype=np.int64)


class SimulatedStream(IterableDataset):
    """Endless simulated batches, `steps` per epoch, deterministic in (seed, epoch, step)."""

    def __init__(self, simulator_class: str, simulator_options: dict, grid: Grid, normalisation: dict, head: dict,
                 batch_size: int, steps: int, seed: int, z_range: tuple[float, float] = (0.0, 7.0),
                 z_sampling: str = "simulator", label_sigma: float = 0.0):
        super().__init__()
        self.simulator_class, self.simulator_options = simulator_class, dict(simulator_options)
        self.grid, self.normalisation, self.head = grid, dict(normalisation), dict(head)
        self.batch_size, self.steps, self.seed = int(batch_size), int(steps), int(seed)
        self.z_range, self.z_sampling, self.label_sigma = tuple(z_range), z_sampling, float(label_sigma)
        self.epoch = 0
        self._simulator = None  # built lazily inside each worker process

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's data (call before iterating; workers get a fresh copy each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def _sim(self, worker: int) -> Any:
        if self._simulator is None:
            seed = int(np.random.SeedSequence([self.seed, 0x5EED, worker]).generate_state(1)[0])
            self._simulator = make_simulator(self.simulator_class, self.simulator_options, seed)
        return self._simulator

    def batch(self, step: int, worker: int = 0) -> Batch:
        """Batch number `step` of the current epoch."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, step]))
        x, z, spectype = simulate_labelled(self._sim(worker), self.batch_size, self.grid, self.normalisation,
                                           self.z_range, rng, self.z_sampling)
        t = make_targets(z, self.head, self.label_sigma)
        c = class_indices(spectype, self.head, len(z))
        return (torch.from_numpy(x)[:, None, :], torch.from_numpy(t), torch.from_numpy(z.astype(np.float32)),
                torch.from_numpy(c))

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(worker, self.steps, n_workers):
            yield self.batch(step, worker)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------

class ShardDataset(Dataset):
    """Map-style dataset over memory-mapped shards; indexed by a LIST of row indices, returns a batch."""

    def __init__(self, root: str | Path, head: dict, grid: Grid | None = None, normalisation: dict | None = None,
                 label_sigma: float = 0.0, split: str | None = None):
        shards = list_shards(root, split)
        self.dirs = [d for d, _ in shards]
        self.head, self.label_sigma = dict(head), float(label_sigma)
        self.sizes = []
        for d, meta in shards:
            if grid is not None and Grid.from_dict(meta["grid"]) != grid:
                raise ValueError(f"{d}: grid {meta['grid']} differs from the model grid {grid.to_dict()}")
            if normalisation is not None and meta.get("normalisation") != dict(normalisation):
                raise ValueError(f"{d}: normalisation {meta.get('normalisation')} differs from {normalisation}")
            self.sizes.append(meta["count"])
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes))).astype(np.int64)
        self._x: list[np.ndarray | None] = [None] * len(self.dirs)
        self._z: list[np.ndarray | None] = [None] * len(self.dirs)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_x"] = [None] * len(self.dirs)  # memory maps are re-opened in the worker
        state["_z"] = [None] * len(self.dirs)
        return state

    def _open(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._x[i] is None:
            x = np.load(self.dirs[i] / "x.npy", mmap_mode="r")
            z = np.load(self.dirs[i] / "z.npy")
            if x.shape[0] != self.sizes[i] or z.shape[0] != self.sizes[i]:
                raise ValueError(f"{self.dirs[i]}: x/z have {x.shape[0]}/{z.shape[0]} rows, meta says {self.sizes[i]}")
            self._x[i], self._z[i] = x, z
        return self._x[i], self._z[i]  # type: ignore[return-value]

    def arrays(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """x (B, npix) float32 and z (B,) float64 for global row indices (any order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        xs, zs = None, np.empty(idx.size)
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            local = idx[sel] - self.offsets[s]
            order = np.argsort(local)  # sorted reads are sequential on disk
            x_m, z_m = self._open(int(s))
            xb = np.asarray(x_m[local[order]], dtype=np.float32)
            if xs is None:
                xs = np.empty((idx.size, xb.shape[1]), np.float32)
            xs[sel[order]] = xb
            zs[sel[order]] = z_m[local[order]]
        return (xs if xs is not None else np.empty((0, 0), np.float32)), zs

    def __getitem__(self, indices) -> Batch:
        x, z = self.arrays(np.atleast_1d(indices))
        t = make_targets(z, self.head, self.label_sigma)
        c = class_indices(None, self.head, len(z))  # DR12Q/DR16Q shards hold quasars
        return (torch.from_numpy(x)[:, None, :], torch.from_numpy(t), torch.from_numpy(z.astype(np.float32)),
                torch.from_numpy(c))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of row indices, seeded by (seed, epoch); at most `steps` batches per epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, steps: int | None = None, shuffle: bool = True,
                 drop_last: bool = True):
        self.n, self.batch_size, self.seed, self.steps = n, batch_size, seed, steps
        self.shuffle, self.drop_last, self.epoch = shuffle, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for this epoch."""
        self.epoch = int(epoch)

    def _batches(self) -> int:
        full = self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)
        return min(full, self.steps) if self.steps else full

    def __len__(self) -> int:
        return self._batches()

    def __iter__(self):
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(self.n)
        else:
            order = np.arange(self.n)
        for b in range(self._batches()):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def make_loader(dataset: Dataset | IterableDataset, num_workers: int = 0, sampler=None, prefetch_factor: int = 2,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader for datasets that yield whole batches (batch_size=None)."""
    kwargs: dict = {"batch_size": None, "num_workers": num_workers, "pin_memory": pin_memory}
    if sampler is not None:
        kwargs["sampler"] = sampler
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = False  # a fresh worker copy per epoch picks up set_epoch
        kwargs["worker_init_fn"] = set_worker_threads
    return DataLoader(dataset, **kwargs)


# --------------------------------------------------------------------------------------------
# Validation sets
# --------------------------------------------------------------------------------------------


@dataclass
class ArraySet:
    """A fixed validation set held in memory: x (n, npix) float32, z (n,), a name for the history.

    spectype (n,) class names when known (None: quasars, as for DR16Q-matched real spectra and shards).
    """

    name: str
    x: np.ndarray
    z: np.ndarray
    notes: list[str] = field(default_factory=list)
    spectype: np.ndarray | None = None


def simulated_set(simulator_class: str, simulator_options: dict, grid: Grid, normalisation: dict, n: int, seed: int,
                  z_range: tuple[float, float], z_sampling: str = "uniform", chunk: int = 256) -> ArraySet:
    """Fixed-seed simulated validation spectra (same every epoch and across resumes)."""
    sim = make_simulator(simulator_class, simulator_options, seed)
    xs, zs, types = [], [], []
    for i, start in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA1, i]))
        # Uniform z by default so that every redshift range is represented in the metrics.
        x, z, spectype = simulate_labelled(sim, min(chunk, n - start), grid, normalisation, z_range, rng, z_sampling)
        xs.append(x)
        zs.append(z)
        types.append(spectype)
    return ArraySet("simulated", np.concatenate(xs), np.concatenate(zs), spectype=np.concatenate(types))


def shard_set(root: str | Path, grid: Grid, normalisation: dict, head: dict, split: str | None = "val",
              limit: int | None = None) -> ArraySet:
    """The shards of one split as a validation set, read into memory (first `limit` rows if given)."""
    ds = ShardDataset(root, head, grid, normalisation, split=split)
    x, z = ds.arrays(np.arange(min(len(ds), limit) if limit else len(ds)))
    return ArraySet("shards" if split is None else f"shards_{split}", x, z)


def real_set(real_dir: str | Path, catalog: str | Path, grid: Grid, normalisation: dict) -> ArraySet:
    """Real spectra under real_dir that the truth catalog lists, read and prepared like fnet-run does."""
    from fnet.evaluate import collect, read_truth
    from fnet.runtime.preprocess import prepare_spectra

    spectra, z_true, skipped = collect([str(real_dir)], read_truth(catalog))
    if not spectra:
        raise ValueError(f"{real_dir}: no spectra matched {catalog} ({len(skipped)} skipped)")
    prepared = prepare_spectra(spectra, grid, normalisation)
    return ArraySet("real", prepared.x, np.asarray(z_true, dtype=np.float64),
                    [f"{len(skipped)} inputs skipped"] if skipped else [])


def set_worker_threads(_: int) -> None:
    """DataLoader worker_init_fn: one torch thread per worker so workers do not oversubscribe cores."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
