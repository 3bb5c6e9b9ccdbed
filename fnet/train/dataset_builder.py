"""Build sharded on-disk training arrays from a quasar catalog (DR12Q/DR16Q style) and a tree of spectra.

Output layout (the trainer reads exactly this)::

    <out>/manifest.json            grid, normalisation, split rule and counts, shard list, options, failures summary
    <out>/failures.csv             every catalog row that was not built, with stage, reason and detail
    <out>/shard-00000/x.npy        float16 (N, npix) normalised network input (fnet.runtime.preprocess)
                      z.npy        float32 (N,) redshift label
                      ids.npy      int64 (N, 3) PLATE, MJD, FIBERID
                      coverage.npy float32 (N,) fraction of the grid covered by good pixels
                      sn_median.npy float32 (N,) median S/N per grid pixel (NaN when the file has no ivar)
                      split.npy    uint8 (N,) 0 train, 1 val, 2 test
                      catalog_row.npy int64 (N,) row index in the catalog FITS table
                      meta.json    count, grid, normalisation, catalog, z column, created, plan hash, failures

Design choices:
- Every shard holds rows of ONE split (train shards first, then val, then test), so a trainer maps only
  the shards it needs; split.npy is still written per row.
- Split membership and row order come from a seeded hash of (PLATE, MJD, FIBERID), not from the position
  in the catalog: they do not change with shard_size, processes, limit or catalog sorting.
- order="random" (default) makes every shard a random sample, good for shard-streaming trainers;
  order="plate" sorts by PLATE/MJD/FIBERID, better disk locality and required for spPlate-only trees
  (each task reads a needed spPlate once, so random order would read every plate once per shard).
- A shard is written to a temporary directory and renamed into place; its meta.json carries a hash of
  its plan (rows, labels, grid, normalisation), so a re-run skips shards that match and rebuilds the rest.
- Nothing is lost silently: rows dropped while selecting (duplicate, filter, invalid redshift, paper split
  exclusion) and while building (file not found, unreadable, no good pixels, ...) all go to failures.csv.

This module uses numpy and astropy only (no torch): it runs on machines without a GPU stack.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from fnet.runtime.errors import FNetError, SpectrumReadError
from fnet.runtime.grid import Grid
from fnet.runtime.preprocess import SCHEMES, prepare_spectra

__all__ = [
    "DEFAULT_GRID", "DEFAULT_NORMALISATION", "DEFAULT_BUILD_OPTIONS", "SPLITS", "DatasetBuildError", "Shard",
    "build_dataset", "load_manifest", "open_shards",
]

log = logging.getLogger(__name__)

#: The paper's grid: 3566.7-10326 A at 1e-4 dex (4618 pixels).
DEFAULT_GRID: dict = {"loglam_start": 3.5522, "loglam_step": 1e-4, "npix": 4618}
#: Network input normalisation (see fnet.runtime.preprocess for the schemes).
DEFAULT_NORMALISATION: dict = {"scheme": "ivar_unit_norm", "clip": 10.0}
#: Keyword options of build_dataset that the fnet-build-dataset CLI can expose, with their defaults.
DEFAULT_BUILD_OPTIONS: dict = {
    "z_column": "auto",            # "auto": Z_VI where > 0, else Z; or an explicit column name
    "split": "random",             # "random" (split_fractions) or "paper" (needs dr12q_catalog)
    "split_fractions": (0.8, 0.1, 0.1),  # train, val, test for split="random"
    "paper_val_fraction": 0.1,     # split="paper": DR12Q rows go 90/10 to train/val
    "seed": 0,
    "shard_size": 4096,
    "processes": None,             # None: os.cpu_count()
    "order": "random",             # "random" or "plate"
    "filters": "auto",             # "auto": IS_QSO_FINAL == 1 when that column exists; or {column: allowed values}
    "min_coverage": 0.0,           # rows with coverage <= this are failures ("no good pixels" at 0)
    "use_spplate": True,           # fall back to spPlate-PLATE-MJD.fits when the spec file is missing
    "limit": None,                 # use only the first N catalog rows (trial runs)
    "batch_size": 256,             # spectra preprocessed together inside a task (memory vs speed)
}

#: Split names in code order: split.npy holds the index into this tuple.
SPLITS: tuple[str, ...] = ("train", "val", "test")

FORMAT = "fnet-dataset"
SHARD_FORMAT = "fnet-dataset-shard"
FORMAT_VERSION = 1

_SPEC_RE = re.compile(r"^spec-(\d+)-(\d+)-(\d+)\.fits(?:\.gz)?$")
_SPPLATE_RE = re.compile(r"^spPlate-(\d+)-(\d+)\.fits(?:\.gz)?$")
_SHARD_RE = re.compile(r"^shard-(\d{5,})$")
_TMP_PREFIX = ".tmp-"

# Source kinds per planned row.
_MISSING, _SPEC, _SPPLATE = 0, 1, 2
_FLOAT16_MAX = float(np.finfo(np.float16).max)

# Failure reasons (fixed strings so the manifest can count them).
R_NOT_FOUND = "file not found"
R_UNREADABLE = "unreadable file"
R_NOT_IN_FILE = "spectrum not in file"
R_MISMATCH = "identity mismatch"
R_NO_GOOD = "no good pixels"
R_LOW_COVERAGE = "coverage below min_coverage"
R_PREPROCESS = "preprocessing failed"
R_DUPLICATE = "duplicate catalog row"
R_BAD_Z = "invalid redshift"
R_PAPER_EXCLUDED = "excluded by paper split"
R_FILTERED = "filtered"


class DatasetBuildError(FNetError):
    """A catalog, spectra tree or output folder cannot be used to build a dataset."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ----------------------------------------------------------------------------------------------------------
