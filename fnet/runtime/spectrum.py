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
    meta: identifiers and positions with upper-case keys (PLATE, MJD, FIBERID, TARGETID, RA, DEC, ...).
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
