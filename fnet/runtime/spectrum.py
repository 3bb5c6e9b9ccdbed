"""The plain spectrum record every reader returns; the algorithm never sees the file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Spectrum:
    """One observed spectrum on its native wavelength sampling.

    loglam: log10 of the vacuum wavelength in Angstrom, strictly increasing.
    flux, ivar: same length as loglam; flux in the file's units (1e-17 erg/s/cm2/A for SDSS/DESI).
    good: True where the pixel may be used (ivar > 0, finite, not masked by an honoured bit).
    meta: identifiers and positions with upper-case keys (PLATE, MJD, FIBERID, TARGETID, OBSID, DESIG, RA,
        DEC, ...; META_TYPES are the catalog's columns).
    ivar_known: False when the file carries no inverse variance (e.g. a trimmed spPlate); ivar is then
        1 on good pixels so weighting is uniform, and S/N is reported as unknown.
    notes: reader remarks that end up in the catalog message (e.g. "no ivar HDU: uniform weights").
    """

    source: str
    row: int
    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    good: np.ndarray
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    ivar_known: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.loglam)
        for name in ("flux", "ivar", "good"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.source}[{self.row}]: {name} has {len(getattr(self, name))} pixels, loglam has {n}")

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelength in Angstrom."""
        return 10.0 ** self.loglam


#: Identifier and position keys the catalog stores typed: key -> (kind, lowest, highest valid value; for text
#: the longest length). Readers may put anything a file holds into meta; clean_meta makes these keys safe before
#: anything is written.
META_TYPES: dict[str, tuple[type, float, float]] = {
    "PLATE": (int, 0, 2**31 - 1),
    "MJD": (int, 0, 2**31 - 1),
    "FIBERID": (int, 0, 2**31 - 1),
    "TARGETID": (int, -(2**63), 2**63 - 1),
    "OBSID": (int, 0, 2**63 - 1),
    "PLANID": (str, 0, 68),  # 68: the longest string a FITS header card holds
    "SPID": (int, 0, 2**31 - 1),
    "DESIG": (str, 0, 68),
    "RA": (float, 0.0, 360.0),
    "DEC": (float, -90.0, 90.0),
}


def typed_value(key: str, value: Any) -> tuple[Any, str | None]:
    """A META_TYPES value as a plain int or float, or (None, why it is unusable)."""
    kind, lo, hi = META_TYPES[key]
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", "replace")
    if kind is str:
        return _text_value(key, value, int(hi))
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return None, f"{key} {_shown(value)} is not a number"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None, f"{key} {_shown(value)} is not a number"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return None, f"{key} is {value}"
        if kind is int:
            if value != np.floor(value):
                return None, f"{key} {value} is not a whole number"
            if not lo <= value <= hi:  # compare as float first: int(1e300) would be a huge Python int
                return None, f"{key} {value:g} is outside {lo}..{hi}"
            value = int(value)
    value = int(value) if kind is int else float(value)
    if not lo <= value <= hi:
        return None, f"{key} {value} is outside {lo}..{hi}"
    return value, None


def _text_value(key: str, value: Any, longest: int) -> tuple[str | None, str | None]:
    """A text identifier, stripped; a whole number is taken as its digits (a plan id written as a number)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = str(int(value))
    if not isinstance(value, str):
        return None, f"{key} {_shown(value)} is not text"
    text = value.strip()
    if len(text) > longest or not text.isprintable():
        return None, f"{key} {_shown(text)} is not an identifier (over {longest} characters or unprintable)"
    return text, None


def _shown(value: Any) -> str:
    """A short printable form of an unusable value."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def clean_meta(meta: dict[str, Any]) -> list[str]:
    """Coerce the typed identifier keys in place; unusable ones are removed. Returns a note per removed key."""
    notes = []
    for key in META_TYPES:
        if key in meta and meta[key] is not None:
            value, problem = typed_value(key, meta[key])
            if problem:
                del meta[key]
                notes.append(f"{problem}: left blank")
            else:
                meta[key] = value
    return notes
