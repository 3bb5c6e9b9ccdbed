"""Put spectra on the model grid and normalise them, a whole batch at once.

Rebinning is flux-conserving and inverse-variance weighted: every input pixel is
spread uniformly over its own width in log10(lambda), and each grid pixel gets the
ivar-weighted mean flux of the input it overlaps, with ivar_out = sum(overlap * ivar).
Masked pixels (good == False: ivar <= 0, NaN/inf, honoured mask bits) carry no weight.

Policy for grid pixels without good data:
- gaps inside the observed range (sky-line masks, bad columns) are filled by linear
  interpolation between the nearest good grid pixels, so the network sees no
  artificial dips;
- pixels outside the observed range (before the first / after the last good pixel)
  are set to the spectrum's mean level, i.e. 0 after centring;
- a grid pixel counts as "good" when at least half of its width is covered by good
  input pixels. COVERAGE is the fraction of the grid that is good.

Normalisation schemes (the model package's fnet.normalisation says which):
- "zscore_minmax": the authors' code. Unweighted z-score over good pixels, then
  min-max to [0, 1] over the whole row (missing pixels sit at the mean, z = 0).
- "ivar_unit_norm": ivar-weighted zero mean and unit weighted RMS over good pixels,
  then clipped to +-clip (cosmic rays, bad sky subtraction) when "clip" is given.

Everything is vectorised over the batch: spectra sharing one sampling (simulations, plates) are
rebinned with no Python loop at all; ragged inputs loop once per spectrum, never per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .grid import Grid
from .spectrum import Spectrum

SCHEMES = ("zscore_minmax", "ivar_unit_norm")
# A grid pixel is good when at least this fraction of its width has good input data.
MIN_PIXEL_COVER = 0.5
# Widest an input pixel may count for coverage, in typical pixel widths of its spectrum (DESI's linear
# 0.8 A pixels span 2.7x in log10 lambda from blue to red; 3 leaves room for that), and in model-grid
# pixels (no spectrograph this toolkit reads samples more coarsely than 4 grid pixels).
MAX_PIXEL_WIDTH = 3.0
MAX_GRID_PIXELS_PER_INPUT = 4.0


@dataclass
class Prepared:
    """A batch on the model grid: network input plus the quality numbers the catalog reports."""

    x: np.ndarray  # (n, npix) float32, normalised network input
    flux: np.ndarray  # (n, npix) float64, rebinned flux before normalisation (gaps not filled)
    ivar: np.ndarray  # (n, npix) float64, rebinned inverse variance (0 where no data)
    good: np.ndarray  # (n, npix) bool
    coverage: np.ndarray  # (n,) fraction of grid pixels that are good
    sn_median: np.ndarray  # (n,) median flux*sqrt(ivar) over good grid pixels (NaN if unknown)

    def row(self, i: int) -> "Prepared":
        """Spectrum i alone, as a batch of one (views, no copies)."""
        return Prepared(*(getattr(self, name)[i : i + 1] for name in ("x", "flux", "ivar", "good", "coverage",
                                                                      "sn_median")))


def _as_rows(loglam, *arrays) -> tuple[list[np.ndarray], ...]:
    """Normalise (shared 1-D loglam + 2-D arrays) or ragged sequences into lists of 1-D rows."""
    first = arrays[0]
    if isinstance(first, np.ndarray) and first.ndim == 2:
        n = first.shape[0]
        lam = np.asarray(loglam, dtype=np.float64)
        lams = [lam] * n if lam.ndim == 1 else list(lam)
        return (lams,) + tuple(list(np.asarray(a)) for a in arrays)
    return ([np.asarray(l, dtype=np.float64) for l in loglam],) + tuple(list(a) for a in arrays)


def _pixel_edges(centres: np.ndarray) -> np.ndarray:
    """Edges half way between centres; the outer edges mirror the neighbouring step."""
    if centres.size == 1:
        return np.array([centres[0] - 0.5e-4, centres[0] + 0.5e-4])
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate(([2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]))


def _row_arrays(lam, f, iv, g, lo: float, hi: float, max_width: float) -> tuple[np.ndarray, ...]:
    """Edges and per-pixel weight, weighted flux and good width for one spectrum (or a shared-grid batch)."""
    keep = (lam > lo) & (lam < hi)
    if not keep.any():  # nothing near the grid: one empty pixel keeps the bookkeeping uniform
        lam, keep = np.array([lo + 1e-3]), None
        shape = f.shape[:-1] + (1,)
        f, iv, g = np.zeros(shape), np.zeros(shape), np.zeros(shape, bool)
    else:
        lam = lam[keep]
        f, iv, g = f[..., keep], iv[..., keep], g[..., keep]
    f = np.asarray(f, dtype=np.float64)
    iv = np.asarray(iv, dtype=np.float64)
    g = np.asarray(g, dtype=bool) & np.isfinite(f) & np.isfinite(iv) & (iv > 0)
    edges = _pixel_edges(lam)
    w = np.where(g, iv, 0.0)
    wf = np.where(g, w * np.nan_to_num(f), 0.0)
    # A pixel covers at most MAX_PIXEL_WIDTH times the typical pixel width: two pixels at the ends of the
    # grid must not "cover" all of it (their flux still spreads over the gap, but COVERAGE says the truth).
    widths = np.diff(edges)
    gw = np.where(g, np.minimum(widths, min(MAX_PIXEL_WIDTH * np.median(widths), max_width)), 0.0)
    return edges, w, wf, gw


def _interp_rows(queries: np.ndarray, edges: np.ndarray, cums: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """Evaluate running sums given at shared `edges` at `queries` (clipped to the edges), for all rows at once."""
    q = np.clip(queries, edges[0], edges[-1])
    hi = np.clip(np.searchsorted(edges, q, side="right"), 1, len(edges) - 1)
    lo = hi - 1
    frac = (q - edges[lo]) / (edges[hi] - edges[lo])
    return [c[..., lo] * (1.0 - frac) + c[..., hi] * frac for c in cums]


def rebin(loglam, flux, ivar, good, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rebin a batch onto the grid; returns flux (n, npix), ivar (n, npix), covered fraction (n, npix)."""
    span = grid.loglam_step * (grid.npix + 1)
    lo, hi = grid.loglam_start - span, grid.loglam_start + 2 * span  # input far off the grid is irrelevant
    out_edges = grid.edges
    max_width = MAX_GRID_PIXELS_PER_INPUT * grid.loglam_step

    def pad0(a: np.ndarray) -> np.ndarray:  # running sums start at 0 on the first input edge
        return np.concatenate((np.zeros(a.shape[:-1] + (1,)), a), axis=-1)

    # Running sums are per spectrum, so an extreme pixel can only ever affect its own spectrum.
    shared = isinstance(flux, np.ndarray) and flux.ndim == 2 and np.ndim(loglam) == 1
    if shared:  # common sampling for the whole batch (simulations, BOSS plates): no Python loop at all
        edges, w, wf, gw = _row_arrays(np.asarray(loglam, np.float64), flux, ivar, good, lo, hi, max_width)
        cums = tuple(np.cumsum(pad0(a), axis=-1) for a in (w, wf, gw))
        at_edges = _interp_rows(out_edges, edges, cums)
    else:
        lams, fluxes, ivars, goods = _as_rows(loglam, flux, ivar, good)
        rows = []
        for k in range(len(lams)):  # one loop per spectrum, numpy inside; pixels are never looped over
            edges, w, wf, gw = _row_arrays(lams[k], np.asarray(fluxes[k]), np.asarray(ivars[k]),
                                           np.asarray(goods[k]), lo, hi, max_width)
            rows.append(_interp_rows(out_edges, edges, tuple(np.cumsum(pad0(a)) for a in (w, wf, gw))))
        at_edges = [np.stack([r[i] for r in rows]) if rows else np.zeros((0, grid.npix + 1)) for i in range(3)]
    sum_w, sum_wf, sum_gw = (np.diff(a, axis=-1) for a in at_edges)
    cover = sum_gw / grid.loglam_step

    # Round-off in the running sums can leave tiny non-zero weights where there is no data.
    total = at_edges[0][:, -1:]
    has = (sum_w > 1e-12 * np.maximum(total, 1e-300)) & (cover > 1e-6)
    out_flux = np.where(has, sum_wf / np.where(has, sum_w, 1.0), 0.0)
    out_ivar = np.where(has, sum_w, 0.0)
    return out_flux, out_ivar, np.clip(cover, 0.0, 1.0)


