"""One shard of a dataset build, in a worker process: read its spectra, preprocess, write the shard.

Everything a task needs travels in its dict (picklable for spawn workers); a spectrum that cannot be
read or preprocessed becomes a failure row of its shard, never an exception that stops the build.
"""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import SpectrumReadError
from ..runtime.grid import Grid
from ..runtime.preprocess import prepare_spectra
from .errors import (R_MISMATCH, R_NO_GOOD, R_LOW_COVERAGE, R_NOT_FOUND, R_NOT_IN_FILE, R_PREPROCESS,
                     R_UNREADABLE)
from .index import MISSING, SPPLATE
from .shards import SPLITS, write_shard_arrays

_FLOAT16_MAX = float(np.finfo(np.float16).max)


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


def build_shard(task: dict) -> dict:
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
    order = sorted(range(n), key=lambda i: (kinds[i] == SPPLATE, paths[i] if kinds[i] == SPPLATE else "", i))
    batch: list[tuple[int, Any]] = []
    plate_path, plate_spectra, plate_error = None, [], ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy header chatter from 750k files; errors are still raised
        for i in order:
            plate, mjd, fiber = (int(v) for v in ids[i])
            kind, path = int(kinds[i]), paths[i]
            if kind == MISSING:
                fail(i, R_NOT_FOUND, f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits not under the spectra roots")
                continue
            if kind == SPPLATE:
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
    meta.update({"planned": n, "split": SPLITS[task["split_code"]], "plan_hash": task["plan_hash"],
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "seconds": round(time.perf_counter() - t0, 3), "failures": fail_list})
    return write_shard_arrays(Path(task["out_dir"]), task["name"], arrays, meta)