# Catalog
# ----------------------------------------------------------------------------------------------------------

def _row_key(plate: np.ndarray, mjd: np.ndarray, fiber: np.ndarray) -> np.ndarray:
    """One int64 per (PLATE, MJD, FIBERID): plate and MJD have at most 5 digits, fibers at most 4."""
    return (plate.astype(np.int64) * 100000 + mjd.astype(np.int64)) * 10000 + fiber.astype(np.int64)


def _table_hdu(hdul, path: Path, need: Sequence[str]):
    """The first binary table HDU holding all the `need` columns (case-insensitive)."""
    from astropy.io import fits

    seen = []
    for hdu in hdul:
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            names = {n.upper() for n in hdu.columns.names}
            if all(n in names for n in need):
                return hdu
            seen.append(f"{hdu.name or '(unnamed)'}: {', '.join(hdu.columns.names[:12])}")
    found = "; ".join(seen) if seen else "no table HDU"
    raise DatasetBuildError(path, f"no table with columns {', '.join(need)} (found {found})")


def _column(hdu, name: str) -> np.ndarray:
    """A table column by case-insensitive name, as a native-endian numpy array."""
    lookup = {n.upper(): n for n in hdu.columns.names}
    data = np.asarray(hdu.data[lookup[name.upper()]])
    return data.astype(data.dtype.newbyteorder("=")) if data.dtype.byteorder not in ("=", "|") else data


