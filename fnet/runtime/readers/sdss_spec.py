"""SDSS-I/II, BOSS and eBOSS ``spec-PLATE-MJD-FIBER.fits`` files: one coadded spectrum per file.

Layout: HDU 1 is the coadd table (named COADD, or unnamed in the DR16 picca copies), columns in lower or
UPPER case (flux, loglam, ivar, and_mask, or_mask, wdisp, sky, model); HDU 2 is a one-row metadata table
(SPALL for BOSS/eBOSS, SPECOBJ for SDSS-I/II legacy files, or unnamed). SDSS wavelengths are vacuum
(primary header VACUUM = T). Also holds the helpers the other SDSS readers share.
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..errors import SpectrumReadError
from ..masks import sdss_good_pixels
from ..spectrum import Spectrum
from .fits_open import hdu_names

FORMAT = "sdss-spec"

_COADD_COLUMNS = ("flux", "loglam", "ivar")
_META_NAMES = ("SPALL", "SPECOBJ", "")
_META_COLUMNS = ("PLATE", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "RA", "DEC", "CLASS", "Z")


# Binary-table TFORM codes -> (numpy type, bytes per element); heap (P/Q) and bit (X) columns are skipped.
_TFORM = {"L": ("S1", 1), "B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4), "K": (">i8", 8),
          "E": (">f4", 4), "D": (">f8", 8), "C": (">c8", 8), "M": (">c16", 16), "A": ("S", 1)}
_TFORM_SKIP = {"P": 8, "Q": 16}
_TFORM_RE = re.compile(r"^\s*(\d*)\s*([A-Z])")
_LAYOUT_KEYS = (b"XTENSION", b"EXTNAME", b"NAXIS", b"PCOUNT", b"TFIELDS", b"TTYPE", b"TFORM", b"TSCAL", b"TZERO")
_BLOCK = 2880


class RawTable:
    """A binary table's layout parsed straight from its header bytes; decodes only the columns asked for.

    astropy builds a Column object per column when a table header is parsed or its data touched (about
    100 ms for the 230-column SPALL/SPECOBJ row of a spec file); reading the 80-character cards here
    takes well under a millisecond.
    """

    _cache: "weakref.WeakKeyDictionary[Any, RawTable | None]" = weakref.WeakKeyDictionary()

    def __init__(self, fileobj: Any, header_loc: int):
        self.fileobj = fileobj
        self.cards: dict[str, Any] = {}
        fileobj.seek(header_loc)
        loc = header_loc
        while True:
            block = fileobj.read(_BLOCK)
            if isinstance(block, np.ndarray):
                block = block.tobytes()
            if len(block) < _BLOCK:
                raise ValueError(f"header at byte {header_loc} runs past the end of the file")
            loc += _BLOCK
            if self._parse(block):
                break
        self.data_loc = loc
        self.row_bytes = int(self.cards.get("NAXIS1", 0))
        self.nrows = int(self.cards.get("NAXIS2", 0))
        size = self.row_bytes * self.nrows + int(self.cards.get("PCOUNT", 0))
        self.next_loc = self.data_loc + -(-size // _BLOCK) * _BLOCK
        self.name = str(self.cards.get("EXTNAME", "")).strip().upper()
        self.names = [str(self.cards.get(f"TTYPE{i}", f"COL{i}")) for i in range(1, int(self.cards.get("TFIELDS", 0)) + 1)]
        self.is_bintable = str(self.cards.get("XTENSION", "")).strip() == "BINTABLE"

    def _parse(self, block: bytes) -> bool:
        """Collect layout keywords of one header block; True once the END card is seen."""
        for start in range(0, _BLOCK, 80):
            if block.startswith(b"END ", start) or block[start : start + 80].rstrip() == b"END":
                return True
            if not block.startswith(_LAYOUT_KEYS, start) or block[start + 8 : start + 10] != b"= ":
                continue
            key = block[start : start + 8].decode("ascii").strip()
            text = block[start + 10 : start + 80].decode("ascii", "replace").strip()
            if text.startswith("'"):
                end = text.find("'", 1)
                while end != -1 and text[end : end + 2] == "''":
                    end = text.find("'", end + 2)
                self.cards[key] = text[1:end].replace("''", "'").rstrip()
            else:
                number = text.split("/", 1)[0].strip()
                self.cards[key] = float(number.replace("D", "E")) if any(c in number for c in ".EeDd") else int(number)
        return False

    @classmethod
    def of(cls, hdu: Any) -> "RawTable | None":
        """The RawTable of a file-backed binary-table HDU (cached), or None (then astropy does the work)."""
        try:
            return cls._cache[hdu]
        except KeyError:
            pass
        table = None
        info = hdu.fileinfo() if isinstance(hdu, fits.BinTableHDU) else None
        if info and info.get("file") is not None:
            try:
                table = cls(info["file"], info["hdrLoc"])
            except ValueError:
                table = None  # a header we do not parse: astropy's reader decides
        cls._cache[hdu] = table
        return table

    def columns(self, wanted: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        """Wanted columns (case-insensitive, UPPER-case keys) that exist; None when the layout is not decodable."""
        want = {w.upper() for w in wanted}
        fields: dict[str, tuple[np.dtype, int, int]] = {}
        offset = 0
        for index, name in enumerate(self.names, start=1):
            match = _TFORM_RE.match(str(self.cards.get(f"TFORM{index}", "")))
            if not match:
                return None
            repeat, code = int(match.group(1) or 1), match.group(2)
            if code in _TFORM:
                npt, size = _TFORM[code]
                dtype = np.dtype(f"S{repeat}") if code == "A" else np.dtype((npt, (repeat,)) if repeat != 1 else npt)
                width = repeat * size
            elif code == "X" or code in _TFORM_SKIP:
                dtype, width = None, (repeat + 7) // 8 if code == "X" else _TFORM_SKIP[code]
            else:
                return None
            if name.upper() in want and name.upper() not in fields:
                if dtype is None:
                    return None
                fields[name.upper()] = (dtype, offset, index)
            offset += width
        if offset != self.row_bytes:
            return None
        self.fileobj.seek(self.data_loc)
        raw = self.fileobj.read(self.row_bytes * self.nrows)
        if isinstance(raw, np.ndarray):
            raw = raw.tobytes()
        if len(raw) != self.row_bytes * self.nrows:
            raise ValueError(f"table data truncated: {len(raw)} of {self.row_bytes * self.nrows} bytes")
        names = list(fields)
        layout = np.dtype({"names": names, "formats": [fields[n][0] for n in names],
                           "offsets": [fields[n][1] for n in names], "itemsize": max(self.row_bytes, 1)})
        rows = np.frombuffer(raw, dtype=layout, count=self.nrows)
        return {name: self._decode(rows[name], fields[name][2]) for name in names}

    def _decode(self, values: np.ndarray, index: int) -> np.ndarray:
        """Native-endian values with FITS logical, unsigned and TSCAL/TZERO conventions applied."""
        if str(self.cards.get(f"TFORM{index}", "")).strip().endswith("L"):
            return values == b"T"  # FITS logicals are the characters T / F
        if values.dtype.kind in "iufc":
            values = values.astype(values.dtype.newbyteorder("="))
        scale, zero = self.cards.get(f"TSCAL{index}", 1), self.cards.get(f"TZERO{index}", 0)
        nbytes = values.dtype.itemsize
        if values.dtype.kind == "i" and scale == 1 and zero == 1 << (8 * nbytes - 1):
            return values.view(f"u{nbytes}") ^ np.array(zero, dtype=f"u{nbytes}")  # FITS unsigned integers
        if (scale, zero) != (1, 0) and values.dtype.kind in "iuf":
            return values * scale + zero
        return values


def columns_lower(hdu: Any) -> dict[str, str]:
    """Map lower-case column name -> name as written, for a binary-table HDU (empty for anything else)."""
    if not isinstance(hdu, fits.BinTableHDU):
        return {}
    table = RawTable.of(hdu)
    names = table.names if table is not None else hdu.columns.names
    return {name.lower(): name for name in names}


def read_columns(hdu: fits.BinTableHDU, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The wanted columns (case-insensitive; UPPER-case keys) of a binary table; absent ones are left out."""
    table = RawTable.of(hdu)
    columns = table.columns(wanted) if table is not None else None
    if columns is not None:
        return columns
    data = hdu.data  # in-memory tables, or layouts RawTable does not decode
    names = {n.upper(): n for n in hdu.columns.names}
    return {w.upper(): np.asarray(data[names[w.upper()]]) for w in wanted if w.upper() in names}


