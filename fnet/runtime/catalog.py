"""The output catalog: one row per spectrum (or per unreadable file), streamed atomically into FITS, CSV or Parquet."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np

from .atomic import atomic_path
from .zwarn import ZWarn

# name -> (numpy dtype, fill value for missing, unit, description). The single source of the schema.
COLUMNS: dict[str, tuple[str, Any, str, str]] = {
    "SOURCE": ("U", "", "", "input file"),
    "ROW": ("i4", -1, "", "spectrum index within the file (-1: the file could not be read)"),
    "FORMAT": ("U", "", "", "detected file format"),
    "PLATE": ("i4", -1, "", "SDSS plate"),
    "MJD": ("i4", -1, "d", "MJD of observation"),
    "FIBERID": ("i4", -1, "", "SDSS fiber"),
    "TARGETID": ("i8", -1, "", "DESI target id"),
    "OBSID": ("i8", -1, "", "LAMOST observation id (-1: none in the header)"),
    "PLANID": ("U", "", "", "LAMOST plan id"),
    "SPID": ("i4", -1, "", "LAMOST spectrograph"),
    "DESIG": ("U", "", "", "LAMOST designation (LAMOST JHHMMSS.ss+DDMMSS.s)"),
    "RA": ("f8", np.nan, "deg", "right ascension"),
    "DEC": ("f8", np.nan, "deg", "declination"),
    "Z": ("f8", np.nan, "", "FNet redshift"),
    "Z_ERR": ("f8", np.nan, "", "1-sigma redshift uncertainty (NaN when the head gives none)"),
    "ZWARN": ("i4", int(ZWarn.BAD_INPUT), "", "warning bits, 0 = no warning (see header ZWB* cards)"),
    # Class columns: only in catalogs of models with a class head (header CLASSES), see catalog_columns.
    "SPECTYPE": ("U", "", "", "QSO, STAR or GALAXY: the class head's most probable class (redrock's word); empty "
                              "when the model has no class head"),
    "P_QSO": ("f4", np.nan, "", "class head probability of QSO"),
    "P_STAR": ("f4", np.nan, "", "class head probability of STAR"),
    "P_GALAXY": ("f4", np.nan, "", "class head probability of GALAXY"),
    "SN_MEDIAN": ("f4", np.nan, "", "median S/N per model-grid pixel"),
    "COVERAGE": ("f4", 0.0, "", "fraction of the model grid covered by good pixels"),
    "STATUS": ("U", "failed", "", "ok or failed"),
    "MESSAGE": ("U", "", "", "why a row failed or was flagged"),
}


#: The columns a model with a class head adds: SPECTYPE and P_<CLASS> for each class it declares.
CLASS_COLUMNS = ("SPECTYPE", "P_QSO", "P_STAR", "P_GALAXY")


def class_columns(classes: Sequence[str]) -> dict[str, str]:
    """Class name -> its probability column P_<CLASS>; ValueError when a class has no column in the schema."""
    out = {c: f"P_{c}" for c in classes}
    missing = sorted(c for c, name in out.items() if name not in CLASS_COLUMNS)
    if missing:
        known = ", ".join(n[2:] for n in CLASS_COLUMNS[1:])
        raise ValueError(f"class(es) {missing} have no catalog column (the catalog knows {known})")
    return out


def header_classes(header: dict[str, Any]) -> list[str]:
    """The classes a catalog header's CLASSES card names ("QSO,STAR,GALAXY"; none without the card)."""
    return [c for c in str(header.get("CLASSES", "")).split(",") if c.strip()]


def catalog_columns(classes: Sequence[str] = ()) -> list[str]:
    """The columns of a catalog, in schema order: every ordinary column, plus SPECTYPE and P_<CLASS> for `classes`.

    A model without a class head gives a catalog without class columns, as before class heads existed.
    """
    wanted = {"SPECTYPE", *class_columns(classes).values()} if classes else set()
    return [name for name in COLUMNS if name not in CLASS_COLUMNS or name in wanted]


#: Longest MESSAGE kept: one file with thousands of HDUs must not make the column that wide for every row.
MAX_MESSAGE = 500
_F4_MAX = float(np.finfo(np.float32).max)
_INT_RANGE = {"i4": (-(2**31), 2**31 - 1), "i8": (-(2**63), 2**63 - 1)}


