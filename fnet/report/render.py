"""Inline SVG figures written by hand with numpy (no plotting library): the spectrum panel and the P(z) panel.

Compactness: data paths use integer coordinates in tenths of a viewBox unit, written as relative moves
("l9-132"), so a 1000-point curve is ~7 kB. Styles live in the page's CSS (classes f, nb, l1, l2, pz, ax).
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from .analysis import Curve, lines_in_range

SPEC_W, SPEC_H = 1000, 300
SPEC_BOX = (64, 36, 990, 270)  # x0, y0, x1, y1 of the plot area
PDF_W, PDF_H = 480, 170
PDF_BOX = (44, 10, 470, 140)
PDF_MAX_POINTS = 1000


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering [lo, hi], about `target` of them."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return []
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True in a boolean array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def path_data(xs: np.ndarray, ys: np.ndarray) -> str:
    """SVG path data in tenths of a unit (draw inside scale(.1)): one subpath per run of finite points."""
    xi = np.round(np.asarray(xs, dtype=np.float64) * 10)
    yi = np.round(np.asarray(ys, dtype=np.float64) * 10)
    finite = np.isfinite(xi) & np.isfinite(yi)
    parts = []
    for a, b in _segments(finite):
        x, y = xi[a:b].astype(np.int64), yi[a:b].astype(np.int64)
        dx, dy = np.diff(x), np.diff(y)
        rel = " ".join(f"{u} {v}" for u, v in zip(dx.tolist(), dy.tolist()))
        parts.append(f"M{x[0]} {y[0]}" + (f"l{rel}" if rel else "h0"))
    return "".join(parts).replace(" -", "-")


def band_data(xs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> str:
    """Closed SVG polygons (tenths of a unit) between two curves, one per run of finite points."""
    xs, lo, hi = (np.asarray(a, dtype=np.float64) for a in (xs, lo, hi))
    finite = np.isfinite(xs) & np.isfinite(lo) & np.isfinite(hi)
    parts = []
    for a, b in _segments(finite):
        x = np.concatenate((xs[a:b], xs[a:b][::-1]))
        y = np.concatenate((hi[a:b], lo[a:b][::-1]))
        parts.append(path_data(x, y) + "z")
    return "".join(parts)


def _scale(values: np.ndarray, lo: float, hi: float, a: float, b: float) -> np.ndarray:
    """Map data [lo, hi] linearly to [a, b] (b < a for a y axis)."""
    return a + (np.asarray(values, dtype=np.float64) - lo) * (b - a) / (hi - lo)


def _axes(box: tuple[int, int, int, int], xticks: list[tuple[float, str]], yticks: list[tuple[float, str]],
          xlabel: str) -> str:
    """Frame, tick marks and labels (positions already in viewBox units)."""
    x0, y0, x1, y1 = box
    out = [f'<rect class="ax" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"/>']
    for x, label in xticks:
        out.append(f'<path class="ax" d="M{x:.1f} {y1}v5"/><text x="{x:.1f}" y="{y1 + 17}" text-anchor="middle">'
                   f'{escape(label)}</text>')
    for y, label in yticks:
        out.append(f'<path class="ax" d="M{x0} {y:.1f}h-4"/><text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{escape(label)}</text>')
    out.append(f'<text x="{x0 - 6}" y="{y1 + 17}" text-anchor="end" class="lab">{escape(xlabel)}</text>')
    return "".join(out)


def _fmt(value: float) -> str:
    return f"{value:g}"


def spectrum_svg(curve: Curve, z: float, z2: float | None = None, label: str = "") -> str:
    """The spectrum: smoothed flux, ±noise band, emission lines at z (red) and at the second peak z2 (blue, dashed)."""
    x0, y0, x1, y1 = SPEC_BOX
    wave = curve.wavelength
    lo_w, hi_w = float(wave[0]), float(wave[-1])
    finite = np.isfinite(curve.flux)
    head = (f'<svg class="spec" viewBox="0 0 {SPEC_W} {SPEC_H}" role="img" '
            f'aria-label="spectrum {escape(label, quote=True)}">')
    if not finite.any() or hi_w <= lo_w:
        return (head + f'<rect class="ax" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"/>'
                f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle">no good pixels to plot</text>'
                "</svg>")
    f = curve.flux[finite]
    lo_f, hi_f = np.percentile(f, [1, 99])
    lo_f, hi_f = min(float(lo_f), 0.0), float(hi_f)
    span = hi_f - lo_f if hi_f > lo_f else max(abs(hi_f), 1.0)
    lo_f, hi_f = lo_f - 0.06 * span, hi_f + 0.12 * span
    xs = _scale(wave, lo_w, hi_w, x0, x1)

    def ymap(v: np.ndarray) -> np.ndarray:
        return _scale(np.clip(v, lo_f, hi_f), lo_f, hi_f, y1, y0)

    body = []
    if curve.noise_known and np.isfinite(curve.noise).any():
        body.append(f'<path class="nb" d="{band_data(xs, ymap(curve.flux - curve.noise), ymap(curve.flux + curve.noise))}"/>')
    body.append(f'<path class="f" d="{path_data(xs, ymap(curve.flux))}"/>')
    marks = []
    for cls, zz, top in (("l1", z, True), ("l2", z2, False)):
        if zz is None:
            continue
        for i, (name, obs) in enumerate(lines_in_range(zz, lo_w, hi_w)):
            x = float(_scale(obs, lo_w, hi_w, x0, x1))
            ty = y0 - 4 - 11 * (i % 3) if top else y1 - 5 - 11 * (i % 3)
            marks.append(f'<path class="{cls}" d="M{x:.1f} {y0}V{y1}"/>'
                         f'<text class="{cls}" x="{x:.1f}" y="{ty}" text-anchor="middle">{escape(name)}</text>')
    xt = [(float(_scale(v, lo_w, hi_w, x0, x1)), _fmt(v)) for v in nice_ticks(lo_w, hi_w, 8)]
    yt = [(float(_scale(v, lo_f, hi_f, y1, y0)), _fmt(v)) for v in nice_ticks(lo_f, hi_f, 4)]
    return (head + _axes(SPEC_BOX, xt, yt, "λ (Å)") + f'<g transform="scale(.1)">{"".join(body)}</g>'
            + "".join(marks) + "</svg>")


def pdf_svg(pdf: np.ndarray, centres: np.ndarray, z: float, z2: float | None = None) -> str:
    """P(z) over the model's redshift range, with Z (red) and the second peak (blue, dashed) marked."""
    x0, y0, x1, y1 = PDF_BOX
    p = np.asarray(pdf, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    if len(p) > PDF_MAX_POINTS:  # keep narrow peaks: the largest value of each group of bins
        k = math.ceil(len(p) / PDF_MAX_POINTS)
        n = len(p) // k * k
        p = np.concatenate((p[:n].reshape(-1, k).max(axis=1), p[n:].max(keepdims=True) if n < len(p) else []))
        c = np.concatenate((c[:n].reshape(-1, k).mean(axis=1), c[n:].mean(keepdims=True) if n < len(c) else []))
    top = float(np.nanmax(p)) if np.isfinite(p).any() and np.nanmax(p) > 0 else 1.0
    lo_z, hi_z = float(c[0]), float(c[-1])
    xs = _scale(c, lo_z, hi_z, x0, x1)
    ys = _scale(np.nan_to_num(p), 0.0, top * 1.05, y1, y0)
    area = path_data(np.concatenate(([xs[0]], xs, [xs[-1]])), np.concatenate(([y1], ys, [y1]))) + "z"
    marks = []
    for cls, zz in (("l1", z), ("l2", z2)):
        if zz is not None and np.isfinite(zz) and lo_z <= zz <= hi_z:
            marks.append(f'<path class="{cls}" d="M{float(_scale(zz, lo_z, hi_z, x0, x1)):.1f} {y0}V{y1}"/>')
    xt = [(float(_scale(v, lo_z, hi_z, x0, x1)), _fmt(v)) for v in nice_ticks(lo_z, hi_z, 7)]
    yt = [(float(_scale(v, 0.0, top * 1.05, y1, y0)), f"{v:.2g}") for v in nice_ticks(0.0, top, 3)]
    return (f'<svg class="pz" viewBox="0 0 {PDF_W} {PDF_H}" role="img" aria-label="P(z)">'
            + _axes(PDF_BOX, xt, yt, "z") + f'<g transform="scale(.1)"><path class="pza" d="{area}"/></g>'
            + "".join(marks) + "</svg>")
