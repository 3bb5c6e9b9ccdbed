"""One-way flow: reader -> Spectrum -> preprocessing -> backend -> head decoding -> catalog rows.

Files are read in a small thread pool ahead of inference; spectra are batched across files. Every
step is isolated: a file that cannot be read, a spectrum preprocessing cannot handle, a batch the
backend fails on (it is split until the failing spectrum is found) or an output that is not finite
becomes one failed row, and the run goes on. Rows leave in input order, input by input, to a sink:
an in-memory Catalog (Python API) or the run journal (fnet-run), so memory holds one batch, not the
catalog.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from itertools import islice
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from .. import __version__
from .backends import Backend
from .catalog import Catalog, class_columns, failed_row, make_row
from .errors import CatalogFileError, SpectrumReadError
from .heads import Decoded, bin_centres, decode, has_classes
from .inputs import InputItem, expand_inputs
from .model_package import ModelPackage
from .preprocess import Prepared, prepare_spectra
from .readers import NO_GOOD_PIXELS_NOTE, read_spectra
from .spectrum import META_TYPES, Spectrum
from .zwarn import ZWarn, compute_zwarn

__all__ = ["InputItem", "expand_inputs", "Predictor", "RunSummary", "run_items", "run_catalog", "provenance_header"]

META_COLUMNS = tuple(META_TYPES)  # every typed identifier is a catalog column
# A spectrum needs this share of the model grid (and at least MIN_GOOD_PIXELS pixels) to be measured at
# all: a redshift from a handful of pixels is noise, whatever COVERAGE says.
MIN_GOOD_FRACTION = 0.02
MIN_GOOD_PIXELS = 10
# Beyond these a spectrum's numbers are not what any spectrograph records (ZWARN IMPLAUSIBLE_DATA).
MAX_PLAUSIBLE_FLUX = 1e12  # median |flux| in the file's units (SDSS/DESI: 1e-17 erg/s/cm2/A)
MAX_PLAUSIBLE_SN = 1e4  # median S/N per model-grid pixel


@dataclass
class _FileResult:
    index: int
    item: InputItem
    spectra: list[Spectrum] = field(default_factory=list)
    problem: str | None = None
    skip: bool = False  # an earlier run's catalog found in a folder: no row


def read_input(index: int, item: InputItem) -> _FileResult:
    """Input `index` read into spectra, or the problem that gives it a failed row (never raises)."""
    if item.problem:
        return _FileResult(index, item, problem=item.problem)
    try:
        return _FileResult(index, item, spectra=read_spectra(item.path))
    except CatalogFileError as exc:
        return _FileResult(index, item, problem=exc.problem, skip=item.from_folder)
    except SpectrumReadError as exc:
        return _FileResult(index, item, problem=exc.problem)
    except MemoryError:
        return _FileResult(index, item, problem="not enough memory to read this file")
    except Exception as exc:  # a reader bug must not lose the other files' rows
        return _FileResult(index, item, problem=f"unexpected {type(exc).__name__} while reading (a bug: please "
                                                 f"report it): {exc}")


def _prefetch(items: Iterable[InputItem], start: int, workers: int, ahead: int) -> Iterator[_FileResult]:
    """Read items from index `start` on in a thread pool, at most `ahead` in flight, yielding results in input order."""
    numbered = islice(enumerate(items), start, None)
    if workers <= 1:
        yield from (read_input(i, item) for i, item in numbered)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        it = iter(numbered)
        for i, item in it:
            pending.append(pool.submit(read_input, i, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(read_input, *nxt))
            yield result


def file_failed_row(path: str, problem: str) -> dict:
    """The one row of an input that gives no spectra (unreadable, missing, a pattern matching nothing)."""
    return failed_row(f"{path}: {problem}", SOURCE=path, ROW=-1)


def _meta_values(spec: Spectrum) -> dict:
    return {k: spec.meta[k] for k in META_COLUMNS if spec.meta.get(k) is not None}


def _plain(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


Row = tuple[dict, "np.ndarray | None"]


@dataclass
class Staged:
    """What decoding needs of one spectrum once it is preprocessed: no pixels, so small and picklable (the Ray
    runner ships it from the CPU stage to the inference actors). coverage and sn_median keep the Prepared dtype."""

    source: str
    row: int
    format: str
    meta: dict
    notes: list
    ivar_known: bool
    coverage: np.floating
    sn_median: np.floating
    implausible: int  # ZWARN IMPLAUSIBLE_DATA or 0

    @classmethod
    def of(cls, spec: Spectrum, prep: Prepared, implausible: int) -> "Staged":
        return cls(spec.source, spec.row, spec.format, spec.meta, spec.notes, spec.ivar_known, prep.coverage[0],
                   prep.sn_median[0], implausible)


class Predictor:
    """Preprocess, infer and decode batches of spectra for one model package and backend."""

    def __init__(self, package: ModelPackage, backend: Backend):
        self.package = package
        self.backend = backend
        self.centres = bin_centres(package.head) if package.head["kind"] == "zbins" else None
        self.min_pixels = max(MIN_GOOD_PIXELS, int(round(MIN_GOOD_FRACTION * package.grid.npix)))

    def rows(self, spectra: Sequence[Spectrum]) -> list[Row]:
        """One (catalog row, P(z) or None) per spectrum, in order; failures become failed rows."""
        out, usable, x, staged = self.stage(spectra)
        if usable:
            for i, row in zip(usable, self.infer_rows(x, staged)):
                out[i] = row
        if any(row is None for row in out):
            raise RuntimeError(f"{sum(r is None for r in out)} spectra got no catalog row (a bug)")
        return out

    def stage(self, spectra: Sequence[Spectrum]) -> tuple[list[Row | None], list[int], np.ndarray, list[Staged]]:
        """The CPU half of rows(): preprocessing and the data checks, no backend.

        Returns the rows already final (failures; None elsewhere), the indices of the spectra left for the
        backend, their network inputs (one row each) and what decoding needs of them (`Staged`).
        """
        out: list[Row | None] = [None] * len(spectra)
        prepared, ok = self._prepare(spectra, out)
        usable = [i for i in ok if self._usable(spectra[i], prepared[i], out, i)]
        x = (np.concatenate([prepared[i].x for i in usable]) if usable
             else np.zeros((0, self.package.grid.npix), np.float32))
        staged = [Staged.of(spectra[i], prepared[i], self._implausible(prepared[i])) for i in usable]
        return out, usable, x, staged

    def infer_rows(self, x: np.ndarray, staged: Sequence[Staged]) -> list[Row]:
        """The backend half of rows(): one row per staged spectrum (x holds their inputs, in order)."""
        out: list[Row | None] = [None] * len(staged)
        outputs, errors = self._infer(x)
        for k, problem in errors.items():
            out[k] = self._failed(staged[k], f"inference failed: {problem}", staged[k].coverage)
        done = [k for k in range(len(staged)) if k not in errors]
        if done:
            self._decode(done, {n: v[done] for n, v in outputs.items()}, staged, out)
        return out

    def predict(self, spectra: Sequence[Spectrum], catalog: Catalog, pdf_rows: list | None = None) -> None:
        """Append one row per spectrum to an in-memory catalog (and its P(z) to pdf_rows)."""
        for row, pdf in self.rows(spectra):
            catalog.rows.append(row)
            if pdf_rows is not None:
                pdf_rows.append(pdf)

    # -- steps -----------------------------------------------------------------------------------------

    def _prepare(self, spectra: Sequence[Spectrum], out: list) -> tuple[list[Prepared | None], list[int]]:
        """Per-spectrum Prepared views; a spectrum preprocessing raises on fails alone, not its batch."""
        pkg = self.package
        try:
            batch = prepare_spectra(spectra, pkg.grid, pkg.normalisation)
            return [batch.row(i) for i in range(len(spectra))], list(range(len(spectra)))
        except Exception:
            pass  # find the spectrum at fault: one at a time
        prepared: list[Prepared | None] = []
        ok = []
        for i, spec in enumerate(spectra):
            try:
                prepared.append(prepare_spectra([spec], pkg.grid, pkg.normalisation).row(0))
                ok.append(i)
            except Exception as exc:
                prepared.append(None)
                out[i] = self._failed(spec, f"preprocessing failed (a bug: please report it): {_plain(exc)}")
        return prepared, ok

    def _usable(self, spec: Spectrum, prep: Prepared, out: list, i: int) -> bool:
        """False (and a failed row) when a spectrum has too little or meaningless data to measure."""
        grid = self.package.grid
        # usable pixels counted twice: input pixels inside the grid (a few wide pixels may still "cover" many
        # grid pixels) and good grid pixels after rebinning; either below the minimum fails the spectrum
        inside = (spec.loglam > grid.edges[0]) & (spec.loglam < grid.edges[-1])
        n_input, n_good = int(np.count_nonzero(spec.good & inside)), int(prep.good.sum())
        if n_good == 0 and not 0 < n_input < self.min_pixels:
            lo, hi = grid.wavelength_range
            why = (NO_GOOD_PIXELS_NOTE if NO_GOOD_PIXELS_NOTE in spec.notes else
                   f"no usable pixel on the model grid (flux NaN/inf everywhere, ivar all zero, or no overlap with "
                   f"{lo:.0f}-{hi:.0f} A; the spectrum covers {spec.wavelength[0]:.0f}-{spec.wavelength[-1]:.0f} A)")
            out[i] = self._failed(spec, why, prep.coverage[0])
            return False
        if min(n_input, n_good) < self.min_pixels:
            shown = n_input if n_input < self.min_pixels else n_good
            out[i] = self._failed(spec, f"only {shown} usable pixels on the model grid (at least "
                                        f"{self.min_pixels} are needed for a redshift)", prep.coverage[0])
            return False
        values = spec.flux[spec.good]
        if values.size and np.all(values == values[0]):
            out[i] = self._failed(spec, f"flux is the same value ({values[0]:.4g}) at every usable pixel: there is "
                                        "nothing to measure", prep.coverage[0])
            return False
        return True

    def _infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Backend outputs for all rows (zeros where a row failed) and a problem for each failed row.

        A failing batch (out of memory, one input the backend chokes on) is split in halves until the
        failing rows are alone, so they fail by themselves and the rest of the batch gets its redshifts.
        """
        try:
            return self.backend.run(x), {}
        except Exception as exc:
            if len(x) == 1:
                return {}, {0: _plain(exc)}
        half = len(x) // 2
        parts = [self._infer(x[:half]), self._infer(x[half:])]
        errors = {**parts[0][1], **{half + k: v for k, v in parts[1][1].items()}}
        template = next((outs for outs, _ in parts if outs), None)
        if template is None:
            return {}, errors
        sizes = (half, len(x) - half)
        outputs = {name: np.concatenate([outs[name] if outs else np.zeros((n,) + ref.shape[1:], ref.dtype)
                                         for (outs, _), n in zip(parts, sizes)])
                   for name, ref in template.items()}
        return outputs, errors

    def _decode(self, idx: list[int], outputs: dict[str, np.ndarray], staged: Sequence[Staged], out: list) -> None:
        """Z, Z_ERR, ZWARN and the ok rows for the spectra the backend ran."""
        pkg = self.package
        decoded = decode(outputs, pkg.head)
        coverage = np.array([staged[i].coverage for i in idx])
        sn = np.array([staged[i].sn_median for i in idx])
        known = np.array([staged[i].ivar_known for i in idx])
        zwarn = compute_zwarn(coverage=coverage, sn_median=sn, ivar_known=known,
                              z=decoded.z, z_err=decoded.z_err, z_range=pkg.z_range, quality=pkg.quality,
                              pdf=decoded.pdf, centres=self.centres,
                              p_class=decoded.p_class if decoded.p_class_head is None else decoded.p_class_head,
                              class_out_of_range=decoded.class_out_of_range)
        classes = _class_values(decoded)
        for k, i in enumerate(idx):
            spec = staged[i]
            z, z_err = float(decoded.z[k]), float(decoded.z_err[k])
            if not np.isfinite(z) or (pkg.head["kind"] == "zbins" and not np.isfinite(z_err)):
                out[i] = self._failed(spec, f"the model gave a non-finite redshift (Z = {z}, Z_ERR = {z_err}): "
                                            "the input values are outside what it can handle", spec.coverage)
                continue
            flags = int(zwarn[k]) | spec.implausible
            notes = list(spec.notes) + _flag_notes(flags, float(spec.coverage)) + _class_range_note(decoded, k)
            row = make_row(dict(SOURCE=spec.source, ROW=spec.row, FORMAT=spec.format, **_meta_values(spec),
                                COVERAGE=float(spec.coverage), Z=z, Z_ERR=z_err, ZWARN=flags, **classes[k],
                                SN_MEDIAN=float(spec.sn_median), STATUS="ok", MESSAGE="; ".join(notes)))
            out[i] = (row, None if decoded.pdf is None else decoded.pdf[k])

    @staticmethod
    def _implausible(prep: Prepared) -> int:
        """ZWARN IMPLAUSIBLE_DATA when flux or S/N are beyond anything a spectrograph records."""
        good = prep.good[0]
        scale = float(np.median(np.abs(prep.flux[0][good]))) if good.any() else 0.0
        sn = float(prep.sn_median[0])
        if not np.isfinite(scale) or scale > MAX_PLAUSIBLE_FLUX or (np.isfinite(sn) and sn > MAX_PLAUSIBLE_SN):
            return int(ZWarn.IMPLAUSIBLE_DATA)
        return 0

    def _failed(self, spec: Spectrum | Staged, why: str, coverage: float = 0.0) -> Row:
        row = failed_row(f"{spec.source}[{spec.row}]: {why}", SOURCE=spec.source, ROW=spec.row, FORMAT=spec.format,
                         COVERAGE=float(coverage), **_meta_values(spec))
        return row, None


