"""redrock redshift priors from an fnet-run catalog (``fnet-run ... --priors PRIORS.fits``).

The file follows what redrock's own reader does (desihub/redrock 0.21.0, ``py/redrock/priors.py``):

- ``Priors.__init__`` (lines 30-40) opens the file with ``fits.open(..., memmap=False)`` and reads
  ``h['PRIORS'].data['TARGETID']``, ``['Z']`` and ``['SIGMA']`` by HDU and column name (other columns are
  ignored), then builds ``{targetid[i]: {'Z': z[i], 'SIGMA': sigma[i]}}``: a TARGETID that appears twice
  silently keeps its last row, so this file has one row per TARGETID.
- ``self._type = h['PRIORS'].data['FUNCTION'][0]`` then ``getattr(self, self._type)`` (lines 39-40): FUNCTION
  is a column but only its FIRST row counts, for every target, and it must be exactly ``gaussian``,
  ``lorentzien`` (redrock's spelling) or ``tophat``. An empty table raises IndexError there, so an empty
  priors file is never written. Every row here carries the same FUNCTION.
- ``eval`` (lines 53-59): a target missing from the file gets 0, i.e. no prior.
- ``gaussian`` returns ``((z-z0)/s0)**2`` (line 72), ``lorentzien`` ``-2*log(1/(1+((z-z0)/s0)**2))`` (line 85):
  chi2 penalties, 0 at Z and growing away from it, so SIGMA is a 1-sigma width in dz (docstring line 23).
  ``tophat`` keeps ``|z-z0| < s0/2`` (line 115): there SIGMA is the FULL width, and this file writes
  2 * TOPHAT_HALF_WIDTH_SIGMAS * sigma. Line 115 uses ``np.NaN``, which numpy 2 removed: redrock 0.21.0's
  tophat raises AttributeError under numpy >= 2 (gaussian and lorentzien work).
- ``zfind.py`` lines 318-322 add the prior to the coarse-scan chi2 only; ``fitz.py`` lines 209-212 then
  refine +-1 coarse step around each minimum without it. The prior chooses the basin (what avoids line
  confusions); redrock's data fix the final z. The coarse scan itself still runs in full.

Rows (each catalog row lands in exactly one count of PriorsSummary):
  failed    STATUS != ok or Z not finite: left out.
  flagged   ZWARN != 0: left out (``flagged="omit"``, default) or, with ``flagged="widen"``, SIGMA raised to
            at least WIDEN_KMS. Z_OUT_OF_RANGE and IMPLAUSIBLE_DATA rows are always left out (Z means nothing).
  no_id     neither a DESI TARGETID (>= 0; -1 is the catalog's blank, DESI's negative ids are fibers with no
            target) nor a valid PLATE/MJD/FIBERID.
  duplicate a TARGETID on several rows (a target in several coadds, a file given twice): one row, the smallest
            SIGMA, when all their Z agree within 3 x the larger SIGMA; none when they disagree (``conflicting``).

TARGETID: the catalog's DESI TARGETID where there is one. SDSS rows (no TARGETID) get redrock's own BOSS
rule, ``redrock/external/boss.py`` lines 41-49: ``TARGETID = PLATE*10**9 + MJD*10**4 + FIBERID``, so the
file works as is with ``rrboss --priors`` on one spPlate (rrboss switches to THING_ID when given several
spPlates: map those yourself). It is collision-free for 0 <= MJD < 10**5 and 1 <= FIBERID < 10**4 (all
SDSS/BOSS/eBOSS); ``unpack_sdss_targetid`` inverts it.

SIGMA (dz) = max(Z_ERR, (1+Z) * floor_kms / c). Z_ERR is FNet's 1-sigma from P(z) (conservative: 88 % of
real DR16 spectra within 1 sigma); regression-head models give no Z_ERR and get (1+Z) * NO_ERR_KMS / c.
The floor, 1000 km/s: redrock's QSO coarse step is 5e-4 dex = 345 km/s, and fitz refines only +-1 step
around the coarse minimum, so a prior narrower than a few steps would pin redrock's z to FNet's. 1000 km/s
is ~3 coarse steps and ~3x FNet's real-data p68 |dv| (345 km/s, README): the penalty at a typical FNet
error is ~0.1 chi2, while a line confusion (>= 69000 km/s, e.g. CIV/CIII]) costs > 4000.
WIDEN_KMS, 30000 km/s: that confusion then costs (69000/30000)**2 ~ 5 chi2, below redrock's own
confidence threshold of 9 (ZWARN SMALL_DELTA_CHI2): the prior breaks near ties, clear data win.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .atomic import atomic_path
from .constants import C_KMS
from .zwarn import ZWarn

FUNCTIONS = ("gaussian", "lorentzien", "tophat")  # redrock's method names, spelling included
DEFAULT_FLOOR_KMS = 1000.0
WIDEN_KMS = 30000.0
NO_ERR_KMS = 3000.0  # = model_package's default max_dv_err_kms: the widest Z_ERR an unflagged row may have
TOPHAT_HALF_WIDTH_SIGMAS = 3.0
NEVER_WIDENED = int(ZWarn.BAD_INPUT | ZWarn.Z_OUT_OF_RANGE | ZWarn.IMPLAUSIBLE_DATA)
PRIORS_SUFFIXES = (".fits", ".fit", ".fits.gz")
_NEEDED = ("TARGETID", "PLATE", "MJD", "FIBERID", "Z", "Z_ERR", "ZWARN", "STATUS")
_CHUNK = 65536


def sdss_targetid(plate, mjd, fiberid) -> np.ndarray:
    """redrock's BOSS TARGETID, PLATE*10**9 + MJD*10**4 + FIBERID (int64); -1 where an identifier is invalid."""
    plate, mjd, fiberid = (np.asarray(a, dtype=np.int64) for a in (plate, mjd, fiberid))
    valid = (plate >= 0) & (plate < 9 * 10**9) & (mjd >= 0) & (mjd < 10**5) & (fiberid >= 1) & (fiberid < 10**4)
    return np.where(valid, plate * 10**9 + mjd * 10**4 + fiberid, -1)


