"""What a report figure shows, computed with numpy: the spectrum re-read, smoothed and decimated; line positions; P(z) peaks.

- Spectrum files are found from the catalog's SOURCE (see :func:`resolve_source`) and re-read with the runtime's
  readers; the row's spectrum is the one whose index equals the catalog's ROW.
- Smoothing: inverse-variance-weighted boxcar of `width` pixels over good pixels, f_s = Σ w f / Σ w (w = ivar);
  the noise band is ±1/sqrt(mean ivar) over the same window, the per-pixel noise. A window with no good pixel
  is a gap. The smoothed curve is then sampled at ≤ MAX_POINTS evenly spaced pixels.
- Second P(z) peak: the highest local maximum of P(z) farther than SECOND_PEAK_DV_KMS from Z whose mass within
  ±SECOND_PEAK_DV_KMS/2 of it is at least SECOND_PEAK_MIN_MASS of the total.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.constants import C_KMS
from ..runtime.zwarn import PEAK_WINDOW_KMS

#: Quasar emission lines drawn at λ_rest (1 + z): (label, vacuum rest wavelength in Å).
EMISSION_LINES: tuple[tuple[str, float], ...] = (
    ("Lyα", 1215.67), ("NV", 1240.81), ("SiIV", 1397.61), ("CIV", 1549.06), ("CIII]", 1908.73),
    ("MgII", 2798.75), ("Hβ", 4862.68), ("[OIII]", 5008.24), ("Hα", 6564.61),
)
#: Points per plotted spectrum: bounds the page at ~25 kB a figure whatever the spectrograph.
MAX_POINTS = 1000
#: A second peak lies farther than this from Z (the window ZWARN MULTIPLE_PEAKS counts as "the peak").
SECOND_PEAK_DV_KMS = PEAK_WINDOW_KMS
#: ... and holds at least this fraction of P(z) within ±SECOND_PEAK_DV_KMS / 2 of its maximum.
SECOND_PEAK_MIN_MASS = 0.05


@dataclass
class Curve:
    """A decimated spectrum for plotting: wavelength (Å), smoothed flux, per-pixel noise (NaN in gaps)."""

    wavelength: np.ndarray
    flux: np.ndarray
    noise: np.ndarray
    noise_known: bool = True


def resolve_source(source: str, catalog_dir: Path, root: Path | None = None) -> tuple[Path | None, list[Path]]:
    """The spectrum file a catalog's SOURCE names now, and every path tried (for the message when none exists).

    With a root (--spectra ROOT) the path is looked for under it first, dropping leading folders one by one
    (a/b/spec.fits: ROOT/a/b/spec.fits, ROOT/b/spec.fits, ROOT/spec.fits), so a moved tree or absolute paths from
    another machine resolve; then SOURCE itself (relative to the working folder) and relative to the catalog's folder.
    """
    path = Path(source)
    tried: list[Path] = []
    if root is not None:
        parts = path.parts[1:] if path.is_absolute() else path.parts
        parts = tuple(p for p in parts if p not in ("..", "."))
        tried += [root.joinpath(*parts[i:]) for i in range(len(parts))]
    tried.append(path)
    if not path.is_absolute():
        tried.append(catalog_dir / path)
    for candidate in tried:
        if candidate.is_file():
            return candidate, tried
    return None, list(dict.fromkeys(tried))


class SpectrumFiles:
    """Re-reads spectra files for report rows, keeping the last few files read (an spPlate serves many rows)."""

    def __init__(self, catalog_dir: Path, root: Path | None = None, keep: int = 4):
        self.catalog_dir = catalog_dir
        self.root = root
        self.keep = keep
        self._cache: OrderedDict[str, tuple[Path | None, list, str]] = OrderedDict()

    def spectrum(self, source: str, row: int):
        """(Spectrum or None, path read or None, problem in words or '')."""
        if row < 0:
            return None, None, "the file could not be read when the catalog was made (ROW = -1)"
        if source not in self._cache:
            self._cache[source] = self._read(source)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        path, spectra, problem = self._cache[source]
        if problem:
            return None, path, problem
        for spec in spectra:
            if spec.row == row:
                return spec, path, ""
        return None, path, f"{path}: has no spectrum with ROW = {row} (it holds {len(spectra)})"

    def _read(self, source: str) -> tuple[Path | None, list, str]:
        from ..runtime.readers import read_spectra

        path, tried = resolve_source(source, self.catalog_dir, self.root)
        if path is None:
            shown = ", ".join(str(p) for p in tried[:6]) + (" ..." if len(tried) > 6 else "")
            hint = "" if self.root else " (give --spectra ROOT when the files have moved)"
            return None, [], f"{source}: spectrum file not found; tried {shown}{hint}"
        try:
            return path, read_spectra(path), ""
        except Exception as exc:  # a file's problem stays on its card
            return path, [], f"{path}: cannot be read again: {exc}"


def smooth(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance-weighted boxcar over `width` pixels: (smoothed flux, 1/sqrt(mean ivar)); NaN in gaps."""
    w = np.where(good & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0), ivar, 0.0).astype(np.float64)
    f = np.where(w > 0, flux, 0.0).astype(np.float64)
    width = max(int(width), 1)
    kernel = np.ones(width)
    sw = np.convolve(w, kernel, mode="same")
    swf = np.convolve(w * f, kernel, mode="same")
    count = np.convolve(np.ones_like(w), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        smoothed = np.where(sw > 0, swf / sw, np.nan)
        noise = np.where(sw > 0, 1.0 / np.sqrt(sw / count), np.nan)
    return smoothed, noise


def spectrum_curve(spectrum, width: int = 5, max_points: int = MAX_POINTS) -> Curve:
    """The plotted form of a Spectrum: smoothed, with its noise, sampled at ≤ max_points pixels."""
    flux, noise = smooth(np.asarray(spectrum.flux), np.asarray(spectrum.ivar), np.asarray(spectrum.good), width)
    wave = np.asarray(spectrum.wavelength, dtype=np.float64)
    n = len(wave)
    pick = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(np.int64))
    return Curve(wave[pick], flux[pick], noise[pick], bool(getattr(spectrum, "ivar_known", True)))