def _fill_gaps(flux: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate interior gaps; returns filled flux and a mask of pixels inside the observed range."""
    n, npix = flux.shape
    pos = np.arange(npix, dtype=np.float64)[None, :] + (2 * npix) * np.arange(n)[:, None]
    any_good = good.any(axis=1)
    filled = np.zeros_like(flux)
    if good.any():
        filled = np.interp(pos.ravel(), pos[good], flux[good]).reshape(n, npix)
    first = np.where(any_good, good.argmax(axis=1), npix)
    last = np.where(any_good, npix - 1 - good[:, ::-1].argmax(axis=1), -1)
    idx = np.arange(npix)[None, :]
    inside = (idx >= first[:, None]) & (idx <= last[:, None])
    return np.where(inside, filled, 0.0), inside


def _weighted_moments(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise weighted mean and weighted RMS about it (zero weights ignored)."""
    wsum = weights.sum(axis=1)
    safe = np.where(wsum > 0, wsum, 1.0)
    mean = (weights * values).sum(axis=1) / safe
    var = (weights * (values - mean[:, None]) ** 2).sum(axis=1) / safe
    return mean, np.sqrt(var)


def normalise(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, normalisation: dict) -> np.ndarray:
    """Network input from rebinned flux according to the model's normalisation dict."""
    scheme = normalisation.get("scheme")
    filled, inside = _fill_gaps(flux, good)
    if scheme == "zscore_minmax":
        mean, std = _weighted_moments(filled, good.astype(np.float64))
    elif scheme == "ivar_unit_norm":
        mean, std = _weighted_moments(filled, np.where(good, ivar, 0.0))
    else:
        raise ValueError(f"unknown normalisation scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    std = np.where(std > 0, std, 1.0)
    z = np.where(inside, (filled - mean[:, None]) / std[:, None], 0.0)
    if scheme == "zscore_minmax":
        zmin, zmax = z.min(axis=1, keepdims=True), z.max(axis=1, keepdims=True)
        rng = np.where(zmax > zmin, zmax - zmin, 1.0)
        return ((z - zmin) / rng).astype(np.float32)
    clip = normalisation.get("clip")
    if clip:
        z = np.clip(z, -float(clip), float(clip))
    return z.astype(np.float32)


def _row_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median of each row over masked-in entries (NaN for empty rows); a sort, not apply_along_axis."""
    count = mask.sum(axis=1)
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    lo = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, np.maximum(count // 2, 0)[:, None], axis=1)[:, 0]
    return np.where(count > 0, 0.5 * (lo + hi), np.nan)


def _power_of_two_scales(rows, goods) -> np.ndarray:
    """Per row, 2**k near its largest |value| over good finite pixels (1 when there is none)."""
    def peak(values, good) -> np.ndarray:
        v = np.abs(np.asarray(values, dtype=np.float64))
        return np.where(np.asarray(good, bool) & np.isfinite(v), v, 0.0).max(axis=-1, initial=0.0)

    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        peaks = peak(rows, goods)  # a batch on one sampling: one vectorised pass
    else:
        peaks = np.array([peak(r, g) for r, g in zip(rows, goods)], dtype=np.float64)
    return np.where(peaks > 0, np.ldexp(1.0, np.frexp(np.where(peaks > 0, peaks, 1.0))[1]), 1.0)


def _unit_scaled(flux, ivar, good):
    """flux and ivar divided by per-spectrum powers of two, and those scales (n,)."""
    shared = isinstance(flux, np.ndarray) and flux.ndim == 2
    f_scale, i_scale = _power_of_two_scales(flux, good), _power_of_two_scales(ivar, good)
    if shared:
        return (np.asarray(flux, np.float64) / f_scale[:, None], np.asarray(ivar, np.float64) / i_scale[:, None],
                f_scale, i_scale)
    return ([np.asarray(f, np.float64) / s for f, s in zip(flux, f_scale)],
            [np.asarray(v, np.float64) / s for v, s in zip(ivar, i_scale)], f_scale, i_scale)


def prepare_arrays(loglam, flux, ivar, good, grid: Grid, normalisation: dict,
                   ivar_known: Sequence[bool] | np.ndarray | None = None) -> Prepared:
    """Rebin, measure quality and normalise a batch given as arrays (shared or ragged loglam)."""
    # Every spectrum is rebinned and normalised in units of its own largest |flux| and ivar, rounded to
    # powers of two: results are bit-identical to unscaled arithmetic, but ivar = 1e300 or flux = 1e30
    # can no longer overflow the running sums (which gave Z = NaN with STATUS ok).
    flux, ivar, f_scale, i_scale = _unit_scaled(flux, ivar, good)
    out_flux, out_ivar, cover = rebin(loglam, flux, ivar, good, grid)
    good_grid = (cover >= MIN_PIXEL_COVER) & (out_ivar > 0)
    x = normalise(out_flux, out_ivar, good_grid, normalisation)
    out_flux, out_ivar = out_flux * f_scale[:, None], out_ivar * i_scale[:, None]
    coverage = good_grid.mean(axis=1)
    sn_median = _row_median(out_flux * np.sqrt(out_ivar), good_grid)
    if ivar_known is not None:
        sn_median = np.where(np.asarray(ivar_known, bool), sn_median, np.nan)
    return Prepared(x=x, flux=out_flux, ivar=out_ivar, good=good_grid, coverage=coverage, sn_median=sn_median)


def prepare_spectra(spectra: Sequence[Spectrum], grid: Grid, normalisation: dict) -> Prepared:
    """prepare_arrays for a list of Spectrum records from the readers."""
    return prepare_arrays([s.loglam for s in spectra], [s.flux for s in spectra], [s.ivar for s in spectra],
                          [s.good for s in spectra], grid, normalisation,
                          ivar_known=[s.ivar_known for s in spectra])