def _read_catalog(path: Path, z_column: str, filters: Any, limit: int | None) -> dict[str, Any]:
    """Identifiers, labels and selection masks of a catalog FITS table (only the columns needed are read)."""
    from astropy.io import fits

    if not path.is_file():
        raise DatasetBuildError(path, "catalog file does not exist")
    try:
        hdul = fits.open(path, memmap=True)
    except (OSError, ValueError) as exc:
        raise DatasetBuildError(path, f"cannot open catalog as FITS: {exc}") from exc
    with hdul:
        hdu = _table_hdu(hdul, path, ("PLATE", "MJD", "FIBERID"))
        names = {n.upper() for n in hdu.columns.names}
        n = len(hdu.data) if hdu.data is not None else 0
        stop = n if limit is None else min(n, int(limit))

        def col(name: str) -> np.ndarray:
            return _column(hdu, name)[:stop]

        plate, mjd, fiber = (col(c).astype(np.int64) for c in ("PLATE", "MJD", "FIBERID"))
        for cname, values, top in (("PLATE", plate, 100000), ("MJD", mjd, 100000), ("FIBERID", fiber, 10000)):
            bad = (values < 0) | (values >= top)
            if bad.any():
                i = int(np.argmax(bad))
                raise DatasetBuildError(path, f"row {i}: {cname}={values[i]} outside 0..{top - 1}")

        # Redshift label: auto prefers the visual-inspection redshift row by row.
        fallback = None
        if z_column == "auto":
            if "Z_VI" in names:
                resolved = "Z_VI"
                z = col("Z_VI").astype(np.float64)
                if "Z" in names:
                    fallback = "Z"
                    use_fb = ~(np.isfinite(z) & (z > 0))
                    z = np.where(use_fb, col("Z").astype(np.float64), z)
                else:
                    use_fb = np.zeros(stop, bool)
            elif "Z" in names:
                resolved, use_fb = "Z", np.zeros(stop, bool)
                z = col("Z").astype(np.float64)
            else:
                raise DatasetBuildError(path, f"no redshift column: looked for Z_VI and Z among {sorted(names)}")
        else:
            resolved, use_fb = z_column.upper(), np.zeros(stop, bool)
            if resolved not in names:
                raise DatasetBuildError(path, f"z column {z_column!r} not in catalog columns {sorted(names)}")
            z = col(resolved).astype(np.float64)
        if z.ndim != 1:
            raise DatasetBuildError(path, f"z column {resolved} is not scalar per row (shape {z.shape})")

        # Row filters: {column: allowed values}; "auto" applies IS_QSO_FINAL == 1 only where it exists.
        if filters == "auto":
            filters = {"IS_QSO_FINAL": [1]} if "IS_QSO_FINAL" in names else {}
        filter_fail = np.full(stop, "", dtype=object)  # detail text of the first filter a row fails
        for fname, allowed in (filters or {}).items():
            if fname.upper() not in names:
                raise DatasetBuildError(path, f"filter column {fname!r} not in catalog columns {sorted(names)}")
            values = col(fname)
            ok = np.isin(values, np.asarray(list(allowed)))
            filter_fail[(~ok) & (filter_fail == "")] = f"{fname.upper()} not in {list(allowed)}"

        # Visual inspection, for the paper split's test set (DR16Q: Z_VI > 0, SOURCE_Z == VI, or CLASS_PERSON).
        if "Z_VI" in names:
            zvi = col("Z_VI").astype(np.float64)
            vi, vi_rule = np.isfinite(zvi) & (zvi > 0), "Z_VI > 0"
        elif "SOURCE_Z" in names:
            vi, vi_rule = np.char.strip(np.char.upper(col("SOURCE_Z").astype("U"))) == "VI", "SOURCE_Z == VI"
        elif "CLASS_PERSON" in names:
            vi, vi_rule = col("CLASS_PERSON").astype(np.int64) > 0, "CLASS_PERSON > 0"
        else:
            vi, vi_rule = np.ones(stop, bool), "no visual-inspection column: every row counts"

    return {"n_rows": n, "n_used": stop, "plate": plate, "mjd": mjd, "fiber": fiber, "z": z,
            "z_column": resolved, "z_fallback": fallback, "z_fallback_rows": int(use_fb.sum()),
            "filters": {k.upper(): list(v) for k, v in (filters or {}).items()},
            "filter_fail": filter_fail, "vi": vi, "vi_rule": vi_rule}


def _read_keys(path: Path) -> np.ndarray:
    """Row keys of a second catalog (DR12Q for the paper split)."""
    from astropy.io import fits

    if not path.is_file():
        raise DatasetBuildError(path, "DR12Q catalog file does not exist")
    try:
        with fits.open(path, memmap=True) as hdul:
            hdu = _table_hdu(hdul, path, ("PLATE", "MJD", "FIBERID"))
            return _row_key(*(_column(hdu, c) for c in ("PLATE", "MJD", "FIBERID")))
    except (OSError, ValueError) as exc:
        raise DatasetBuildError(path, f"cannot read DR12Q catalog: {exc}") from exc