def _class_values(decoded: Decoded) -> list[dict]:
    """SPECTYPE and P_<CLASS> per decoded row (no values without a class head: the columns keep their fills)."""
    if decoded.p_class is None:
        return [{}] * len(decoded.z)
    names = list(class_columns(decoded.classes).values())
    return [{"SPECTYPE": kind, **{name: float(p) for name, p in zip(names, row)}}
            for kind, row in zip(decoded.spectype(), decoded.p_class)]


def _flag_notes(zwarn: int, coverage: float) -> list[str]:
    notes = []
    if zwarn & ZWarn.LITTLE_COVERAGE:
        notes.append(f"only {coverage:.0%} of the model grid covered")
    if zwarn & ZWarn.Z_OUT_OF_RANGE:
        notes.append("Z at the edge of the training range")
    if zwarn & ZWarn.IMPLAUSIBLE_DATA:
        notes.append("flux or S/N far beyond what a spectrograph records: Z not to be trusted")
    return notes


def _class_range_note(decoded: Decoded, k: int) -> list[str]:
    """MESSAGE note for a row whose class head chose a class outside its training redshift range (class_z_range)."""
    if decoded.class_out_of_range is None or not decoded.class_out_of_range[k]:
        return []
    top = int(np.argmax(decoded.p_class_head[k]))
    return [f"class head's {decoded.classes[top]} (P {decoded.p_class_head[k, top]:.2f}) is outside the redshifts "
            f"training held it at; SPECTYPE and P_* from the classes trained at this Z"]


