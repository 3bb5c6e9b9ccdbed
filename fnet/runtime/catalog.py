"""The output catalog: one row per spectrum (or per unreadable file), written atomically as FITS, CSV or Parquet."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "RA": ("f8", np.nan, "deg", "right ascension"),
    "DEC": ("f8", np.nan, "deg", "declination"),
    "Z": ("f8", np.nan, "", "FNet redshift"),
    "Z_ERR": ("f8", np.nan, "", "1-sigma redshift uncertainty (NaN when the head gives none)"),
    "ZWARN": ("i4", int(ZWarn.BAD_INPUT), "", "warning bits, 0 = no warning (see header ZWB* cards)"),
    "SN_MEDIAN": ("f4", np.nan, "", "median S/N per model-grid pixel"),
    "COVERAGE": ("f4", 0.0, "", "fraction of the model grid covered by good pixels"),
    "STATUS": ("U", "failed", "", "ok or failed"),
    "MESSAGE": ("U", "", "", "why a row failed or was flagged"),
}


@dataclass
class Catalog:
    """Column-oriented rows plus header provenance; append rows, then write once."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    pdf: np.ndarray | None = None  # optional (nrow, nbins) P(z), rows aligned with `rows`
    pdf_z: np.ndarray | None = None

    def add(self, **values: Any) -> None:
        """Append one row; unknown keys are an error, missing keys take the schema's fill value."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown catalog columns: {sorted(unknown)}")
        self.rows.append({name: values.get(name, spec[1]) for name, spec in COLUMNS.items()})

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

    def to_table(self, ascii_strings: bool = False):
        """An astropy Table with units, descriptions and header metadata (FITS needs ASCII strings)."""
        from astropy.table import Table

        table = Table()
        for name, (kind, _, unit, desc) in COLUMNS.items():
            values = self.column(name)
            if ascii_strings and kind == "U":  # FITS strings are ASCII: escape, never fail, e.g. "/data/\\xc5ngstr..."
                values = np.char.encode(values, "ascii", "backslashreplace")
            table[name] = values
            table[name].description = desc
            if unit:
                table[name].unit = unit
        table.meta.update(self.header)
        return table

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same folder, then rename); format from the extension."""
        path = Path(path)
        suffix = check_output_path(path)
        writers = {".fits": self._write_fits, ".fit": self._write_fits, ".fits.gz": self._write_fits,
                   ".csv": self._write_csv, ".parquet": self._write_parquet}
        with atomic_path(path) as tmp:
            writers[suffix](tmp, gz=suffix == ".fits.gz")
        return path

    def _write_fits(self, path: Path, gz: bool = False) -> None:
        from astropy.io import fits

        table = self.to_table(ascii_strings=True)
        table.meta.clear()  # header cards are set below, ASCII-escaped
        hdu = fits.BinTableHDU(table, name="FNET")
        for key, value in self.header.items():
            if isinstance(value, str):
                value = value.encode("ascii", "backslashreplace").decode("ascii")
            hdu.header[key[:8]] = value
        for bit in ZWarn:
            hdu.header[f"ZWB{bit.bit_length() - 1}"] = (bit.name, f"ZWARN bit {bit.bit_length() - 1}")
        hdus = [fits.PrimaryHDU(), hdu]
        if self.pdf is not None:
            pdf_hdu = fits.ImageHDU(self.pdf.astype(np.float32), name="ZPDF")
            pdf_hdu.header["COMMENT"] = "P(z) per catalog row (rows of failed spectra are zero)"
            hdus.append(pdf_hdu)
            hdus.append(fits.ImageHDU(self.pdf_z.astype(np.float64), name="ZPDF_Z"))
        if gz:
            import gzip
            import io

            buf = io.BytesIO()
            fits.HDUList(hdus).writeto(buf)
            with gzip.open(path, "wb") as fh:
                fh.write(buf.getvalue())
        else:
            fits.HDUList(hdus).writeto(path, overwrite=True)

    def _write_csv(self, path: Path, gz: bool = False) -> None:
        with open(path, "w", newline="") as fh:
            for key, value in self.header.items():
                fh.write(f"# {key} = {value}\n")
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in self.rows:
                writer.writerow(row)

    def _write_parquet(self, path: Path, gz: bool = False) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: Parquet output needs pyarrow (pip install 'fnet-qso[parquet]')") from None
        table = pa.table({name: self.column(name) for name in COLUMNS})
        table = table.replace_schema_metadata({str(k): str(v) for k, v in self.header.items()})
        pq.write_table(table, path)


OUTPUT_SUFFIXES = (".fits", ".fit", ".fits.gz", ".csv", ".parquet")


def check_output_path(path: str | Path) -> str:
    """The catalog format suffix of `path`; ValueError naming the path when it cannot be written."""
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


def read_catalog(path: str | Path):
    """Read a catalog written by fnet-run back into an astropy Table (FITS, CSV or Parquet)."""
    from astropy.table import Table

    path = Path(path)
    if path.suffix.lower() == ".csv":
        table = Table.read(path, format="ascii.csv", comment="#")
        with open(path) as fh:  # provenance lines "# KEY = value" written by _write_csv
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