def printable(value: Any) -> str:
    """Text safe for every writer: undecodable bytes of file names (surrogate escapes) become \\xNN."""
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def cap_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """The message, cut to `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    tail = f" ... [{len(text) - limit} more characters]"
    return text[: limit - len(tail)] + tail


def make_row(values: dict[str, Any]) -> dict[str, Any]:
    """One schema-typed row: unknown keys are an error; a value of the wrong type becomes the fill value plus a note.

    This is the last line of defence before the writers: whatever a reader let through, the row is
    writable as FITS, CSV and Parquet.
    """
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown catalog columns: {sorted(unknown)}")
    row: dict[str, Any] = {}
    notes: list[str] = []
    for name, (kind, fill, _, _) in COLUMNS.items():
        value = values.get(name, fill)
        if kind == "U":
            row[name] = printable(value)
            continue
        try:
            if kind in _INT_RANGE:
                if isinstance(value, (float, np.floating)) and not float(value).is_integer():
                    raise ValueError
                number = int(value)
                lo, hi = _INT_RANGE[kind]
                if not lo <= number <= hi or isinstance(value, (bool, np.bool_)):
                    raise ValueError
            else:
                number = float(value)
                if kind == "f4" and abs(number) > _F4_MAX:  # beyond float32: store its infinity, not a crash
                    number = float("inf") if number > 0 else float("-inf")
        except (TypeError, ValueError, OverflowError):
            notes.append(f"{name} {printable(repr(value))[:40]} is not a valid {kind} value: left blank")
            number = fill
        row[name] = number
    extra = "; ".join(notes)
    message = cap_message(row["MESSAGE"], MAX_MESSAGE - len(extra) - 2) if extra else row["MESSAGE"]
    row["MESSAGE"] = cap_message("; ".join(filter(None, [message, extra])))
    return row


def failed_row(message: str, **values: Any) -> dict[str, Any]:
    """A failed row: STATUS failed, ZWARN BAD_INPUT, Z NaN, and the message saying why (the one place it is built)."""
    return make_row({**values, "STATUS": "failed", "ZWARN": int(ZWarn.BAD_INPUT), "MESSAGE": message})


@dataclass
class Catalog:
    """Rows held in memory plus header provenance (the Python API; fnet-run streams rows through a RunJournal)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    pdf: np.ndarray | None = None  # optional (nrow, nbins) P(z), rows aligned with `rows`
    pdf_z: np.ndarray | None = None

    def add(self, **values: Any) -> None:
        """Append one row (see make_row): missing keys take the schema's fill value."""
        self.rows.append(make_row(values))

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array with the schema's dtype."""
        kind = COLUMNS[name][0]
        values = [r[name] for r in self.rows]
        if kind == "U":
            return np.array([str(v) for v in values], dtype="U") if values else np.array([], dtype="U1")
        return np.array(values, dtype=kind)

    @property
    def n_failed(self) -> int:
        """Rows whose STATUS is not ok."""
        return sum(r["STATUS"] != "ok" for r in self.rows)

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same folder, then rename); format from the extension."""
        pdf = None
        if self.pdf is not None:
            pdf = PdfSource(self.pdf_z, lambda: iter([self.pdf]))
        return write_catalog(path, lambda: iter(self.rows), self.header, pdf)


@dataclass
class PdfSource:
    """P(z) rows for a catalog: bin centres and a factory of (k, nbins) float32 chunks in row order."""

    centres: np.ndarray
    chunks: Callable[[], Iterator[np.ndarray]]


OUTPUT_SUFFIXES = (".fits", ".fit", ".fits.gz", ".csv", ".parquet")
_CHUNK_ROWS = 8192  # rows encoded at once: bounds the writers' memory whatever the catalog's length


def output_suffix(path: str | Path) -> str:
    """The catalog format suffix of `path`; ValueError naming the path when it is not a catalog format."""
    path = Path(path)
    name = path.name.lower()
    suffix = ".fits.gz" if name.endswith(".fits.gz") else path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: unknown catalog format {suffix!r}; use .fits, .fits.gz, .csv or .parquet")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(f"{path}: Parquet output needs pyarrow (pip install 'fnet-qso[parquet]')") from None
    return suffix


def check_output_path(path: str | Path) -> str:
    """Refuse, before any work, an output that cannot be written or must not be replaced; returns its suffix.

    Raises ValueError naming the path: unknown format, an existing folder, a parent that is a file, a
    folder where no file can be created (read-only, immutable, /proc, /sys), or an existing file that is
    not an fnet catalog (fnet-run replaces only its own catalogs, never a spectrum or anything else).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a catalog file name such as {path / 'catalog.fits'}")
    suffix = output_suffix(path)
    if os.path.lexists(path) and not is_fnet_catalog(path):
        raise ValueError(f"{path}: exists and is not an fnet catalog; refusing to overwrite it "
                         "(choose another output name or remove the file)")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists():
        if existing == existing.parent:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{path}: {existing} is a file, so no folder can be made there")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{path}: cannot write in {parent}: {exc.strerror or exc}") from None
    return suffix