def unpack_sdss_targetid(targetid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PLATE, MJD, FIBERID) from a TARGETID made by sdss_targetid (redrock's targetid2platemjdfiber)."""
    t = np.asarray(targetid, dtype=np.int64)
    return t // 10**9, (t // 10**4) % 10**5, t % 10**4


@dataclass
class PriorsSummary:
    """What write_priors did: counts per rule (they add up to n_rows) and whether a file was written."""

    path: Path
    function: str
    n_rows: int = 0
    written: int = 0
    widened: int = 0
    failed: int = 0
    flagged: int = 0
    no_id: int = 0
    duplicate: int = 0
    conflicting: int = 0
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def wrote_file(self) -> bool:
        return self.written > 0

    def describe(self) -> str:
        left = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.flagged, "flagged"),
                                              (self.no_id, "without an identifier"),
                                              (self.duplicate, "repeated targets merged"),
                                              (self.conflicting, "repeated targets that disagree"))
                if n]
        left_out = f"; left out: {', '.join(left)}" if left else ""
        if not self.wrote_file:
            return f"fnet-run: no priors file written: no catalog row qualifies{left_out}"
        wide = f", {self.widened} flagged widened" if self.widened else ""
        return f"fnet-run: priors {self.path}: {self.written} targets ({self.function}{wide}){left_out}"


def is_fnet_priors(path: str | Path) -> bool:
    """True when `path` is a priors file this module wrote (HDU PRIORS with FNETVER)."""
    try:
        from astropy.io import fits

        with fits.open(path, memmap=False) as h:
            return "PRIORS" in h and "FNETVER" in h["PRIORS"].header
    except Exception:
        return False