def snap_loglam(loglam: np.ndarray, step: float = 1e-4, tol: float = 1e-6) -> np.ndarray:
    """Float64 log10 wavelengths, put exactly on the ``step`` dex grid when every pixel lies within ``tol`` of it."""
    ll = np.asarray(loglam, dtype=np.float64)
    inv = round(1.0 / step)
    k = np.rint(ll * inv)
    # BOSS stores loglam as float32 (errors up to 2.4e-7 dex); the pipeline grid is exact multiples of 1e-4,
    # so snapping restores the true values and makes spec, spPlate and spSpec pixels bit-identical.
    if ll.size and np.all(np.isfinite(ll)) and np.max(np.abs(ll * inv - k)) <= tol * inv:
        return k / inv
    return ll


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Vacuum wavelength (A) from air wavelength (A), Morton (1991) as in idlutils airtovac."""
    sigma2 = (1e4 / np.asarray(wave_air, dtype=np.float64)) ** 2
    factor = 1.0 + 5.792105e-2 / (238.0185 - sigma2) + 1.67917e-3 / (57.362 - sigma2)
    return np.where(wave_air >= 2000.0, wave_air * factor, wave_air)


def vacuum_loglam(loglam: np.ndarray, header: fits.Header, notes: list[str]) -> np.ndarray:
    """loglam unchanged when the header says vacuum (or is silent, as SDSS is always vacuum); converted if air."""
    if header.get("VACUUM", True) is False:
        notes.append("header VACUUM = F: air wavelengths converted to vacuum")
        return np.log10(air_to_vacuum(10.0**loglam))
    return loglam


def scalar(value: Any) -> Any:
    """Plain Python value (int, float, str) from a FITS table cell or header value."""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_coadd_table(hdu: Any) -> bool:
    """flux, loglam and ivar columns, and not a per-exposure table (those have 'mask', the coadd and_mask)."""
    cols = columns_lower(hdu)
    return all(c in cols for c in _COADD_COLUMNS) and ("and_mask" in cols or "mask" not in cols)


def _coadd_hdu(hdul: fits.HDUList) -> fits.BinTableHDU | None:
    """The coadd table: the HDU named COADD, else HDU 1 when it is a coadd-like table; None when there is none.

    Full spec files also hold one table per exposure and camera with the same flux/loglam/ivar columns
    (named like B1-00123456-...): those are never taken for the coadd, whatever their position.
    Raises SpectrumReadError when the choice is ambiguous (several HDUs named COADD).
    """
    names = hdu_names(hdul)
    named = [i for i, name in enumerate(names) if name == "COADD"]
    if len(named) > 1:
        raise SpectrumReadError(hdul.filename() or "<in-memory FITS>",
                                f"ambiguous spec file: {len(named)} HDUs are named COADD (HDUs {named})")
    if named:
        hdu = hdul[named[0]]
        return hdu if all(c in columns_lower(hdu) for c in _COADD_COLUMNS) else None
    if len(names) > 1 and names[1] == "":
        hdu = hdul[1]
        return hdu if _is_coadd_table(hdu) else None
    return None


def _meta_row(hdul: fits.HDUList, coadd: fits.BinTableHDU) -> dict[str, Any]:
    """UPPER-case name -> first-row value of the metadata table (SPALL, SPECOBJ or unnamed HDU after the coadd)."""
    coadd_table = RawTable.of(coadd)
    columns = None
    if coadd_table is not None and coadd is hdul[1]:
        # Parse HDU 2 ourselves: astropy's header parse of its ~500 cards alone costs ~5 ms.
        try:
            table = RawTable(coadd_table.fileobj, coadd_table.next_loc)
            columns = table.columns(_META_COLUMNS) if table.is_bintable else {}
            name, names = table.name, table.names
        except ValueError:
            columns = None  # no HDU 2, or a cut-off one: let astropy look (and report truncation)
    if columns is None:
        try:
            hdu = hdul[2]
        except IndexError:
            return {}
        name, names = hdu.name.upper(), list(columns_lower(hdu).values())
        columns = read_columns(hdu, _META_COLUMNS) if isinstance(hdu, fits.BinTableHDU) else {}
    if name not in _META_NAMES or not ({"PLATE", "MJD", "FIBERID"} & {n.upper() for n in names}) or not columns:
        return {}
    return {key: scalar(values[0]) for key, values in columns.items() if len(values)}


def matches(hdul: fits.HDUList) -> bool:
    """True for a spec file: a coadd table with flux, loglam and ivar columns."""
    return _coadd_hdu(hdul) is not None


def _meta(hdul: fits.HDUList, coadd: fits.BinTableHDU) -> dict[str, Any]:
    """PLATE, MJD, FIBERID, RA, DEC, PIPELINE_CLASS, PIPELINE_Z from the metadata table, else the primary header."""
    row = _meta_row(hdul, coadd)
    header = hdul[0].header

    def first(table_keys: tuple[str, ...], header_keys: tuple[str, ...]) -> Any:
        for key in table_keys:
            if key in row:
                return row[key]
        for key in header_keys:
            if key in header:
                return scalar(header[key])
        return None

    # Header RA/DEC are the telescope boresight, never the object: only PLUG_RA/PLUG_DEC may stand in.
    # The SPECOBJ column PLATEID is a 64-bit id string, not the plate number: read the column PLATE.
    meta = {
        "PLATE": first(("PLATE",), ("PLATEID",)),
        "MJD": first(("MJD",), ("MJD",)),
        "FIBERID": first(("FIBERID",), ("FIBERID",)),
        "RA": first(("PLUG_RA", "RA"), ("PLUG_RA",)),
        "DEC": first(("PLUG_DEC", "DEC"), ("PLUG_DEC",)),
        "PIPELINE_CLASS": first(("CLASS",), ()),
        "PIPELINE_Z": first(("Z",), ()),
    }
    return {key: value for key, value in meta.items() if value is not None}


def read(hdul: fits.HDUList, path: str | Path) -> list[Spectrum]:
    """The coadded spectrum of a spec file (one per row when the table holds spectra as vector rows)."""
    coadd = _coadd_hdu(hdul)
    data = read_columns(coadd, ("FLUX", "LOGLAM", "IVAR", "AND_MASK"))
    flux_all = np.asarray(data["FLUX"], dtype=np.float64)
    if flux_all.ndim == 2 and flux_all.shape[0] == 1:
        data = {key: np.asarray(value)[0] for key, value in data.items()}  # one spectrum stored as one vector row
        flux_all = flux_all[0]
    meta = _meta(hdul, coadd)
    if flux_all.ndim == 1:
        return [_spectrum(path, 0, data, hdul[0].header, meta, [])]
    if flux_all.ndim != 2:
        raise SpectrumReadError(str(path), f"coadd FLUX column has shape {flux_all.shape}: not a spectrum")
    # A table of vector rows: each row is one spectrum (written by other tools, never by the SDSS pipeline).
    n = flux_all.shape[0]
    note = f"coadd table holds {n} spectra as vector rows; identifiers come from the file's metadata row"
    rows = []
    for r in range(n):
        row = {key: (np.asarray(v)[r] if np.ndim(v) == 2 else v) for key, v in data.items()}
        rows.append(_spectrum(path, r, row, hdul[0].header, dict(meta), [note]))
    return rows


def _spectrum(path: str | Path, row: int, data: dict[str, np.ndarray], header: fits.Header, meta: dict,
              notes: list[str]) -> Spectrum:
    """One Spectrum from 1-D FLUX/LOGLAM/IVAR(/AND_MASK) arrays."""
    shapes = {key: np.shape(value) for key, value in data.items()}
    if len(set(shapes.values())) != 1:
        raise SpectrumReadError(str(path), f"coadd columns disagree in length: {shapes}")
    loglam = vacuum_loglam(snap_loglam(data["LOGLAM"]), header, notes)
    flux = np.asarray(data["FLUX"], dtype=np.float64)
    ivar = np.asarray(data["IVAR"], dtype=np.float64)
    and_mask = data.get("AND_MASK")
    if and_mask is None:
        notes.append("no and_mask column: only ivar and finiteness define good pixels")
    good = sdss_good_pixels(flux, ivar, and_mask)
    return Spectrum(source=str(path), row=row, loglam=loglam, flux=flux, ivar=ivar, good=good,
                    format=FORMAT, meta=meta, notes=notes)