class RowSink(Protocol):
    """Where finished inputs' rows go, in input order."""

    def add(self, index: int, rows: list[dict], pdfs: list) -> None: ...


class MemorySink:
    """Collects rows into an in-memory Catalog (the Python API's run_catalog)."""

    def __init__(self, keep_pdf: bool):
        self.catalog = Catalog()
        self.pdfs: list | None = [] if keep_pdf else None

    def add(self, index: int, rows: list[dict], pdfs: list) -> None:
        self.catalog.rows.extend(rows)
        if self.pdfs is not None:
            self.pdfs.extend(pdfs)


@dataclass
class RunSummary:
    """Counts and timing of one run (counts include inputs finished by an earlier run when resuming)."""

    n_inputs: int
    n_files_failed: int
    n_spectra: int
    n_failed: int
    seconds: float
    backend: str
    n_skipped: int = 0  # earlier catalogs found in folders, not read
    n_resumed: int = 0  # inputs already done by the run being resumed

    @property
    def spectra_per_second(self) -> float:
        """Throughput over the whole run, reading included."""
        return self.n_spectra / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class _Pending:
    index: int
    slots: list  # one Row or None per spectrum still to be predicted
    skip: bool = False

    @property
    def complete(self) -> bool:
        return all(s is not None for s in self.slots)


