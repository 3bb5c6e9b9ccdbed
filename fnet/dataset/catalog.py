"""Read a DR12Q/DR16Q-style quasar catalog: identifiers, the redshift label, row filters, visual inspection."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DatasetBuildError


def row_key(plate: np.ndarray, mjd: np.ndarray, fiber: np.ndarray) -> np.ndarray:
    """One int64 per (PLATE, MJD, FIBERID): plate and MJD have at most 5 digits, fibers at most 4."""
    return (plate.astype(np.int64) * 100000 + mjd.astype(np.int64)) * 10000 + fiber.astype(np.int64)


def _table_hdu(hdul, path: Path, need: Sequence[str]):
    """The first binary table HDU holding all the `need` columns (case-insensitive)."""
    from astropy.io import fits

    seen = []
    for hdu in hdul:
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            names = {n.upper() for n in hdu.columns.names}
            if all(n in names for n in need):
                return hdu
            seen.append(f"{hdu.name or '(unnamed)'}: {', '.join(hdu.columns.names[:12])}")
    found = "; ".join(seen) if seen else "no table HDU"
    raise DatasetBuildError(path, f"no table with columns {', '.join(need)} (found {found})")


def _column(hdu, name: str) -> np.ndarray:
    """A table column by case-insensitive name, as a native-endian numpy array."""
    lookup = {n.upper(): n for n in hdu.columns.names}
    data = np.asarray(hdu.data[lookup[name.upper()]])
    return data.astype(data.dtype.newbyteorder("=")) if data.dtype.byteorder not in ("=", "|") else data


def read_catalog(path: Path, z_column: str, filters: Any, limit: int | None) -> dict[str, Any]:
    """Identifiers, labels and selection masks of a catalog FITS table (only the columns needed are read)."""
    from astropy.io import fits

    if not path.is_file():
        raise DatasetBuildError(path, "catalog file does not exist")
    try:
        hdul = fits.open(path, memmap=True)
    except (OSError, ValueError) as exc:
        raise DatasetBuildError(path, f"cannot open catalog as FITS: {exc}") from exc
    with hdul:
        hdu = _table_hdu(hdul, path, ("PLATE", "MJD", "FIBERID"))
        names = {n.upper() for n in hdu.columns.names}
        n = len(hdu.data) if hdu.data is not None else 0
        stop = n if limit is None else min(n, int(limit))

        def col(name: str) -> np.ndarray:
            return _column(hdu, name)[:stop]

        plate, mjd, fiber = (col(c).astype(np.int64) for c in ("PLATE", "MJD", "FIBERID"))
        for cname, values, top in (("PLATE", plate, 100000), ("MJD", mjd, 100000), ("FIBERID", fiber, 10000)):
            bad = (values < 0) | (values >= top)
            if bad.any():
                i = int(np.argmax(bad))
                raise DatasetBuildError(path, f"row {i}: {cname}={values[i]} outside 0..{top - 1}")

        # Redshift label: auto prefers the visual-inspection redshift row by row.
        fallback = None
        if z_column == "auto":
            if "Z_VI" in names:
                resolved = "Z_VI"
                z = col("Z_VI").astype(np.float64)
                if "Z" in names:
                    fallback = "Z"
                    use_fb = ~(np.isfinite(z) & (z > 0))
                    z = np.where(use_fb, col("Z").astype(np.float64), z)
                else:
                    use_fb = np.zeros(stop, bool)
            elif "Z" in names:
                resolved, use_fb = "Z", np.zeros(stop, bool)
                z = col("Z").astype(np.float64)
            else:
                raise DatasetBuildError(path, f"no redshift column: looked for Z_VI and Z among {sorted(names)}")
        else:
            resolved, use_fb = z_column.upper(), np.zeros(stop, bool)
            if resolved not in names:
                raise DatasetBuildError(path, f"z column {z_column!r} not in catalog columns {sorted(names)}")
            z = col(resolved).astype(np.float64)
        if z.ndim != 1:
            raise DatasetBuildError(path, f"z column {resolved} is not scalar per row (shape {z.shape})")

        # Row filters: {column: allowed values}; "auto" applies IS_QSO_FINAL == 1 only where it exists.
        if filters == "auto":
            filters = {"IS_QSO_FINAL": [1]} if "IS_QSO_FINAL" in names else {}
        filter_fail = np.full(stop, "", dtype=object)  # detail text of the first filter a row fails
        for fname, allowed in (filters or {}).items():
            if fname.upper() not in names:
                raise DatasetBuildError(path, f"filter column {fname!r} not in catalog columns {sorted(names)}")
            values = col(fname)
            ok = np.isin(values, np.asarray(list(allowed)))
            filter_fail[(~ok) & (filter_fail == "")] = f"{fname.upper()} not in {list(allowed)}"

        # Visual inspection, for the paper split's test set (DR16Q: Z_VI > 0, SOURCE_Z == VI, or CLASS_PERSON).
        if "Z_VI" in names:
            zvi = col("Z_VI").astype(np.float64)
            vi, vi_rule = np.isfinite(zvi) & (zvi > 0), "Z_VI > 0"
        elif "SOURCE_Z" in names:
            vi, vi_rule = np.char.strip(np.char.upper(col("SOURCE_Z").astype("U"))) == "VI", "SOURCE_Z == VI"
        elif "CLASS_PERSON" in names:
            vi, vi_rule = col("CLASS_PERSON").astype(np.int64) > 0, "CLASS_PERSON > 0"
        else:
            vi, vi_rule = np.ones(stop, bool), "no visual-inspection column: every row counts"

    return {"n_rows": n, "n_used": stop, "plate": plate, "mjd": mjd, "fiber": fiber, "z": z,
            "z_column": resolved, "z_fallback": fallback, "z_fallback_rows": int(use_fb.sum()),
            "filters": {k.upper(): list(v) for k, v in (filters or {}).items()},
            "filter_fail": filter_fail, "vi": vi, "vi_rule": vi_rule}


def read_keys(path: Path) -> np.ndarray:
    """Row keys of a second catalog (DR12Q for the paper split)."""
    from astropy.io import fits

    if not path.is_file():
        raise DatasetBuildError(path, "DR12Q catalog file does not exist")
    try:
        with fits.open(path, memmap=True) as hdul:
            hdu = _table_hdu(hdul, path, ("PLATE", "MJD", "FIBERID"))
            return row_key(*(_column(hdu, c) for c in ("PLATE", "MJD", "FIBERID")))
    except (OSError, ValueError) as exc:
        raise DatasetBuildError(path, f"cannot read DR12Q catalog: {exc}") from exc
