"""Read the real BOSS spec files of the shared data folder once: vectors on the 1e-4 lattice plus pipeline class/z.

The coadd (HDU 1) and spAll row (HDU 2) are read through the runtime's FITS fast path (readers/fits_fast.py):
astropy's header and 236-column table parsing costs ~40 ms per file, this ~1 ms. Anything else falls back to astropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..runtime.errors import SpectrumReadError
from ..runtime.readers.fits_fast import table_columns
from ..runtime.readers.fits_open import open_fits_bytes

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


def _read_fast(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
    """Coadd columns and spAll scalars through the runtime's FITS fast path (no astropy header parsing)."""
    with open_fits_bytes(Path(path)) as (fileobj, layout, _):
        if len(layout.hdus) < 3:
            return None
        coadd = table_columns(fileobj, layout.hdus[1].header_loc, COADD_COLUMNS)
        meta = table_columns(fileobj, layout.hdus[2].header_loc, META_COLUMNS)
    if coadd is None or meta is None:
        raise ValueError("layout not decoded by the fast path")
    cols = {k.lower(): np.asarray(v) for k, v in coadd.items()}
    out = {}
    for k, v in meta.items():
        v = v[0]
        out[k] = v.decode("ascii", "replace").replace("\x00", " ").strip() if isinstance(v, bytes) else v.item()
    return cols, out


def _read_astropy(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
    """Same as _read_fast through astropy (slow, for layouts the block walker cannot decode)."""
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
        except (ValueError, KeyError, IndexError, TypeError, SpectrumReadError):
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