# ----------------------------------------------------------------------------------------------------------
# Split and order: a seeded hash per spectrum, independent of catalog position
# ----------------------------------------------------------------------------------------------------------

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per key for a given seed; `salt` gives independent streams."""
    mix = _splitmix64(np.array([(int(seed) & 0xFFFFFFFF) << 8 | salt], dtype=np.uint64))[0]
    h = _splitmix64(keys.astype(np.uint64) ^ mix)
    return (h >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


# ----------------------------------------------------------------------------------------------------------
# Spectra index: one walk, dict by (plate, mjd, fiber)
# ----------------------------------------------------------------------------------------------------------

def _index_spectra(roots: Sequence[Path], wanted: set[int], wanted_plates: set[int] | None
                   ) -> tuple[dict[int, str], dict[int, str], dict[str, int]]:
    """Walk the roots once: spec files by row key and spPlate files by (plate * 100000 + mjd), wanted only."""
    spec: dict[int, str] = {}
    plates: dict[int, str] = {}
    stats = Counter()
    seen_dirs: set[str] = set()
    stack = [str(r) for r in reversed(roots)]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen_dirs:  # symlinked directories may loop
            continue
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", d, exc)
            stats["unlistable directories"] += 1
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            m = _SPEC_RE.match(name)
            if m:
                key = (int(m[1]) * 100000 + int(m[2])) * 10000 + int(m[3])
                if key in wanted:
                    if key in spec:
                        stats["duplicate spec files (first kept)"] += 1
                    else:
                        spec[key] = entry.path
                continue
            if wanted_plates is not None:
                m = _SPPLATE_RE.match(name)
                if m:
                    pkey = int(m[1]) * 100000 + int(m[2])
                    if pkey in wanted_plates and pkey not in plates:
                        plates[pkey] = entry.path
                    continue
            try:
                if entry.is_dir():
                    subdirs.append(entry.path)
            except OSError:
                continue
        stats["directories"] += 1
        stack.extend(reversed(subdirs))
    return spec, plates, dict(stats)


# ----------------------------------------------------------------------------------------------------------
# One shard (runs in a worker process; everything it needs travels in the task dict)
# ----------------------------------------------------------------------------------------------------------

def _pick(spectra: list, fiber: int) -> Any:
    """The spectrum of one fiber from a multi-spectrum file, or None."""
    for s in spectra:
        if int(s.meta.get("FIBERID", -1)) == fiber:
            return s
    return None


def _identity_problem(spectrum: Any, plate: int, mjd: int, fiber: int) -> str:
    """Why a spec file's header identity disagrees with the catalog row ('' when it agrees or is absent)."""
    for key, want in (("PLATE", plate), ("MJD", mjd), ("FIBERID", fiber)):
        have = spectrum.meta.get(key)
        if have is not None and int(have) != want:
            return f"file says {key}={int(have)}, catalog says {want}"
    return ""