def lines_in_range(z: float, lo: float, hi: float) -> list[tuple[str, float]]:
    """Emission lines (label, observed Å) that fall within [lo, hi] at redshift z."""
    if not np.isfinite(z) or z <= -1:
        return []
    return [(name, rest * (1.0 + z)) for name, rest in EMISSION_LINES if lo <= rest * (1.0 + z) <= hi]


def second_peak(pdf: np.ndarray, centres: np.ndarray, z: float) -> tuple[float, float] | None:
    """(z of the second P(z) peak, its mass fraction) or None (criteria: SECOND_PEAK_DV_KMS, SECOND_PEAK_MIN_MASS)."""
    p = np.asarray(pdf, dtype=np.float64)
    total = p.sum()
    if not np.isfinite(z) or not total > 0 or len(p) < 3:
        return None
    dv = C_KMS * (centres - z) / (1.0 + z)
    padded = np.concatenate(([-np.inf], p, [-np.inf]))
    peaks = np.flatnonzero((p > padded[:-2]) & (p >= padded[2:]) & (np.abs(dv) > SECOND_PEAK_DV_KMS))
    if not len(peaks):
        return None
    half = SECOND_PEAK_DV_KMS / 2 / C_KMS * (1.0 + centres[peaks])  # ±Δv/2 around each peak, in z
    cumulative = np.concatenate(([0.0], np.cumsum(p)))
    lo = np.searchsorted(centres, centres[peaks] - half, side="left")
    hi = np.searchsorted(centres, centres[peaks] + half, side="right")
    mass = (cumulative[hi] - cumulative[lo]) / total
    ok = mass >= SECOND_PEAK_MIN_MASS
    if not ok.any():
        return None
    k = np.flatnonzero(ok)[np.argmax(p[peaks[ok]])]
    return float(centres[peaks[k]]), float(mass[k])


def mass_away(pdf: np.ndarray, centres: np.ndarray, z: float) -> float:
    """Fraction of P(z) farther than PEAK_WINDOW_KMS from z (what ZWARN MULTIPLE_PEAKS judges)."""
    from ..runtime.zwarn import secondary_mass

    if not np.isfinite(z):
        return float("nan")
    return float(secondary_mass(np.asarray(pdf, dtype=np.float64)[None, :], centres, np.array([z]))[0])
