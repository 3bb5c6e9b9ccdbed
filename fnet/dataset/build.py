"""Build sharded training arrays from a quasar catalog (DR12Q/DR16Q style) and a tree of spectra.

``build_dataset(catalog, spectra_root, out_dir)``: read the catalog (fnet.dataset.catalog), select rows
and assign splits by a seeded hash (fnet.dataset.split), find the files with one walk of the tree
(fnet.dataset.index), plan shards, build the missing ones in parallel worker processes (each reads its
spectra with the runtime readers and preprocessing, so training input equals inference input), and
write them in the format fnet.dataset.shards owns, with manifest.json and failures.csv.

- Every shard holds rows of ONE split (train shards first, then val, then test).
- order="random" (default) makes every shard a random sample; order="plate" sorts by PLATE/MJD/FIBERID,
  better disk locality and required for spPlate-only trees (each task reads a needed spPlate once).
- Resumable: a shard's meta.json carries a hash of its plan (rows, labels, grid, normalisation), so a
  re-run skips shards that match and rebuilds the rest.
- Nothing is lost silently: rows dropped while selecting (duplicate, filter, invalid redshift, paper
  split exclusion) and while building (file not found, unreadable, no good pixels, ...) go to failures.csv.

numpy and astropy only (no torch): it runs on machines without a GPU stack.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from ..runtime.atomic import atomic_path, atomic_write_text, is_temporary
from ..runtime.constants import PAPER_GRID
from ..runtime.grid import Grid
from ..runtime.preprocess import SCHEMES
from .catalog import read_catalog, read_keys, row_key
from .errors import R_BAD_Z, R_DUPLICATE, R_FILTERED, R_PAPER_EXCLUDED, DatasetBuildError
from .index import SPEC, SPPLATE, index_spectra
from .worker import build_shard
from .shards import FORMAT, FORMAT_VERSION, SHARD_RE, SPLITS, valid_shard
from .split import uniform

log = logging.getLogger(__name__)

#: The paper's grid: 3566.7-10326 A at 1e-4 dex (4618 pixels).
DEFAULT_GRID: dict = dict(PAPER_GRID)
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


def _plan_hash(common: dict, rows: np.ndarray, ids: np.ndarray, z: np.ndarray, kinds: np.ndarray,
               split_code: int) -> str:
    """Fingerprint of everything that determines a shard's content."""
    h = hashlib.sha1(json.dumps(common, sort_keys=True).encode())
    for arr in (rows.astype(np.int64), ids.astype(np.int64), z.astype(np.float64), kinds.astype(np.uint8)):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(bytes([split_code]))
    return h.hexdigest()


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
    cat = read_catalog(catalog, z_column, filters, limit)
    n_used = cat["n_used"]
    keys = row_key(cat["plate"], cat["mjd"], cat["fiber"])
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
    u = uniform(keys, seed, salt=1)
    split_code = np.zeros(n_used, np.uint8)
    split_info: dict[str, Any] = {"rule": split, "seed": int(seed), "per": "shard (each shard holds one split)"}
    if split == "random":
        f_train, f_val, _ = (float(f) for f in split_fractions)
        split_code[u >= f_train] = 1
        split_code[u >= f_train + f_val] = 2
        split_info["fractions"] = dict(zip(SPLITS, (float(f) for f in split_fractions)))
    else:
        in12 = np.isin(keys, read_keys(Path(dr12q_catalog)))
        split_code[:] = np.where(in12, np.where(u < paper_val_fraction, 1, 0), 2)
        drop(~in12 & ~cat["vi"], R_PAPER_EXCLUDED, f"not in DR12Q and not visually inspected ({cat['vi_rule']})")
        split_info.update({"dr12q_catalog": str(Path(dr12q_catalog).resolve()), "val_fraction": paper_val_fraction,
                           "dr12q_rows_matched": int(in12.sum()), "test_rule": f"not in DR12Q and {cat['vi_rule']}"})
    selected = np.flatnonzero(reason == "")

    # 3. Locate files with one walk of the tree.
    wanted = set(keys[selected].tolist())
    wanted_plates = set((cat["plate"][selected] * 100000 + cat["mjd"][selected]).tolist()) if use_spplate else None
    t_index = time.perf_counter()
    spec_index, plate_index, index_stats = index_spectra(roots, wanted, wanted_plates)
    index_seconds = time.perf_counter() - t_index
    paths = np.full(n_used, "", dtype=object)
    kinds = np.zeros(n_used, np.uint8)
    key_list, pkey_list = keys.tolist(), (cat["plate"] * 100000 + cat["mjd"]).tolist()  # plain ints: fast loop
    for i in selected.tolist():
        p = spec_index.get(key_list[i])
        if p is not None:
            paths[i], kinds[i] = p, SPEC
        elif use_spplate:
            p = plate_index.get(pkey_list[i])
            if p is not None:
                paths[i], kinds[i] = p, SPPLATE
    del spec_index, plate_index

    # 4. Plan shards: per split, rows in hash (or plate) order, cut into shard_size chunks.
    common = {"format_version": FORMAT_VERSION, "grid": grid, "normalisation": normalisation,
              "min_coverage": float(min_coverage)}
    order_key = uniform(keys, seed, salt=2) if order == "random" else keys.astype(np.float64)
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
        if is_temporary(entry.name) or entry.name.startswith(".tmp-"):  # .tmp-: left by builds before 0.2
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        elif SHARD_RE.match(entry.name) and entry.name not in planned_names and entry.is_dir():
            log.info("removing %s: not part of this build's plan", entry.path)
            shutil.rmtree(entry.path)

    # 6. Skip complete shards, build the rest in parallel (one task = one shard).
    done: dict[str, dict] = {}
    todo = []
    for task in plan:
        meta = valid_shard(out_dir / task["name"], task["plan_hash"])
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
                record(build_shard(task))
        else:
            ctx = multiprocessing.get_context(mp_context)
            with ctx.Pool(nproc) as pool:
                for meta in pool.imap_unordered(build_shard, todo, chunksize=1):
                    record(meta)
    build_seconds = time.perf_counter() - t_build

    # 7. failures.csv and manifest.json (rewritten on every run, from the shards' own meta).
    failure_rows = [(int(i), "select", str(reason[i]), str(detail[i])) for i in np.flatnonzero(reason != "")]
    for task in plan:
        for f in done[task["name"]]["failures"]:
            failure_rows.append((f["catalog_row"], "build", f["reason"], f["detail"]))
    failure_rows.sort()
    with atomic_path(out_dir / "failures.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["catalog_row", "plate", "mjd", "fiberid", "z", "stage", "reason", "detail"])
        plates, mjds, fibers, zs = (a.tolist() for a in (cat["plate"], cat["mjd"], cat["fiber"], z))
        w.writerows([row, plates[row], mjds[row], fibers[row], f"{zs[row]:.6g}", stage, why, detail]
                    for row, stage, why, detail in failure_rows)

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
                  "rows_from_spplate": int((kinds == SPPLATE).sum())},
        "shards": shards,
        "run": {"shards_built": len(todo), "shards_skipped": n_skipped, "processes": nproc,
                "rows_attempted": built_rows, "spectra_built": built_ok, "build_seconds": round(build_seconds, 3),
                "spectra_per_second": round(built_ok / build_seconds, 2) if built_ok and build_seconds else None,
                "total_seconds": round(time.perf_counter() - t_start, 3)},
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
