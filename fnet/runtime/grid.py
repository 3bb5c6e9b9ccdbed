"""The model's log-wavelength grid; its numbers always come from the model package, never from code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Pixels uniform in log10(lambda): loglam[i] = loglam_start + loglam_step * i, i = 0..npix-1."""

    loglam_start: float
    loglam_step: float
    npix: int

    @property
    def loglam(self) -> np.ndarray:
        """Pixel centres, log10(Angstrom)."""
        return self.loglam_start + self.loglam_step * np.arange(self.npix)

    @property
    def edges(self) -> np.ndarray:
        """npix + 1 pixel edges, log10(Angstrom)."""
        return self.loglam_start + self.loglam_step * (np.arange(self.npix + 1) - 0.5)

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """First and last pixel centre in Angstrom."""
        return float(10 ** self.loglam_start), float(10 ** (self.loglam_start + self.loglam_step * (self.npix - 1)))

    def pixel_of(self, wavelength: float) -> float:
        """Fractional pixel index of an observed wavelength in Angstrom."""
        return (np.log10(wavelength) - self.loglam_start) / self.loglam_step

    def to_dict(self) -> dict:
        """JSON-ready form used in the model package metadata."""
        return {"loglam_start": self.loglam_start, "loglam_step": self.loglam_step, "npix": self.npix}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        """Inverse of to_dict."""
        return cls(float(d["loglam_start"]), float(d["loglam_step"]), int(d["npix"]))
