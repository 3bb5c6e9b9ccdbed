"""The on-disk shard format: the one module that writes, lists, validates and opens dataset shards.

Layout (fnet-build-dataset writes it; the trainer and fnet-reproduce-paper read it)::

    <root>/manifest.json            grid, normalisation, split rule and counts, shard list, options, failures
    <root>/failures.csv             every catalog row that was not built, with stage, reason and detail
    <root>/shard-00000/x.npy        float16 (N, npix) normalised network input (fnet.runtime.preprocess)
                       z.npy        float32 (N,) redshift label
                       [ids.npy int64 (N, 3) PLATE MJD FIBERID, coverage.npy float32, sn_median.npy float32,
                        split.npy uint8 0 train 1 val 2 test, catalog_row.npy int64: per-row extras]
                       meta.json    format, version, name, count, split, grid, normalisation, files (dtype and
                                    shape of every array), complete, provenance (plan hash, failures, ...)

A shard is written into a temporary folder and renamed into place (fnet.runtime.atomic), meta.json
last: a shard folder exists complete or not at all. A shard is valid when its meta.json says format fnet-dataset-shard and
complete, and every array's .npy header matches the shape and dtype it records (checked without
reading the data). Every shard holds rows of one split. This module needs numpy only (no torch).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from ..runtime.atomic import atomic_directory
from ..runtime.grid import Grid
from .errors import DatasetBuildError

FORMAT = "fnet-dataset"
SHARD_FORMAT = "fnet-dataset-shard"
FORMAT_VERSION = 1
#: Split names in code order: split.npy holds the index into this tuple.
SPLITS: tuple[str, ...] = ("train", "val", "test")
SHARD_PREFIX = "shard-"
SHARD_RE = re.compile(r"^shard-(\d{5,})$")


def write_shard_arrays(out_dir: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """Write arrays + meta.json as <out_dir>/<name> atomically (temp folder, then rename); returns the meta written."""
    meta = {**meta, "format": SHARD_FORMAT, "version": FORMAT_VERSION, "name": name,
            "count": int(len(arrays["x"])), "complete": True,
            "files": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()}}
    _write_dir(Path(out_dir), name, arrays, meta)
    return meta


def _write_dir(out_dir: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays + meta.json (last: its presence marks completeness) as the folder <out_dir>/<name>, atomically."""
    with atomic_directory(out_dir / name) as tmp:
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def write_shard(directory: str | Path, x: np.ndarray, z: np.ndarray, grid: Grid, normalisation: dict,
                split: str = "train", dtype: str = "float16", extra: dict[str, np.ndarray] | None = None,
                **meta: Any) -> Path:
    """Write one shard folder from arrays (simulated or test data) in the same format the builder writes."""
    d = Path(directory)
    x, z = np.asarray(x), np.asarray(z)
    if x.ndim != 2 or x.shape[1] != grid.npix or z.shape != (x.shape[0],):
        raise ValueError(f"shard arrays must be x (N, {grid.npix}) and z (N,), got {x.shape} and {z.shape}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    arrays = {"x": x.astype(dtype), "z": z.astype(np.float32)}
    arrays.update({k: np.asarray(v) for k, v in (extra or {}).items()})
    d.parent.mkdir(parents=True, exist_ok=True)
    write_shard_arrays(d.parent, d.name, arrays, {"grid": grid.to_dict(), "normalisation": dict(normalisation),
                                                  "split": split, **meta})
    return d


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header without reading or mapping the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(f)
    return shape, dtype


def valid_shard(shard_dir: Path, plan_hash: str | None) -> dict | None:
    """The meta of a complete shard directory (matching plan_hash when given), else None."""
    try:
        meta = json.loads((shard_dir / "meta.json").read_text())
        if meta.get("format") != SHARD_FORMAT or not meta.get("complete"):
            return None
        if plan_hash is not None and meta.get("plan_hash") != plan_hash:
            return None
        for key, info in meta["files"].items():
            shape, dtype = npy_shape(shard_dir / f"{key}.npy")
            if list(shape) != info["shape"] or str(dtype) != info["dtype"]:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_shards(root: str | Path, split: str | None = None) -> list[tuple[Path, dict]]:
    """(folder, meta) of the valid non-empty shards under root (of one split, if given), in manifest or name order.

    A shard folder that is not valid (incomplete, another format, arrays that disagree with meta.json)
    is an error naming it, never silently skipped.
    """
    root = Path(root)
    if (root / "manifest.json").is_file():
        names = [e["name"] for e in load_manifest(root)["shards"]]
    else:
        names = sorted(p.name for p in root.glob(SHARD_PREFIX + "*") if p.is_dir() and SHARD_RE.match(p.name))
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    found = []
    for name in names:
        meta = valid_shard(root / name, None)
        if meta is None:
            raise DatasetBuildError(root / name, "not a complete fnet-dataset-shard (incomplete write, another "
                                                 "format, or arrays that disagree with meta.json): rebuild it")
        if meta["count"] > 0 and (split is None or meta.get("split") == split):
            found.append((root / name, meta))
    if not found:
        what = f" of split {split!r}" if split else ""
        raise ValueError(f"{root}: no non-empty {SHARD_PREFIX}NNNNN folders{what} (see fnet.dataset.shards)")
    return found


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest.json of a dataset built by build_dataset."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise DatasetBuildError(path, "no manifest.json: not a dataset folder, or its build never finished")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DatasetBuildError(path, f"manifest is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise DatasetBuildError(path, f"not an {FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest


class Shard(NamedTuple):
    """One shard: x memory-mapped (float16), the small per-row arrays loaded in memory."""

    x: np.ndarray  # (N, npix) float16, np.memmap (read-only)
    z: np.ndarray  # (N,) float32
    ids: np.ndarray  # (N, 3) int64 PLATE MJD FIBERID
    split: np.ndarray  # (N,) uint8
    coverage: np.ndarray  # (N,) float32
    sn_median: np.ndarray  # (N,) float32
    name: str


def open_shards(out_dir: str | Path, split: str | int | Sequence[str | int] | None = None) -> Iterator[Shard]:
    """Iterate over the dataset's non-empty shards (optionally one or more splits), x memory-mapped."""
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)  # checked now, not at the first next()
    wanted = None
    if split is not None:
        items = [split] if isinstance(split, (str, int)) else list(split)
        wanted = set()
        for s in items:
            if (isinstance(s, str) and s not in SPLITS) or (not isinstance(s, str) and not 0 <= int(s) < len(SPLITS)):
                raise ValueError(f"unknown split {s!r}; known: {', '.join(SPLITS)} (or 0, 1, 2)")
            wanted.add(SPLITS.index(s) if isinstance(s, str) else int(s))
    entries = [e for e in manifest["shards"]
               if e["count"] > 0 and (wanted is None or SPLITS.index(e["split"]) in wanted)]
    return _iter_shards(out_dir, entries)


def _iter_shards(out_dir: Path, entries: list[dict]) -> Iterator[Shard]:
    """Open shards one at a time, so only one x.npy file is mapped per step of the iteration."""
    for entry in entries:
        d = out_dir / entry["name"]
        try:
            arrays = {k: np.load(d / f"{k}.npy") for k in ("z", "ids", "split", "coverage", "sn_median")}
            x = np.load(d / "x.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DatasetBuildError(d, f"cannot load shard arrays ({exc}); rebuild with build_dataset") from exc
        if x.shape[0] != entry["count"]:
            raise DatasetBuildError(d, f"x.npy has {x.shape[0]} rows, manifest says {entry['count']}")
        yield Shard(x=x, name=entry["name"], **arrays)
