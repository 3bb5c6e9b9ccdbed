"""Redshift accuracy metrics (numpy only, no torch): velocity offsets, success fractions, intervals.

Conventions:
- dv = c * (z_pred - z_true) / (1 + z_true), c = 299792.458 km/s (the authors' notebook uses
  300000; the 0.07% difference is far below any threshold used here);
- a prediction that is not finite (NaN/inf) counts as a failure: its |dv| is +inf, so it is
  outside every threshold, is catastrophic, and pushes the median/percentiles up. Mean and
  median signed offsets use the finite predictions only;
- fractions come with a 95% binomial interval (Wilson by default, Clopper-Pearson on request);
- thresholds are in km/s and compared with ``|dv| < threshold`` (strict, as the authors do).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

C_KMS = 299792.458
DEFAULT_THRESHOLDS = (6000.0, 12000.0, 30000.0)
CATASTROPHIC_KMS = 30000.0
DEFAULT_Z_EDGES = (0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)


def velocity_offsets(z_pred, z_true) -> np.ndarray:
    """dv in km/s; +inf where z_pred is not finite (a failed prediction)."""
    zp = np.asarray(z_pred, dtype=np.float64)
    zt = np.asarray(z_true, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        dv = C_KMS * (zp - zt) / (1.0 + zt)
    return np.where(np.isfinite(dv), dv, np.inf)


def accuracy_fractions(dv, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[float, float]:
    """Fraction of |dv| < threshold for each threshold (NaN for an empty sample)."""
    a = np.abs(np.asarray(dv, dtype=np.float64))
    return {float(t): (float(np.mean(a < t)) if a.size else float("nan")) for t in thresholds}


def abs_dv_percentile(dv, q: float) -> float:
    """q-th percentile of |dv| in km/s (68 gives the '1 sigma' width; inf if >(100-q)% failed)."""
    a = np.abs(np.asarray(dv, dtype=np.float64))
    if a.size == 0:
        return float("nan")
    # "lower" keeps the value a real sample value, so an inf is never interpolated into a NaN.
    return float(np.percentile(a, q, method="lower" if not np.isfinite(a).all() else "linear"))


def median_abs_dv(dv) -> float:
    """Median |dv| in km/s."""
    return abs_dv_percentile(dv, 50.0)


def catastrophic_rate(dv, threshold: float = CATASTROPHIC_KMS) -> float:
    """Fraction with |dv| > threshold (failed predictions included)."""
    a = np.abs(np.asarray(dv, dtype=np.float64))
    return float(np.mean(a > threshold)) if a.size else float("nan")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of I_x(a, b) by bisection (monotone in x; 200 halvings reach double precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def binomial_interval(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Two-sided binomial confidence interval for k successes out of n ("wilson" or "clopper-pearson")."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - confidence
    if method == "wilson":
        zq = _normal_ppf(1.0 - alpha / 2.0)
        p = k / n
        denom = 1.0 + zq * zq / n
        centre = (p + zq * zq / (2 * n)) / denom
        half = zq * math.sqrt(p * (1 - p) / n + zq * zq / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)
    if method in ("clopper-pearson", "exact"):
        lo = 0.0 if k == 0 else _beta_ppf(alpha / 2.0, k, n - k + 1)
        hi = 1.0 if k == n else _beta_ppf(1.0 - alpha / 2.0, k + 1, n - k)
        return lo, hi
    raise ValueError(f"unknown interval method {method!r} (wilson, clopper-pearson)")


def _normal_ppf(p: float) -> float:
    """Standard normal quantile (Acklam's rational approximation, refined by one Newton step)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    return x - e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


def fraction_with_interval(mask, confidence: float = 0.95, method: str = "wilson") -> dict:
    """{"k", "n", "fraction", "lo", "hi"} for a boolean success mask."""
    m = np.asarray(mask, dtype=bool)
    k, n = int(m.sum()), int(m.size)
    lo, hi = binomial_interval(k, n, confidence, method)
    return {"k": k, "n": n, "fraction": (k / n if n else float("nan")), "lo": lo, "hi": hi}


def z_err_calibration(z_pred, z_true, z_err, scales: Iterable[float] = (1.0, 2.0)) -> dict:
    """Fraction with |z_pred - z_true| < s * z_err for each scale s (expect 68% / 95% when Gaussian)."""
    zp, zt, ze = (np.asarray(a, dtype=np.float64) for a in (z_pred, z_true, z_err))
    ok = np.isfinite(ze) & np.isfinite(zp) & (ze > 0)
    out: dict = {"n": int(ok.sum())}
    if not ok.any():
        return out
    err = np.abs(zp[ok] - zt[ok])
    for s in scales:
        out[f"within_{s:g}_sigma"] = float(np.mean(err < s * ze[ok]))
    out["median_z_err"] = float(np.median(ze[ok]))
    out["median_z_err_kms"] = float(np.median(C_KMS * ze[ok] / (1.0 + zt[ok])))
    return out


def _summary(dv: np.ndarray, thresholds: Sequence[float], catastrophic: float, method: str) -> dict:
    """Core numbers for one sample of offsets."""
    a = np.abs(dv)
    finite = np.isfinite(dv)
    out: dict = {
        "n": int(dv.size),
        "n_failed": int((~finite).sum()),
        "median_abs_dv": median_abs_dv(dv),
        "p68_abs_dv": abs_dv_percentile(dv, 68.0),
        "mean_dv": float(np.mean(dv[finite])) if finite.any() else float("nan"),
        "median_dv": float(np.median(dv[finite])) if finite.any() else float("nan"),
        "catastrophic_rate": catastrophic_rate(dv, catastrophic),
        "catastrophic_ci": list(binomial_interval(int((a > catastrophic).sum()), int(a.size), method=method)),
        "fractions": {},
    }
    for t in thresholds:
        out["fractions"][f"{t:g}"] = fraction_with_interval(a < t, method=method)
    # Flat view {"6000": 0.93, ...} for plots and quick looks; the dict above has k, n and the interval.
    out["fraction_within"] = {k: v["fraction"] for k, v in out["fractions"].items()}
    return out


def per_z_bin_table(z_pred, z_true, edges: Sequence[float] = DEFAULT_Z_EDGES,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, method: str = "wilson") -> list[dict]:
    """One row per true-z bin [lo, hi): n, median/p68 |dv|, fractions within thresholds, catastrophic rate."""
    zt = np.asarray(z_true, dtype=np.float64)
    dv = velocity_offsets(z_pred, zt)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (zt >= lo) & (zt < hi) if hi != edges[-1] else (zt >= lo) & (zt <= hi)
        row = {"z_lo": float(lo), "z_hi": float(hi)}
        row.update(_summary(dv[sel], thresholds, CATASTROPHIC_KMS, method))
        rows.append(row)
    return rows


def report(z_pred, z_true, z_err=None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
           catastrophic: float = CATASTROPHIC_KMS, z_edges: Sequence[float] = DEFAULT_Z_EDGES,
           method: str = "wilson") -> dict:
    """JSON-ready accuracy report: overall numbers, 95% intervals, per-z-bin table, Z_ERR calibration."""
    zp = np.asarray(z_pred, dtype=np.float64).reshape(-1)
    zt = np.asarray(z_true, dtype=np.float64).reshape(-1)
    if zp.shape != zt.shape:
        raise ValueError(f"z_pred has {zp.size} values, z_true {zt.size}")
    dv = velocity_offsets(zp, zt)
    out = _summary(dv, thresholds, catastrophic, method)
    out["c_kms"] = C_KMS
    out["interval"] = f"{method} 95%"
    out["per_z_bin"] = per_z_bin_table(zp, zt, z_edges, thresholds, method)
    if z_err is not None:
        out["z_err_calibration"] = z_err_calibration(zp, zt, np.asarray(z_err, dtype=np.float64).reshape(-1))
    return _jsonable(out)


def _jsonable(obj):
    """Plain Python floats/ints/lists; non-finite floats become None so json.dump never writes NaN."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
