"""The FITS fast path: binary-table columns decoded straight from the file's bytes, astropy as the fallback.

astropy builds a Column object per column when a table header is parsed or its data touched (about
100 ms for the 230-column SPALL/SPECOBJ row of a spec file); reading the 80-character cards here takes
well under a millisecond. Measured on the 80 sdss/dr16 files: 323 files/s this way, fitsio 61/s, plain
astropy 16/s. Every reader and the simulator use this one module; RawTable decodes the fixed-width
TFORM codes (L B I J K E D C M A, skipping X/P/Q) and returns None for anything else, and then
read_columns asks astropy.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import numpy as np
from astropy.io import fits

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


def scalar(value: Any) -> Any:
    """Plain Python value (int, float, str) from a FITS table cell or header value."""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, np.generic):
        return value.item()
    return value


def table_columns(fileobj: Any, header_loc: int, wanted: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Wanted columns (UPPER-case keys) of the binary table whose header starts at byte `header_loc` of an open
    binary file; None when it is not a binary table or its layout is not one RawTable decodes."""
    table = RawTable(fileobj, header_loc)
    return table.columns(wanted) if table.is_bintable else None
