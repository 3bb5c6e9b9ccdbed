"""Redshift accuracy metrics (numpy only, no torch): velocity offsets, success fractions, intervals.

Conventions:
- dv = c * (z_pred - z_true) / (1 + z_true), c = 299792.458 km/s (the authors' notebook uses
  300000; the 0.07% difference is far below any threshold used here);
- a prediction that is not finite (NaN/inf) counts as a failure: its |dv| is +inf, so it is
  outside every threshold, is catastrophic, and pushes the median/percentiles up. Mean and
  median signed offsets use the finite predictions only;
- fractions come with a 95% binomial interval (Wilson by default, Clopper-Pearson on request);
- thresholds are in km/s and compared with ``|dv| < threshold`` (strict, as the authors do);
- classification: a confusion matrix (rows true class, columns predicted), completeness per true class and purity
  per predicted class, each a fraction with its binomial interval; redshift accuracy per true class uses the same dv
  (for stars that is the velocity with respect to their near-zero true z).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable, Sequence

import numpy as np

from .runtime.constants import C_KMS

DEFAULT_THRESHOLDS = (6000.0, 12000.0, 30000.0)
CATASTROPHIC_KMS = 30000.0
DEFAULT_Z_EDGES = (0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)
CLASSES = ("QSO", "STAR", "GALAXY")  # the class head's names, in the order tables show them
CLASS_THRESHOLDS = (1000.0, 6000.0)  # per-class redshift accuracy: redrock-like and the paper's first threshold


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


def binomial_interval(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Two-sided binomial confidence interval for k successes out of n ("wilson" or "clopper-pearson")."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - confidence
    if method == "wilson":
        zq = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        p = k / n
        denom = 1.0 + zq * zq / n
        centre = (p + zq * zq / (2 * n)) / denom
        half = zq * math.sqrt(p * (1 - p) / n + zq * zq / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)
    if method in ("clopper-pearson", "exact"):
        try:
            from scipy.special import betaincinv
        except ImportError:
            raise ValueError("clopper-pearson intervals need scipy (pip install scipy); wilson needs nothing") from None
        lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2.0))
        hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - alpha / 2.0))
        return lo, hi
    raise ValueError(f"unknown interval method {method!r} (wilson, clopper-pearson)")


def count_with_interval(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> dict:
    """{"k", "n", "fraction", "lo", "hi"} for k successes out of n (NaN fraction and interval when n = 0)."""
    k, n = int(k), int(n)
    lo, hi = binomial_interval(k, n, confidence, method)
    return {"k": k, "n": n, "fraction": (k / n if n else float("nan")), "lo": lo, "hi": hi}


def fraction_with_interval(mask, confidence: float = 0.95, method: str = "wilson") -> dict:
    """{"k", "n", "fraction", "lo", "hi"} for a boolean success mask."""
    m = np.asarray(mask, dtype=bool)
    return count_with_interval(int(m.sum()), int(m.size), confidence, method)


def median_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics x_(j), x_(n+1-j) from Binomial(n, 1/2).

    Coverage is at least `confidence`. With too few values to bound the median (n <= 5 at 95%) it is (-inf, inf).
    """
    a = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = a.size
    if n == 0:
        return float("nan"), float("nan")
    ks = np.arange(1, n // 2 + 1)
    # log C(n, k) by its ratio recursion, so large n neither overflows nor needs scipy
    log_comb = np.concatenate(([0.0], np.cumsum(np.log((n - ks + 1) / ks))))
    cdf = np.cumsum(np.exp(log_comb - n * math.log(2.0)))  # P(B <= k), k = 0 .. n // 2
    j = int(np.count_nonzero(cdf <= (1.0 - confidence) / 2.0 * (1 + 1e-12)))
    if j == 0:
        return float("-inf"), float("inf")
    return float(a[j - 1]), float(a[n - j])


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


def class_axes(*labels: Sequence[str], classes: Sequence[str] = CLASSES) -> list[str]:
    """`classes` followed by any other non-empty name found in the label arrays (sorted), so no class is dropped."""
    seen = {str(c) for arr in labels for c in arr if str(c)}
    return list(classes) + sorted(seen - set(classes))


def confusion_matrix(true_classes, predicted_classes, classes: Sequence[str] | None = None,
                     confidence: float = 0.95, method: str = "wilson") -> dict:
    """Counts (rows true, columns predicted), completeness per true class and purity per predicted class.

    A row whose true class is not in `classes` ("" = unknown) is left out and counted in n_truth_unknown. A prediction
    outside `classes` ("" = none, e.g. a failed spectrum) counts against its true class's completeness
    ("unpredicted") and in no column, as a failed redshift counts as a miss.
    """
    t = [str(c) for c in np.asarray(true_classes, dtype=object).reshape(-1)]
    p = [str(c) for c in np.asarray(predicted_classes, dtype=object).reshape(-1)]
    if len(t) != len(p):
        raise ValueError(f"{len(t)} true classes but {len(p)} predicted")
    axes = list(classes) if classes is not None else class_axes(t, p)
    index = {c: i for i, c in enumerate(axes)}
    counts = np.zeros((len(axes), len(axes)), dtype=np.int64)
    unpredicted = np.zeros(len(axes), dtype=np.int64)
    unknown = 0
    for a, b in zip(t, p):
        i = index.get(a)
        if i is None:
            unknown += 1
        elif b in index:
            counts[i, index[b]] += 1
        else:
            unpredicted[i] += 1
    return {
        "classes": axes, "counts": counts.tolist(), "unpredicted": unpredicted.tolist(),
        "n": int(counts.sum() + unpredicted.sum()), "n_truth_unknown": unknown,
        "completeness": {c: count_with_interval(counts[i, i], counts[i].sum() + unpredicted[i], confidence, method)
                         for i, c in enumerate(axes)},
        "purity": {c: count_with_interval(counts[j, j], counts[:, j].sum(), confidence, method)
                   for j, c in enumerate(axes)},
        "interval": f"{method} {confidence:.0%}",
    }


def redshift_by_class(z_pred, z_true, true_classes, classes: Sequence[str] | None = None,
                      thresholds: Sequence[float] = CLASS_THRESHOLDS, confidence: float = 0.95,
                      method: str = "wilson") -> dict[str, dict]:
    """Per true class: n, fractions within each threshold (with intervals), median |dv| with its interval, p68."""
    zp = np.asarray(z_pred, dtype=np.float64).reshape(-1)
    zt = np.asarray(z_true, dtype=np.float64).reshape(-1)
    t = np.array([str(c) for c in np.asarray(true_classes, dtype=object).reshape(-1)], dtype=object)
    if not zp.size == zt.size == t.size:
        raise ValueError(f"z_pred has {zp.size} values, z_true {zt.size}, true_classes {t.size}")
    out = {}
    for c in (list(classes) if classes is not None else class_axes(t)):
        dv = velocity_offsets(zp[t == c], zt[t == c])
        a = np.abs(dv)
        out[c] = {"n": int(a.size), "n_failed": int((~np.isfinite(dv)).sum()),
                  "fractions": {f"{th:g}": fraction_with_interval(a < th, confidence, method) for th in thresholds},
                  "median_abs_dv": median_abs_dv(dv), "median_abs_dv_ci": list(median_interval(a, confidence)),
                  "p68_abs_dv": abs_dv_percentile(dv, 68.0)}
    return out


def classification_report(true_classes, predicted_classes, z_pred, z_true, classes: Sequence[str] | None = None,
                          method: str = "wilson") -> dict:
    """JSON-ready: the confusion matrix with completeness/purity intervals and redshift accuracy per true class."""
    axes = list(classes) if classes is not None else class_axes(true_classes, predicted_classes)
    out = confusion_matrix(true_classes, predicted_classes, axes, method=method)
    out["redshift_by_true_class"] = redshift_by_class(z_pred, z_true, true_classes, axes, method=method)
    out["c_kms"] = C_KMS
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