def _build_shard(task: dict) -> dict:
    """Read, preprocess and write one shard atomically; returns its summary (count, failures, seconds)."""
    from fnet.runtime.readers import read_spectra  # lazy: keeps module import light for spawn workers

    t0 = time.perf_counter()
    grid = Grid.from_dict(task["grid"])
    norm = task["normalisation"]
    ids, paths, kinds = task["ids"], task["paths"], task["kinds"]
    n = len(ids)
    x = np.zeros((n, grid.npix), dtype=np.float16)
    coverage = np.zeros(n, np.float32)
    sn = np.full(n, np.nan, np.float32)
    ok = np.zeros(n, bool)
    failures: dict[int, tuple[str, str]] = {}

    def fail(i: int, reason: str, detail: str) -> None:
        failures[i] = (reason, detail)

    def flush(batch: list[tuple[int, Any]]) -> None:
        if not batch:
            return
        try:
            prepared = [(batch, prepare_spectra([s for _, s in batch], grid, norm))]
        except Exception:  # isolate the spectrum that breaks the batch
            prepared = []
            for item in batch:
                try:
                    prepared.append(([item], prepare_spectra([item[1]], grid, norm)))
                except Exception as exc:  # noqa: BLE001 - a broken spectrum must not stop 750k others
                    fail(item[0], R_PREPROCESS, f"{item[1].source}: {type(exc).__name__}: {exc}")
        for items, p in prepared:
            for j, (i, spectrum) in enumerate(items):
                cov = float(p.coverage[j])
                if cov <= 0:
                    fail(i, R_NO_GOOD, f"{spectrum.source}: no good pixels on the grid")
                elif cov <= task["min_coverage"]:
                    fail(i, R_LOW_COVERAGE, f"{spectrum.source}: coverage {cov:.3f} <= {task['min_coverage']}")
                elif not np.all(np.isfinite(p.x[j])):
                    fail(i, R_PREPROCESS, f"{spectrum.source}: non-finite network input")
                else:
                    # float16 overflows past 65504: only reachable with clip=None and absurd outliers
                    x[i] = np.clip(p.x[j], -_FLOAT16_MAX, _FLOAT16_MAX)
                    coverage[i], sn[i], ok[i] = cov, p.sn_median[j], True
        batch.clear()

    # spec rows in shard order, then spPlate rows grouped by file so each plate is read once per task
    order = sorted(range(n), key=lambda i: (kinds[i] == _SPPLATE, paths[i] if kinds[i] == _SPPLATE else "", i))
    batch: list[tuple[int, Any]] = []
    plate_path, plate_spectra, plate_error = None, [], ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy header chatter from 750k files; errors are still raised
        for i in order:
            plate, mjd, fiber = (int(v) for v in ids[i])
            kind, path = int(kinds[i]), paths[i]
            if kind == _MISSING:
                fail(i, R_NOT_FOUND, f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits not under the spectra roots")
                continue
            if kind == _SPPLATE:
                if path != plate_path:
                    plate_path, plate_spectra, plate_error = path, [], ""
                    try:
                        plate_spectra = read_spectra(path)
                    except SpectrumReadError as exc:
                        plate_error = str(exc)
                    except Exception as exc:  # noqa: BLE001 - a reader bug on one file must not stop the build
                        plate_error = f"{path}: {type(exc).__name__}: {exc}"
                if plate_error:
                    fail(i, R_UNREADABLE, plate_error)
                    continue
                spectrum = _pick(plate_spectra, fiber)
                if spectrum is None:
                    fail(i, R_NOT_IN_FILE, f"{path}: no fiber {fiber}")
                    continue
            else:
                try:
                    spectra = read_spectra(path)
                except SpectrumReadError as exc:
                    fail(i, R_UNREADABLE, str(exc))
                    continue
                except Exception as exc:  # noqa: BLE001
                    fail(i, R_UNREADABLE, f"{path}: {type(exc).__name__}: {exc}")
                    continue
                spectrum = spectra[0] if len(spectra) == 1 else _pick(spectra, fiber)
                if spectrum is None:
                    fail(i, R_NOT_IN_FILE, f"{path}: {len(spectra)} spectra, none with FIBERID {fiber}")
                    continue
                problem = _identity_problem(spectrum, plate, mjd, fiber)
                if problem:
                    fail(i, R_MISMATCH, f"{path}: {problem}")
                    continue
            batch.append((i, spectrum))
            if len(batch) >= task["batch_size"]:
                flush(batch)
        flush(batch)
    plate_spectra = []

    keep = np.flatnonzero(ok)
    arrays = {
        "x": x[keep],
        "z": task["z"][keep].astype(np.float32),
        "ids": ids[keep].astype(np.int64),
        "coverage": coverage[keep],
        "sn_median": sn[keep],
        "split": np.full(keep.size, task["split_code"], np.uint8),
        "catalog_row": task["rows"][keep].astype(np.int64),
    }
    fail_list = [{"catalog_row": int(task["rows"][i]), "reason": r, "detail": d}
                 for i, (r, d) in sorted(failures.items(), key=lambda kv: int(task["rows"][kv[0]]))]
    meta = dict(task["meta"])
    meta.update({"format": SHARD_FORMAT, "version": FORMAT_VERSION, "name": task["name"], "count": int(keep.size),
                 "planned": n, "split": SPLITS[task["split_code"]], "plan_hash": task["plan_hash"],
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "seconds": round(time.perf_counter() - t0, 3), "failures": fail_list,
                 "files": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
                 "complete": True})
    _write_shard_atomically(Path(task["out_dir"]), task["name"], arrays, meta)
    return meta


def _write_shard_atomically(out_dir: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays + meta.json into a temp directory, then rename it to <out>/<name>."""
    tmp = out_dir / f"{_TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: its presence marks completeness
        final = out_dir / name
        if final.exists():  # a stale or incomplete shard from an earlier run
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# Resume checks
# ----------------------------------------------------------------------------------------------------------

def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header without reading or mapping the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(f)
    return shape, dtype


def _existing_shard(shard_dir: Path, plan_hash: str | None) -> dict | None:
    """The meta of a complete shard directory (matching plan_hash when given), else None."""
    try:
        meta = json.loads((shard_dir / "meta.json").read_text())
        if meta.get("format") != SHARD_FORMAT or not meta.get("complete"):
            return None
        if plan_hash is not None and meta.get("plan_hash") != plan_hash:
            return None
        for key, info in meta["files"].items():
            shape, dtype = _npy_shape(shard_dir / f"{key}.npy")
            if list(shape) != info["shape"] or str(dtype) != info["dtype"]:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _plan_hash(common: dict, rows: np.ndarray, ids: np.ndarray, z: np.ndarray, kinds: np.ndarray,
               split_code: int) -> str:
    """Fingerprint of everything that determines a shard's content."""
    h = hashlib.sha1(json.dumps(common, sort_keys=True).encode())
    for arr in (rows.astype(np.int64), ids.astype(np.int64), z.astype(np.float64), kinds.astype(np.uint8)):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(bytes([split_code]))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------

def _atomic_write_text(path: Path, text: str) -> None:
    """Write a small file via temp file + replace, so readers never see half of it."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_options(grid: Mapping, normalisation: Mapping, split: str, split_fractions: Sequence[float],
                   paper_val_fraction: float, shard_size: int, order: str, dr12q_catalog: Any) -> Grid:
    """Validate the build options; returns the Grid."""
    try:
        g = Grid.from_dict(grid)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"grid must be a dict with loglam_start, loglam_step, npix; got {grid!r}") from exc
    if g.npix <= 0 or g.loglam_step <= 0:
        raise ValueError(f"grid needs npix > 0 and loglam_step > 0; got {grid!r}")
    if normalisation.get("scheme") not in SCHEMES:
        raise ValueError(f"normalisation scheme {normalisation.get('scheme')!r} unknown; known: {', '.join(SCHEMES)}")
    if split not in ("random", "paper"):
        raise ValueError(f"split must be 'random' or 'paper', got {split!r}")
    if split == "paper" and dr12q_catalog is None:
        raise ValueError("split='paper' needs dr12q_catalog (the DR12Q FITS catalog) to pick the train/val rows")
    fr = [float(f) for f in split_fractions]
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions!r}")
    if not 0 <= paper_val_fraction <= 1:
        raise ValueError(f"paper_val_fraction must be within [0, 1], got {paper_val_fraction}")
    if int(shard_size) <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if order not in ("random", "plate"):
        raise ValueError(f"order must be 'random' or 'plate', got {order!r}")
    return g


def build_dataset(
    catalog: str | Path,
    spectra_root: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    grid: Mapping = DEFAULT_GRID,
    normalisation: Mapping = DEFAULT_NORMALISATION,
    z_column: str = "auto",
    split: str = "random",
    dr12q_catalog: str | Path | None = None,
    shard_size: int = 4096,
    processes: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    paper_val_fraction: float = 0.1,
    seed: int = 0,
    order: str = "random",
    filters: Mapping[str, Collection] | str | None = "auto",
    min_coverage: float = 0.0,
    use_spplate: bool = True,
    batch_size: int = 256,
    mp_context: str = "spawn",
) -> dict:
    """Build (or resume) sharded preprocessed arrays from a catalog and a spectra tree; returns the manifest."""
    t_start = time.perf_counter()
    catalog, out_dir = Path(catalog), Path(out_dir)
    roots = [Path(spectra_root)] if isinstance(spectra_root, (str, Path)) else [Path(r) for r in spectra_root]
    g = _check_options(grid, normalisation, split, split_fractions, paper_val_fraction, shard_size, order,
                       dr12q_catalog)
    grid, normalisation = g.to_dict(), dict(normalisation)
    for root in roots:
        if not root.is_dir():
            raise DatasetBuildError(root, "spectra root is not a directory")

    # 1. Catalog and row selection (every dropped row gets a reason).
    cat = _read_catalog(catalog, z_column, filters, limit)
    n_used = cat["n_used"]
    keys = _row_key(cat["plate"], cat["mjd"], cat["fiber"])
    reason = np.full(n_used, "", dtype=object)
    detail = np.full(n_used, "", dtype=object)

    def drop(mask: np.ndarray, why: str, text: Any) -> None:
        """Mark rows as not selected; the first reason wins; text: str, or row index -> str."""
        idx = np.flatnonzero(mask & (reason == ""))
        reason[idx] = why
        for i in idx:  # details only for dropped rows: cheap even for a 750k-row catalog
            detail[i] = text if isinstance(text, str) else text(i)

    drop(cat["filter_fail"] != "", R_FILTERED, lambda i: cat["filter_fail"][i])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    dup = np.ones(n_used, bool)
    dup[first] = False
    drop(dup, R_DUPLICATE, lambda i: f"same PLATE/MJD/FIBERID as catalog row {first[inverse[i]]}")
    z = cat["z"]
    z_name = cat["z_column"] + (f" (else {cat['z_fallback']})" if cat["z_fallback"] else "")
    drop(~(np.isfinite(z) & (z > 0)), R_BAD_Z, lambda i: f"{z_name} = {z[i]}, need a finite z > 0")

    # 2. Split per row from a seeded hash of the identifiers.
    u = _uniform(keys, seed, salt=1)
    split_code = np.zeros(n_used, np.uint8)
    split_info: dict[str, Any] = {"rule": split, "seed": int(seed), "per": "shard (each shard holds one split)"}
    if split == "random":
        f_train, f_val, _ = (float(f) for f in split_fractions)
        split_code[u >= f_train] = 1
        split_code[u >= f_train + f_val] = 2
        split_info["fractions"] = dict(zip(SPLITS, (float(f) for f in split_fractions)))
    else:
        in12 = np.isin(keys, _read_keys(Path(dr12q_catalog)))
        split_code[:] = np.where(in12, np.where(u < paper_val_fraction, 1, 0), 2)
        drop(~in12 & ~cat["vi"], R_PAPER_EXCLUDED, f"not in DR12Q and not visually inspected ({cat['vi_rule']})")
        split_info.update({"dr12q_catalog": str(Path(dr12q_catalog).resolve()), "val_fraction": paper_val_fraction,
                           "dr12q_rows_matched": int(in12.sum()), "test_rule": f"not in DR12Q and {cat['vi_rule']}"})
    selected = np.flatnonzero(reason == "")

    # 3. Locate files with one walk of the tree.
    wanted = set(keys[selected].tolist())
    wanted_plates = set((cat["plate"][selected] * 100000 + cat["mjd"][selected]).tolist()) if use_spplate else None
    t_index = time.perf_counter()
    spec_index, plate_index, index_stats = _index_spectra(roots, wanted, wanted_plates)
    index_seconds = time.perf_counter() - t_index
    paths = np.full(n_used, "", dtype=object)
    kinds = np.zeros(n_used, np.uint8)
    key_list, pkey_list = keys.tolist(), (cat["plate"] * 100000 + cat["mjd"]).tolist()  # plain ints: fast loop
    for i in selected.tolist():
        p = spec_index.get(key_list[i])
        if p is not None:
            paths[i], kinds[i] = p, _SPEC
        elif use_spplate:
            p = plate_index.get(pkey_list[i])
            if p is not None:
                paths[i], kinds[i] = p, _SPPLATE
    del spec_index, plate_index

    # 4. Plan shards: per split, rows in hash (or plate) order, cut into shard_size chunks.
    common = {"format_version": FORMAT_VERSION, "grid": grid, "normalisation": normalisation,
              "min_coverage": float(min_coverage)}
    order_key = _uniform(keys, seed, salt=2) if order == "random" else keys.astype(np.float64)
    ids_all = np.stack([cat["plate"], cat["mjd"], cat["fiber"]], axis=1).astype(np.int64)
    shard_meta_common = {"catalog": str(catalog.resolve()), "z_column": cat["z_column"],
                         "z_fallback": cat["z_fallback"], "grid": grid, "normalisation": normalisation}
    plan = []
    for code in range(len(SPLITS)):
        rows = selected[split_code[selected] == code]
        rows = rows[np.lexsort((keys[rows], order_key[rows]))]
        for start in range(0, rows.size, int(shard_size)):
            r = rows[start:start + int(shard_size)]
            name = f"shard-{len(plan):05d}"
            plan.append({"name": name, "out_dir": str(out_dir), "rows": r, "ids": ids_all[r], "z": z[r],
                         "paths": [str(p) for p in paths[r]], "kinds": kinds[r], "split_code": code,
                         "grid": grid, "normalisation": normalisation, "min_coverage": float(min_coverage),
                         "batch_size": int(batch_size), "meta": shard_meta_common,
                         "plan_hash": _plan_hash(common, r, ids_all[r], z[r], kinds[r], code)})

    # 5. Output folder: clear crashed temp dirs and shards that are not part of this plan.
    out_dir.mkdir(parents=True, exist_ok=True)
    planned_names = {t["name"] for t in plan}
    for entry in os.scandir(out_dir):
        if entry.name.startswith(_TMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        elif _SHARD_RE.match(entry.name) and entry.name not in planned_names and entry.is_dir():
            log.info("removing %s: not part of this build's plan", entry.path)
            shutil.rmtree(entry.path)

    # 6. Skip complete shards, build the rest in parallel (one task = one shard).
    done: dict[str, dict] = {}
    todo = []
    for task in plan:
        meta = _existing_shard(out_dir / task["name"], task["plan_hash"])
        if meta is not None:
            done[task["name"]] = meta
        else:
            todo.append(task)
    n_skipped = len(done)
    nproc = max(1, min(int(processes or os.cpu_count() or 1), len(todo) or 1))
    show = bool(progress) and sys.stderr.isatty()
    t_build = time.perf_counter()
    built_rows = built_ok = 0
    from tqdm import tqdm

    with tqdm(total=len(plan), initial=n_skipped, unit="shard", desc="build dataset", disable=not show) as bar:
        def record(meta: dict) -> None:
            nonlocal built_rows, built_ok
            done[meta["name"]] = meta
            built_rows += meta["planned"]
            built_ok += meta["count"]
            bar.update(1)
            bar.set_postfix(spectra_s=f"{built_rows / max(time.perf_counter() - t_build, 1e-9):.0f}")

        if nproc == 1:
            for task in todo:
                record(_build_shard(task))
        else:
            ctx = multiprocessing.get_context(mp_context)
            with ctx.Pool(nproc) as pool:
                for meta in pool.imap_unordered(_build_shard, todo, chunksize=1):
                    record(meta)
    build_seconds = time.perf_counter() - t_build

    # 7. failures.csv and manifest.json (rewritten on every run, from the shards' own meta).
    failure_rows = [(int(i), "select", str(reason[i]), str(detail[i])) for i in np.flatnonzero(reason != "")]
    for task in plan:
        for f in done[task["name"]]["failures"]:
            failure_rows.append((f["catalog_row"], "build", f["reason"], f["detail"]))
    failure_rows.sort()
    with open(out_dir / f"{_TMP_PREFIX}failures.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["catalog_row", "plate", "mjd", "fiberid", "z", "stage", "reason", "detail"])
        plates, mjds, fibers, zs = (a.tolist() for a in (cat["plate"], cat["mjd"], cat["fiber"], z))
        w.writerows([row, plates[row], mjds[row], fibers[row], f"{zs[row]:.6g}", stage, why, detail]
                    for row, stage, why, detail in failure_rows)
    os.replace(out_dir / f"{_TMP_PREFIX}failures.csv", out_dir / "failures.csv")

    shards = [{"name": t["name"], "split": SPLITS[t["split_code"]], "count": done[t["name"]]["count"],
               "planned": done[t["name"]]["planned"], "failed": len(done[t["name"]]["failures"])} for t in plan]
    counts = {s: sum(sh["count"] for sh in shards if sh["split"] == s) for s in SPLITS}
    split_info["counts"] = counts
    n_built = sum(counts.values())
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "catalog": str(catalog.resolve()), "spectra_roots": [str(r.resolve()) for r in roots],
        "z_column": cat["z_column"], "z_fallback": cat["z_fallback"], "z_fallback_rows": cat["z_fallback_rows"],
        "grid": grid, "normalisation": normalisation, "split": split_info,
        "options": {"shard_size": int(shard_size), "processes": processes, "seed": int(seed), "limit": limit,
                    "order": order, "filters": cat["filters"], "min_coverage": float(min_coverage), "use_spplate": bool(use_spplate),
                    "batch_size": int(batch_size), "z_column": z_column},
        "files": {"x": "float16 (N, npix)", "z": "float32 (N,)", "ids": "int64 (N, 3) PLATE MJD FIBERID",
                  "coverage": "float32 (N,)", "sn_median": "float32 (N,)", "split": "uint8 (N,) 0 train 1 val 2 test",
                  "catalog_row": "int64 (N,)"},
        "n_catalog_rows": cat["n_rows"], "n_rows_used": n_used, "n_selected": int(selected.size),
        "n_built": n_built, "n_failed": len(failure_rows),
        "failures": dict(Counter(r[2] for r in failure_rows)), "failures_file": "failures.csv",
        "index": {**index_stats, "seconds": round(index_seconds, 3),
                  "rows_from_spplate": int((kinds == _SPPLATE).sum())},
        "shards": shards,
        "run": {"shards_built": len(todo), "shards_skipped": n_skipped, "processes": nproc,
                "rows_attempted": built_rows, "spectra_built": built_ok, "build_seconds": round(build_seconds, 3),
                "spectra_per_second": round(built_ok / build_seconds, 2) if built_ok and build_seconds else None,
                "total_seconds": round(time.perf_counter() - t_start, 3)},
    }
    _atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


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