def check_priors_path(path: str | Path, forbidden: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, a priors path that must not be written (ValueError naming it).

    `forbidden`: the run's output and progress files. Refused: not .fits/.fit/.fits.gz, a folder, one of
    `forbidden`, an existing file that is not an earlier fnet priors file, a folder that cannot be written.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file name such as {path / 'priors.fits'}")
    if not any(name.endswith(s) for s in PRIORS_SUFFIXES):
        raise ValueError(f"{path}: redrock reads priors as FITS; name the file .fits or .fits.gz")
    if os.path.realpath(path) in {os.path.realpath(p) for p in forbidden}:
        raise ValueError(f"{path}: is also the catalog (or its progress file); give the priors another name")
    if os.path.lexists(path) and not is_fnet_priors(path):
        raise ValueError(f"{path}: exists and is not an fnet priors file; refusing to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.probe.part"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{path}: cannot write in {parent}: {exc.strerror or exc}") from None
    return path


def _text(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "ascii", "replace")
    return np.char.strip(arr.astype(str))


def _chunk_from_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    return {n: np.array([r.get(n, -1 if n in ("TARGETID", "PLATE", "MJD", "FIBERID") else np.nan) for r in rows])
            if n != "STATUS" else np.array([str(r.get(n, "")) for r in rows]) for n in _NEEDED}


def _read_chunks(source) -> tuple[Iterator[dict[str, np.ndarray]], dict[str, Any]]:
    """(chunks of the needed columns, catalog header) from a catalog path, an astropy Table or row dicts."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = path.name.lower()
        if name.endswith(".csv"):
            return _csv_chunks(path), {}
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
            return ({n: b.column(n).to_numpy(zero_copy_only=False) for n in _NEEDED}
                    for b in pf.iter_batches(batch_size=_CHUNK, columns=list(_NEEDED))), meta
        from astropy.io import fits

        with fits.open(path, memmap=not name.endswith(".gz")) as h:
            header = dict(h["FNET"].header)
        return _fits_chunks(path, not name.endswith(".gz")), header
    if hasattr(source, "colnames"):  # an astropy Table (read_catalog's result)
        return iter([{n: np.asarray(source[n]) for n in _NEEDED}]), dict(source.meta)
    rows = list(getattr(source, "rows", source))  # a Catalog, or row dicts
    return iter([_chunk_from_rows(rows)] if rows else []), dict(getattr(source, "header", {}))


def _fits_chunks(path: Path, memmap: bool) -> Iterator[dict[str, np.ndarray]]:
    from astropy.io import fits

    with fits.open(path, memmap=memmap) as h:
        data = h["FNET"].data
        n = 0 if data is None else len(data)
        for start in range(0, n, _CHUNK):
            block = data[start:start + _CHUNK]
            yield {name: np.array(block[name]) for name in _NEEDED}


def _csv_chunks(path: Path) -> Iterator[dict[str, np.ndarray]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("# "))
        rows: list[dict] = []
        for row in reader:
            rows.append({n: row[n] if n == "STATUS" else float(row[n] or "nan") if n in ("Z", "Z_ERR")
                         else int(row[n] or -1) for n in _NEEDED})
            if len(rows) >= _CHUNK:
                yield _chunk_from_rows(rows)
                rows = []
        if rows:
            yield _chunk_from_rows(rows)


def _ints(values) -> np.ndarray:
    """An integer column as int64 (TARGETIDs exceed 2**53: never through float); blanks (NaN) become -1."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    arr = np.asarray(arr, dtype=np.float64)
    return np.where(np.isfinite(arr) & (np.abs(arr) < 2.0**62), arr, -1).astype(np.int64)


def _select(chunks, summary: PriorsSummary, floor_kms: float, widen: bool):
    """Rows that get a prior: (targetid, z, sigma, zwarn) arrays in catalog order; counts in `summary`."""
    parts: list[tuple[np.ndarray, ...]] = []
    for c in chunks:
        z = np.asarray(c["Z"], dtype=np.float64)
        zerr = np.asarray(c["Z_ERR"], dtype=np.float64)
        zwarn = _ints(c["ZWARN"])
        ok = (_text(c["STATUS"]) == "ok") & np.isfinite(z) & (z > -1)
        flagged = ok & (zwarn != 0) & (((zwarn & NEVER_WIDENED) != 0) | (not widen))
        tid = _ints(c["TARGETID"])
        ids = np.where(tid >= 0, tid, sdss_targetid(*(_ints(c[k]) for k in ("PLATE", "MJD", "FIBERID"))))
        keep = ok & ~flagged & (ids >= 0)
        summary.n_rows += len(z)
        summary.failed += int((~ok).sum())
        summary.flagged += int(flagged.sum())
        summary.no_id += int((ok & ~flagged & (ids < 0)).sum())
        one_plus = 1.0 + z[keep]
        sigma = np.where(np.isfinite(zerr[keep]) & (zerr[keep] > 0), zerr[keep], one_plus * NO_ERR_KMS / C_KMS)
        sigma = np.maximum(sigma, one_plus * floor_kms / C_KMS)
        sigma = np.where(zwarn[keep] != 0, np.maximum(sigma, one_plus * WIDEN_KMS / C_KMS), sigma)
        parts.append((ids[keep], z[keep], sigma, zwarn[keep]))
    if not parts:
        return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
    return tuple(np.concatenate(p) for p in zip(*parts))


def _one_per_target(ids, z, sigma, summary: PriorsSummary) -> np.ndarray:
    """Indices to keep (catalog order): per TARGETID the smallest SIGMA, none when the rows disagree."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((sigma, ids))  # stable: equal SIGMA keeps the earlier row
    first = np.r_[True, ids[order][1:] != ids[order][:-1]]
    group = np.cumsum(first) - 1
    best = order[first]
    agree = np.abs(z[order] - z[best][group]) <= 3.0 * np.maximum(sigma[order], sigma[best][group])
    group_ok = np.minimum.reduceat(agree.astype(np.int8), np.flatnonzero(first)).astype(bool)
    sizes = np.diff(np.r_[np.flatnonzero(first), len(ids)])
    summary.duplicate += int((sizes[group_ok] - 1).sum())
    summary.conflicting += int(sizes[~group_ok].sum())
    return np.sort(best[group_ok])


def write_priors(catalog, out_path: str | Path, *, function: str = "gaussian",
                 floor_kms: float = DEFAULT_FLOOR_KMS, flagged: str = "omit") -> PriorsSummary:
    """Write redrock's priors file from an fnet-run catalog (path, astropy Table, Catalog or row dicts).

    Atomic (temporary name, renamed when complete). When no row qualifies no file is written (redrock
    cannot read an empty one) and an earlier fnet priors file at `out_path` is removed, so a stale one is
    never used with a new catalog. Returns the counts (PriorsSummary.describe() says them in a line).
    """
    if function not in FUNCTIONS:
        raise ValueError(f"priors function {function!r}: redrock knows {', '.join(FUNCTIONS)}")
    if flagged not in ("omit", "widen"):
        raise ValueError(f"flagged rows: 'omit' or 'widen', not {flagged!r}")
    if not floor_kms > 0:
        raise ValueError(f"the SIGMA floor must be a positive velocity, not {floor_kms} km/s")
    out_path = Path(out_path)
    chunks, cat_header = _read_chunks(catalog)
    summary = PriorsSummary(out_path, function)
    ids, z, sigma, zwarn = _select(chunks, summary, floor_kms, flagged == "widen")
    keep = _one_per_target(ids, z, sigma, summary)
    summary.widened = int((zwarn[keep] != 0).sum())
    summary.written = len(keep)
    if not summary.wrote_file:
        if is_fnet_priors(out_path):
            out_path.unlink()
        return summary
    from astropy.io import fits

    from .. import __version__

    width = sigma[keep] * (2.0 * TOPHAT_HALF_WIDTH_SIGMAS if function == "tophat" else 1.0)
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="TARGETID", format="K", array=ids[keep]),
        fits.Column(name="Z", format="D", array=z[keep]),
        fits.Column(name="SIGMA", format="D", array=width),
        fits.Column(name="FUNCTION", format=f"{len(function)}A", array=np.full(len(keep), function)),
        fits.Column(name="FNET_ZWARN", format="J", array=zwarn[keep].astype(np.int32)),
    ], name="PRIORS")
    cards = {"FNETVER": __version__, "PRFUNC": function, "PRFLOOR": (floor_kms, "SIGMA floor, km/s"),
             "PRFLAG": (flagged, "ZWARN != 0 rows: omit or widen"), "PRWIDEN": (WIDEN_KMS, "widened floor, km/s"),
             "PRNOERR": (NO_ERR_KMS, "SIGMA without Z_ERR, km/s"), "NCATROW": summary.n_rows,
             "NPRIOR": summary.written, "NWIDENED": summary.widened, "NFAILED": summary.failed,
             "NFLAGGED": summary.flagged, "NNOID": summary.no_id, "NDUP": summary.duplicate,
             "NCONFLCT": summary.conflicting}
    if function == "tophat":
        cards["PRTOPHAT"] = (TOPHAT_HALF_WIDTH_SIGMAS, "tophat SIGMA = full width = 2*this*sigma")
    for key in ("MODEL", "MODELVER", "MODELSHA"):
        if key in cat_header:
            cards[key] = str(cat_header[key])[:68]
    for key, value in cards.items():
        table.header[key] = value
    summary.header = {k: table.header[k] for k in cards}
    hdul = fits.HDUList([fits.PrimaryHDU(), table])
    with atomic_path(out_path) as tmp:
        if out_path.name.lower().endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as fh:
                hdul.writeto(fh)
        else:
            hdul.writeto(tmp, overwrite=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m fnet.runtime.priors CATALOG -o PRIORS.fits``: the priors file from an existing catalog."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fnet.runtime.priors", description=main.__doc__)
    parser.add_argument("catalog", help="catalog written by fnet-run (.fits, .fits.gz, .csv, .parquet)")
    parser.add_argument("-o", "--output", required=True, help="priors file (.fits or .fits.gz)")
    parser.add_argument("--function", choices=FUNCTIONS, default="gaussian")
    parser.add_argument("--flagged", choices=("omit", "widen"), default="omit")
    parser.add_argument("--floor-kms", type=float, default=DEFAULT_FLOOR_KMS)
    args = parser.parse_args(argv)
    try:
        check_priors_path(args.output, [args.catalog])
        summary = write_priors(args.catalog, args.output, function=args.function, floor_kms=args.floor_kms,
                               flagged=args.flagged)
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}")
        return 2
    print(summary.describe().replace("fnet-run: ", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