def run_items(items: Iterable[InputItem], predictor: Predictor, sink: RowSink, *, start: int = 0,
              total: int | None = None, batch_size: int = 64, read_workers: int = 2, progress: bool = False,
              on_row: Callable[[dict], None] | None = None) -> tuple[int, float]:
    """Run the items from index `start` on through the predictor into the sink; returns (inputs skipped, seconds).

    `items` may be a generator (fnet-run streams them); `total` is only for the progress bar.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    pending: deque[_Pending] = deque()
    batch: list[tuple[_Pending, int, Spectrum]] = []
    skipped = 0

    def emit_complete() -> None:
        while pending and pending[0].complete:
            done = pending.popleft()
            rows = [] if done.skip else [r for r, _ in done.slots]
            pdfs = [] if done.skip else [p for _, p in done.slots]
            sink.add(done.index, rows, pdfs)
            if on_row is not None:
                for row in rows:
                    on_row(row)

    def flush() -> None:
        if batch:
            results = predictor.rows([spec for _, _, spec in batch])
            for (entry, slot, _), result in zip(batch, results):
                entry.slots[slot] = result
            batch.clear()
        emit_complete()

    if total is None and isinstance(items, Sequence):
        total = len(items)
    bar = tqdm(total=None if total is None else total - start, unit="file", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for result in _prefetch(items, start, read_workers, ahead=4 * max(read_workers, 1)):
        bar.update(1)
        if result.problem is not None:
            skipped += result.skip
            row = file_failed_row(result.item.path, result.problem)
            pending.append(_Pending(result.index, [] if result.skip else [(row, None)], skip=result.skip))
            emit_complete()
            continue
        entry = _Pending(result.index, [None] * len(result.spectra))
        pending.append(entry)
        for slot, spec in enumerate(result.spectra):
            batch.append((entry, slot, spec))
            if len(batch) >= batch_size:
                flush()
        result.spectra = []  # rows now hold what is needed: let the arrays go
    flush()
    bar.close()
    return skipped, time.perf_counter() - t0


def run_catalog(inputs: Sequence[str], package: ModelPackage, backend: Backend, *, batch_size: int = 64,
                read_workers: int = 2, progress: bool = False, keep_pdf: bool = False,
                exclude: Sequence[str | Path] = ()) -> tuple[Catalog, RunSummary]:
    """Run the whole flow over the inputs and return an in-memory catalog (not yet written) and a summary."""
    items = expand_inputs(inputs, exclude=exclude)
    predictor = Predictor(package, backend)
    keep = keep_pdf and predictor.centres is not None
    sink = MemorySink(keep)
    skipped, seconds = run_items(items, predictor, sink, batch_size=batch_size, read_workers=read_workers,
                                 progress=progress)
    catalog = sink.catalog
    if keep:
        catalog.pdf = np.zeros((len(sink.pdfs), len(predictor.centres)), dtype=np.float32)
        for i, r in enumerate(sink.pdfs):
            if r is not None:
                catalog.pdf[i] = r
        catalog.pdf_z = predictor.centres
    n_files_failed = sum(r["ROW"] == -1 for r in catalog.rows)
    summary = RunSummary(n_inputs=len(items), n_files_failed=n_files_failed, n_spectra=len(catalog),
                         n_failed=catalog.n_failed, seconds=seconds, backend=backend.describe(), n_skipped=skipped)
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
        # the class head's classes: the catalog has SPECTYPE and P_<CLASS> columns exactly when this card is there
        **({"CLASSES": ",".join(package.head["classes"])} if has_classes(package.head) else {}),
        # whether SPECTYPE / P_* are restricted to the classes the training set held at each row's Z
        **({"CLASSZR": "class_z_range" in package.head} if has_classes(package.head) else {}),
        "BACKEND": summary.backend[:68],
        # the export's verdict on this file (FAIL: written with --force, its redshifts are not vouched for)
        "PARITY": {True: "pass", False: "FAIL"}.get(package.parity.get("passed"), "none"),
        "DATE": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "NINPUT": summary.n_inputs,
        "NFILEBAD": summary.n_files_failed,
        "NSPEC": summary.n_spectra,
        "NFAIL": summary.n_failed,
        "NSKIP": summary.n_skipped,
        "NRESUMED": summary.n_resumed,
    }
