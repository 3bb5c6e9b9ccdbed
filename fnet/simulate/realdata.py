"""Read the real BOSS spec files of the shared data folder once: vectors on the 1e-4 lattice plus pipeline class/z.

The coadd (HDU 1) and spAll row (HDU 2) are read straight from the FITS blocks: astropy's header and 236-column
table parsing costs ~40 ms per file, this ~1 ms. Anything unexpected falls back to astropy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

# folders (relative to the data dir) searched for BOSS/eBOSS spec-PLATE-MJD-FIBER.fits files
SPEC_DIRS = ("sdss/dr16", "sdss/formats")
BOSS_MIN_RED_END = 10000.0  # Å: the BOSS spectrographs reach ~10400 Å, SDSS-I/II stop at ~9200 Å
COADD_COLUMNS = ("flux", "loglam", "ivar", "and_mask", "sky")
META_COLUMNS = ("CLASS", "Z", "ZWARNING")


@dataclass
class RealSpectrum:
    """One real BOSS coadd: lattice indices k (loglam = 1e-4 k) and its columns, plus spAll class and redshift."""

    path: Path
    k: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    sky: np.ndarray
    spec_class: str
    z: float
    zwarning: int


_BLOCK = 2880
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])")
_SIZE = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}
_DTYPE = {"I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "B": "u1"}


def _raw_hdus(path: Path, count: int) -> tuple[bytes, list[tuple[dict[str, str], int]]]:
    """File bytes and (cards, data offset) of its first `count` HDUs, walking the 2880-byte FITS blocks."""
    raw = Path(path).read_bytes()
    hdus, pos = [], 0
    while len(hdus) < count and pos < len(raw):
        cards: dict[str, str] = {}
        while True:
            block = raw[pos : pos + _BLOCK].decode("ascii", "replace")
            if len(block) < _BLOCK:
                raise ValueError("truncated header")
            pos += _BLOCK
            done = False
            for i in range(0, _BLOCK, 80):
                card = block[i : i + 80]
                key = card[:8].strip()
                if key == "END":
                    done = True
                    break
                if card[8:10] == "= ":
                    text = card[10:]
                    value = text.split("'")[1] if text.lstrip().startswith("'") else text.split("/")[0]
                    cards.setdefault(key, value.strip())
            if done:
                break
        naxis = int(cards.get("NAXIS", 0))
        size = 0
        if naxis:
            size = int(cards.get("PCOUNT", 0))
            n = 1
            for i in range(1, naxis + 1):
                n *= int(cards[f"NAXIS{i}"])
            size = abs(int(cards["BITPIX"])) // 8 * int(cards.get("GCOUNT", 1)) * (n + size)
        hdus.append((cards, pos))
        pos += -(-size // _BLOCK) * _BLOCK
    return raw, hdus


def _table(raw: bytes, cards: dict[str, str], offset: int, columns: tuple[str, ...], rows: int | None = None):
    """Requested fixed-width columns of a binary table (case-insensitive names) as a dict of numpy arrays."""
    if cards.get("XTENSION", "").strip() != "BINTABLE":
        raise ValueError("not a binary table")
    names, formats, offsets, pos = [], [], [], 0
    wanted = {c.upper() for c in columns}
    for i in range(1, int(cards["TFIELDS"]) + 1):
        match = _TFORM.match(cards[f"TFORM{i}"])
        if match is None:
            raise ValueError("unsupported TFORM")
        rep, code = int(match.group(1) or 1), match.group(2)
        name = cards[f"TTYPE{i}"].strip().upper()
        if name in wanted and (code in _DTYPE or code == "A"):
            names.append(name)
            formats.append(f"S{rep}" if code == "A" else (_DTYPE[code] if rep == 1 else (_DTYPE[code], rep)))
            offsets.append(pos)
        pos += (rep + 7) // 8 if code == "X" else rep * _SIZE[code]
    nrow = int(cards["NAXIS2"]) if rows is None else min(rows, int(cards["NAXIS2"]))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(cards["NAXIS1"])})
    data = np.frombuffer(raw, dtype=dtype, count=nrow, offset=offset)
    return {name: data[name] for name in names}


def _read_fast(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
    """Coadd columns and spAll scalars straight from the FITS blocks."""
    raw, hdus = _raw_hdus(path, 3)
    if len(hdus) < 3:
        return None
    coadd = _table(raw, *hdus[1], COADD_COLUMNS)
    meta = _table(raw, *hdus[2], META_COLUMNS, rows=1)
    cols = {k.lower(): np.asarray(v) for k, v in coadd.items()}
    out = {}
    for k, v in meta.items():
        v = v[0]
        out[k] = v.decode("ascii", "replace").replace("\x00", " ").strip() if isinstance(v, bytes) else v.item()
    return cols, out


def _read_astropy(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
    """Same as _read_fast through astropy (slow, for layouts the block walker rejects)."""
    with fits.open(path, memmap=False) as hdul:
        if not isinstance(hdul[1], fits.BinTableHDU) or not isinstance(hdul[2], fits.BinTableHDU):
            return None
        data, meta = hdul[1].data, hdul[2].data
        names = {c.lower() for c in data.columns.names}
        cols = {c: np.asarray(data[c]) for c in COADD_COLUMNS if c in names}
        mnames = {c.upper() for c in meta.columns.names}
        out = {c: meta[c][0] for c in META_COLUMNS if c in mnames}
        out = {k: (str(v).replace("\x00", " ").strip() if isinstance(v, str) else v) for k, v in out.items()}
        return cols, out


def read_boss_spec(path: Path) -> RealSpectrum | None:
    """A BOSS spec file as a RealSpectrum; None for other layouts (SDSS-I/II, trimmed, unreadable)."""
    try:
        try:
            got = _read_fast(path)
        except (ValueError, KeyError, IndexError, TypeError):
            got = _read_astropy(path)
        if got is None:
            return None
        cols, meta = got
        if not set(COADD_COLUMNS) <= set(cols) or not {"CLASS", "Z"} <= set(meta):
            return None
        loglam = np.asarray(cols["loglam"], dtype=np.float64)
        if len(loglam) < 3000 or 10 ** loglam[-1] < BOSS_MIN_RED_END:
            return None
        k = np.round(loglam * 1e4).astype(np.int64)
        if np.any(np.diff(k) != 1):
            return None
        return RealSpectrum(
            path=Path(path),
            k=k,
            flux=np.asarray(cols["flux"], dtype=np.float64),
            ivar=np.asarray(cols["ivar"], dtype=np.float64),
            and_mask=np.asarray(cols["and_mask"]).astype(np.int32),
            sky=np.asarray(cols["sky"], dtype=np.float64),
            spec_class=str(meta["CLASS"]).strip().upper(),
            z=float(meta["Z"]),
            zwarning=int(meta.get("ZWARNING", 0)),
        )
    except (OSError, KeyError, IndexError, ValueError, TypeError):
        return None


_CACHE: dict[Path, list[RealSpectrum]] = {}


def boss_spectra(data_dir: Path) -> list[RealSpectrum]:
    """All BOSS spec files under data_dir/sdss/{dr16,formats}, read once per process (sorted by path)."""
    key = Path(data_dir).resolve()
    if key not in _CACHE:
        out = []
        for sub in SPEC_DIRS:
            for path in sorted((key / sub).glob("spec-*.fits")):
                spec = read_boss_spec(path)
                if spec is not None:
                    out.append(spec)
        _CACHE[key] = out
    return _CACHE[key]
