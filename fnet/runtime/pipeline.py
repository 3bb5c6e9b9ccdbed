"""One-way flow: reader -> Spectrum -> preprocessing -> backend -> head decoding -> catalog rows.

Files are read in a small thread pool ahead of inference; spectra are batched across files;
a failure (file or spectrum) becomes a failed catalog row and never stops the run.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import __version__
from .backends import Backend
from .catalog import Catalog
from .errors import SpectrumReadError
from .heads import bin_centres, decode
from .model_package import ModelPackage
from .preprocess import prepare_spectra
from .readers import read_spectra
from .spectrum import Spectrum
from .zwarn import ZWarn, compute_zwarn

SPECTRA_PATTERNS = ("*.fits", "*.fit", "*.fits.gz", "*.fit.gz", "*.fits.fz")
META_COLUMNS = ("PLATE", "MJD", "FIBERID", "TARGETID", "RA", "DEC")


@dataclass
class InputItem:
    """A path to read, or an input that could not even be resolved (reported as a failed row)."""

    path: str
    problem: str | None = None


def expand_inputs(items: Sequence[str], exclude: Sequence[str | Path] = (), _lists: tuple = ()) -> list[InputItem]:
    """Files, globs, directories (searched recursively for FITS files) and @list.txt files, in order.

    Paths in a list file are relative to the list file's folder. `exclude` drops paths such as the
    run's own output catalog, so re-running into the same folder does not read last run's catalog.
    """
    skip = {os.path.realpath(p) for p in exclude}
    out: list[InputItem] = []

    def add(path: str) -> None:
        if os.path.realpath(path) not in skip:
            out.append(InputItem(path))

    for item in items:
        if item.startswith("@"):
            list_path = Path(item[1:])
            if not list_path.is_file():
                out.append(InputItem(item, f"list file {list_path} not found"))
                continue
            if list_path.resolve() in _lists:
                out.append(InputItem(item, f"list file {list_path} includes itself"))
                continue
            lines = [ln.strip() for ln in list_path.read_text().splitlines()]
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            if not entries:
                out.append(InputItem(item, f"list file {list_path} names no input"))
            base = list_path.parent
            resolved = [e if e.startswith("@") or os.path.isabs(e) else str(base / e) for e in entries]
            resolved = ["@" + str(base / e[1:]) if e.startswith("@") and not os.path.isabs(e[1:]) else e
                        for e in resolved]
            out.extend(expand_inputs(resolved, exclude, _lists + (list_path.resolve(),)))
        elif os.path.isdir(item):
            found = sorted({str(p) for pat in SPECTRA_PATTERNS for p in Path(item).rglob(pat)})
            if not found:
                out.append(InputItem(item, "directory contains no FITS files"))
            for p in found:
                add(p)
        elif glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                out.append(InputItem(item, "no file matches"))
            for p in found:
                add(p)
        else:
            out.append(InputItem(item))
    return out


@dataclass
class _FileResult:
    item: InputItem
    spectra: list[Spectrum] = field(default_factory=list)
    problem: str | None = None


def _read(item: InputItem) -> _FileResult:
    if item.problem:
        return _FileResult(item, problem=item.problem)
    try:
        return _FileResult(item, spectra=read_spectra(item.path))
    except SpectrumReadError as exc:
        return _FileResult(item, problem=exc.problem)
    except Exception as exc:  # a reader bug must not lose the other files' rows
        return _FileResult(item, problem=f"unexpected {type(exc).__name__}: {exc}")


def _prefetch(items: Sequence[InputItem], workers: int, ahead: int) -> Iterator[_FileResult]:
    """Read files in a thread pool, at most `ahead` in flight, yielding results in input order."""
    if workers <= 1:
        yield from (_read(i) for i in items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(_read, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_read, nxt))
            yield result


def _meta_values(spec: Spectrum) -> dict:
    return {k: spec.meta[k] for k in META_COLUMNS if spec.meta.get(k) is not None}


class Predictor:
    """Preprocess, infer and decode batches of spectra for one model package and backend."""

    def __init__(self, package: ModelPackage, backend: Backend):
        self.package = package
        self.backend = backend
        self.centres = bin_centres(package.head) if package.head["kind"] == "zbins" else None

    def predict(self, spectra: Sequence[Spectrum], catalog: Catalog, pdf_rows: list | None = None) -> None:
        """Append one catalog row per spectrum (failed rows for spectra with no usable pixel)."""
        pkg = self.package
        prepared = prepare_spectra(spectra, pkg.grid, pkg.normalisation)
        usable = prepared.good.any(axis=1)
        idx = np.flatnonzero(usable)
        z = z_err = zwarn = pdf = None
        if idx.size:
            outputs = self.backend.run(prepared.x[idx])
            decoded = decode(outputs, pkg.head)
            z, z_err, pdf = decoded.z, decoded.z_err, decoded.pdf
            zwarn = compute_zwarn(coverage=prepared.coverage[idx], sn_median=prepared.sn_median[idx],
                                  ivar_known=np.array([spectra[i].ivar_known for i in idx]), z=z, z_err=z_err,
                                  z_range=pkg.z_range, quality=pkg.quality, pdf=pdf, centres=self.centres)
        pos = {int(i): k for k, i in enumerate(idx)}
        for i, spec in enumerate(spectra):
            base = dict(SOURCE=spec.source, ROW=spec.row, FORMAT=spec.format, **_meta_values(spec),
                        COVERAGE=float(prepared.coverage[i]))
            if i not in pos:
                catalog.add(**base, STATUS="failed", ZWARN=int(ZWarn.BAD_INPUT),
                            MESSAGE=f"{spec.source}[{spec.row}]: no usable pixel on the model grid "
                                    "(flux NaN/inf everywhere, ivar all zero, or no overlap with "
                                    f"{pkg.grid.wavelength_range[0]:.0f}-{pkg.grid.wavelength_range[1]:.0f} A)")
                if pdf_rows is not None:
                    pdf_rows.append(None)
                continue
            k = pos[i]
            notes = list(spec.notes) + _flag_notes(int(zwarn[k]), float(prepared.coverage[i]))
            catalog.add(**base, Z=float(z[k]), Z_ERR=float(z_err[k]), ZWARN=int(zwarn[k]),
                        SN_MEDIAN=float(prepared.sn_median[i]), STATUS="ok", MESSAGE="; ".join(notes))
            if pdf_rows is not None:
                pdf_rows.append(None if pdf is None else pdf[k])


def _flag_notes(zwarn: int, coverage: float) -> list[str]:
    notes = []
    if zwarn & ZWarn.LITTLE_COVERAGE:
        notes.append(f"only {coverage:.0%} of the model grid covered")
    if zwarn & ZWarn.Z_OUT_OF_RANGE:
        notes.append("Z at the edge of the training range")
    return notes


@dataclass
class RunSummary:
    """Counts and timing of one run."""

    n_inputs: int
    n_files_failed: int
    n_spectra: int
    n_failed: int
    seconds: float
    backend: str

    @property
    def spectra_per_second(self) -> float:
        """Throughput over the whole run, reading included."""
        return self.n_spectra / self.seconds if self.seconds > 0 else float("nan")


def run_catalog(inputs: Sequence[str], package: ModelPackage, backend: Backend, *, batch_size: int = 64,
                read_workers: int = 2, progress: bool = False, keep_pdf: bool = False,
                exclude: Sequence[str | Path] = ()) -> tuple[Catalog, RunSummary]:
    """Run the whole flow over the inputs and return the catalog (not yet written) and a summary."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    items = expand_inputs(inputs, exclude=exclude)
    catalog = Catalog()
    predictor = Predictor(package, backend)
    pdf_rows: list | None = [] if keep_pdf and package.head["kind"] == "zbins" else None
    batch: list[Spectrum] = []
    # Rows keep input order: a failed file's row waits until the spectra queued before it are done.
    n_files_failed = 0

    def flush() -> None:
        if not batch:
            return
        n_rows, n_pdf = len(catalog.rows), len(pdf_rows or [])
        try:
            predictor.predict(batch, catalog, pdf_rows)
        except Exception as exc:  # e.g. GPU out of memory: this batch fails, the run goes on
            del catalog.rows[n_rows:]
            if pdf_rows is not None:
                del pdf_rows[n_pdf:]
            for spec in batch:
                catalog.add(SOURCE=spec.source, ROW=spec.row, FORMAT=spec.format, **_meta_values(spec),
                            STATUS="failed", ZWARN=int(ZWarn.BAD_INPUT),
                            MESSAGE=f"{spec.source}[{spec.row}]: inference failed: {type(exc).__name__}: {exc}")
                if pdf_rows is not None:
                    pdf_rows.append(None)
        batch.clear()

    bar = tqdm(total=len(items), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for result in _prefetch(items, read_workers, ahead=4 * max(read_workers, 1)):
        bar.update(1)
        if result.problem is not None:
            flush()
            n_files_failed += 1
            catalog.add(SOURCE=result.item.path, ROW=-1, STATUS="failed", ZWARN=int(ZWarn.BAD_INPUT),
                        MESSAGE=f"{result.item.path}: {result.problem}")
            if pdf_rows is not None:
                pdf_rows.append(None)
            continue
        for spec in result.spectra:
            batch.append(spec)
            if len(batch) >= batch_size:
                flush()
    flush()
    bar.close()

    if pdf_rows is not None and predictor.centres is not None:
        catalog.pdf = np.zeros((len(pdf_rows), len(predictor.centres)), dtype=np.float32)
        for i, r in enumerate(pdf_rows):
            if r is not None:
                catalog.pdf[i] = r
        catalog.pdf_z = predictor.centres
    seconds = time.perf_counter() - t0
    summary = RunSummary(n_inputs=len(items), n_files_failed=n_files_failed, n_spectra=len(catalog),
                         n_failed=catalog.n_failed, seconds=seconds, backend=backend.describe())
    catalog.header.update(provenance_header(package, summary))
    return catalog, summary


def provenance_header(package: ModelPackage, summary: RunSummary) -> dict:
    """FITS-header-ready provenance: toolkit and model identity, date, counts."""
    return {
        "FNETVER": __version__,
        "MODEL": package.name,
        "MODELVER": package.version,
        "MODELARC": package.architecture,
        "MODELSHA": package.sha256,
        "BACKEND": summary.backend[:68],
        "DATE": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "NINPUT": summary.n_inputs,
        "NFILEBAD": summary.n_files_failed,
        "NSPEC": summary.n_spectra,
        "NFAIL": summary.n_failed,
    }
