"""Training datasets from survey catalogs: read a catalog, split it, find its spectra, build and read shards.

    from fnet.dataset import build_dataset, open_shards
    manifest = build_dataset("DR16Q_v4.fits", "/data/sdss/spectra/lite", "dataset/")
    for shard in open_shards("dataset/", "train"): ...

Modules, one job each: ``catalog`` (identifiers, labels, filters), ``split`` (seeded hash split and
order), ``index`` (one walk of the spectra tree), ``worker`` (one shard in a worker process),
``shards`` (the on-disk format: the only module that writes, lists, validates and opens shards),
``build`` (the whole build, resumable). numpy and astropy only: no torch. The trainer
(fnet.train.data.ShardDataset) reads shards through ``shards``.
"""

from .build import DEFAULT_BUILD_OPTIONS, DEFAULT_GRID, DEFAULT_NORMALISATION, build_dataset
from .errors import DatasetBuildError
from .shards import SPLITS, Shard, list_shards, load_manifest, open_shards, write_shard

__all__ = ["DEFAULT_BUILD_OPTIONS", "DEFAULT_GRID", "DEFAULT_NORMALISATION", "SPLITS", "DatasetBuildError", "Shard",
           "build_dataset", "list_shards", "load_manifest", "open_shards", "write_shard"]