def is_fnet_catalog(path: str | Path) -> bool:
    """True when `path` holds a catalog written by fnet-run (FITS HDU FNET, CSV/Parquet with FNETVER)."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(2 * 2880 + 80 * 200)
    except OSError:
        return False
    if head.startswith(b"\x1f\x8b"):
        import gzip

        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(6 * 2880)
        except (OSError, EOFError):
            return False
    if head.startswith(b"SIMPLE"):
        return b"EXTNAME = 'FNET" in head and b"FNETVER" in head
    if head.startswith(b"# FNETVER"):
        return True
    if head.startswith(b"PAR1"):
        try:
            import pyarrow.parquet as pq

            return b"FNETVER" in (pq.read_schema(path).metadata or {})
        except Exception:
            return False
    return False


def write_catalog(path: str | Path, rows: Callable[[], Iterable[dict]], header: dict[str, Any],
                  pdf: PdfSource | None = None, columns: Sequence[str] | None = None) -> Path:
    """Stream rows (a factory: FITS reads them twice) into a FITS, FITS.gz, CSV or Parquet catalog, atomically.

    `columns` (schema order) defaults to catalog_columns() of the header's CLASSES card: the header says
    which model made the catalog, so a model without a class head writes no class columns.
    """
    path = Path(path)
    suffix = output_suffix(path)
    columns = catalog_columns(header_classes(header)) if columns is None else list(columns)
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown:
        raise KeyError(f"unknown catalog columns: {unknown}")
    with atomic_path(path) as tmp:
        if suffix in (".fits", ".fit"):
            with open(tmp, "wb") as fh:
                _write_fits(fh, rows, header, pdf, columns)
        elif suffix == ".fits.gz":
            import gzip

            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as fh:
                _write_fits(fh, rows, header, pdf, columns)
        elif suffix == ".csv":
            _write_csv(tmp, rows(), header, columns)
        else:
            _write_parquet(tmp, rows(), header, columns)
    return path


def _fits_text(value: Any) -> bytes:
    """FITS strings are ASCII: escape, never fail, e.g. "/data/\\xc5ngstr..."."""
    return printable(value).encode("ascii", "backslashreplace")


_FITS_CODES = {"i4": ("J", ">i4"), "i8": ("K", ">i8"), "f4": ("E", ">f4"), "f8": ("D", ">f8")}


def _pad(fh: BinaryIO, nbytes: int) -> None:
    """Zero padding to the next 2880-byte block after `nbytes` of data."""
    fh.write(b"\0" * (-nbytes % 2880))


def _write_fits(fh: BinaryIO, rows: Callable[[], Iterable[dict]], header: dict[str, Any],
                pdf: PdfSource | None, names: list[str]) -> None:
    """Primary HDU, the FNET table of columns `names` (written in chunks), then ZPDF / ZPDF_Z when P(z) is kept."""
    from astropy.io import fits

    text_cols = [n for n in names if COLUMNS[n][0] == "U"]
    is_text = [n in text_cols for n in names]
    widths = {n: 1 for n in text_cols}
    nrows = 0
    for row in rows():  # first pass: row count and string widths, so the header can be written first
        nrows += 1
        for name in text_cols:
            widths[name] = max(widths[name], len(_fits_text(row[name])))
    columns = []
    formats = []
    for name in names:
        kind, _, unit, _ = COLUMNS[name]
        code, dtype = (f"{widths[name]}A", f"S{widths[name]}") if kind == "U" else _FITS_CODES[kind]
        columns.append(fits.Column(name=name, format=code, unit=unit or None))
        formats.append((name, dtype))
    table = fits.BinTableHDU.from_columns(columns, nrows=0, name="FNET")
    hdr = table.header
    hdr["NAXIS2"] = nrows
    for i, name in enumerate(names, start=1):
        hdr.comments[f"TTYPE{i}"] = COLUMNS[name][3][:47]
    for key, value in header.items():
        hdr[key[:8]] = _fits_text(value).decode("ascii") if isinstance(value, str) else value
    for bit in ZWarn:
        hdr[f"ZWB{bit.bit_length() - 1}"] = (bit.name, f"ZWARN bit {bit.bit_length() - 1}")
    primary = fits.PrimaryHDU().header
    primary["EXTEND"] = True
    fh.write(primary.tostring().encode("ascii"))
    fh.write(hdr.tostring().encode("ascii"))
    dtype = np.dtype(formats)
    written = 0
    chunk: list[tuple] = []

    def emit() -> None:
        nonlocal written
        block = np.array(chunk, dtype=dtype)
        fh.write(block.tobytes())
        written += block.nbytes
        chunk.clear()

    for row in rows():
        chunk.append(tuple(_fits_text(row[n]) if text else row[n] for n, text in zip(names, is_text)))
        if len(chunk) >= _CHUNK_ROWS:
            emit()
    if chunk:
        emit()
    if written != nrows * dtype.itemsize:
        raise RuntimeError(f"catalog rows changed while being written ({written} bytes for {nrows} rows)")
    _pad(fh, written)
    if pdf is None:
        return
    nbins = len(pdf.centres)
    image = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", nbins),
                         ("NAXIS2", nrows), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", "ZPDF")])
    image["COMMENT"] = "P(z) per catalog row (rows of failed spectra are zero)"
    fh.write(image.tostring().encode("ascii"))
    written = 0
    for block in pdf.chunks():
        data = np.asarray(block, dtype=">f4").reshape(-1, nbins)
        fh.write(data.tobytes())
        written += data.nbytes
    if written != nrows * nbins * 4:
        raise RuntimeError(f"P(z) rows ({written // (4 * nbins)}) do not match catalog rows ({nrows})")
    _pad(fh, written)
    centres = fits.ImageHDU(np.asarray(pdf.centres, dtype=np.float64), name="ZPDF_Z")
    fh.write(centres.header.tostring().encode("ascii"))
    data = np.asarray(pdf.centres, dtype=">f8").tobytes()
    fh.write(data)
    _pad(fh, len(data))


def _write_csv(path: Path, rows: Iterable[dict], header: dict[str, Any], names: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        for key, value in header.items():
            fh.write(f"# {key} = {printable(value)}\n")
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _write_parquet(path: Path, rows: Iterable[dict], header: dict[str, Any], names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"U": pa.string(), "i4": pa.int32(), "i8": pa.int64(), "f4": pa.float32(), "f8": pa.float64()}
    schema = pa.schema([(name, types[COLUMNS[name][0]]) for name in names],
                       metadata={str(k): printable(v) for k, v in header.items()})
    with pq.ParquetWriter(path, schema) as writer:
        chunk: list[dict] = []

        def emit() -> None:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            chunk.clear()

        for row in rows:
            chunk.append(row)
            if len(chunk) >= _CHUNK_ROWS:
                emit()
        if chunk:
            emit()


def read_catalog(path: str | Path):
    """Read a catalog written by fnet-run back into an astropy Table (FITS, CSV or Parquet)."""
    from astropy.table import Table

    path = Path(path)
    if path.suffix.lower() == ".csv":
        # text columns stay text: an all-empty DESIG or MESSAGE would otherwise be read as masked integers
        text = {name: str for name, spec in COLUMNS.items() if spec[0] == "U"}
        table = Table.read(path, format="ascii.csv", comment="#", converters=text)
        for name in table.colnames:  # an empty CSV field is an empty string here, not a masked value
            if getattr(table[name], "mask", None) is not None and table[name].dtype.kind in "US":
                table[name] = table[name].filled("")
        with open(path, encoding="utf-8") as fh:  # provenance lines "# KEY = value" written by _write_csv
            for line in fh:
                if not line.startswith("# "):
                    break
                key, _, value = line[2:].rstrip("\n").partition(" = ")
                table.meta[key] = value
        return table
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # astropy's parquet reader needs pandas; pyarrow alone suffices

        table = pq.read_table(path)
        out = Table({name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names})
        out.meta.update({k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()})
        return out
    return Table.read(path, hdu="FNET", mask_invalid=False)  # NaN stays NaN, as written
