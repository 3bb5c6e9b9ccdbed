"""Decode network outputs into z, Z_ERR and P(z) from the head metadata alone (numpy only).

The model package stores the head as JSON under ``fnet.head``; nothing else is needed here:

- regression: ``{"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}``.
  The network emits (N, 1) min-max scaled z; z = z_min + y * (z_max - z_min). Z_ERR is NaN
  (a point estimate carries no width). The output is not clipped: a value outside [0, 1]
  is reported as it is, so a catalog shows where the network extrapolates.
- zbins: ``{"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0,
  "nbins": K}``. The network emits (N, K) logits over K bins uniform in u = ln(1 + z) between
  ln(1 + z_min) and ln(1 + z_max); bin k is centred at u_min + (k + 0.5) * du. Uniform bins in
  ln(1 + z) have a constant width in velocity, c * du (K = 1024 over 0..7: 609 km/s).

Class head (optional, contract version 2): ``"classes": ["QSO", "STAR", "GALAXY"]`` and
``"class_output": "class_logits"`` in the same head dict. The network then has a second output of
(N, len(classes)) logits; decode() returns their softmax as ``Decoded.p_class`` (rows sum to 1, NaN
rows where a logit is not finite). A head without ``classes`` decodes exactly as before
(``p_class`` None), which is how packages of contract version 1 still run.

Class redshift ranges (optional): ``"class_z_range": {"QSO": [0.036, 6.94], "STAR": [-0.0012, 0.0012], ...}``,
the redshifts at which the training set held each class (``fnet-export --fit-class-z-range N`` measures them on
the run's own simulator). The two heads are trained side by side and can disagree: a class head saying QSO while
the redshift head puts the object at z = 0.000, where training had stars and galaxies only. Such a class is
not one the network ever saw there, so decode() sets to 0 the probability of every class whose range (widened by
CLASS_Z_MARGIN_KMS each side) does not hold the row's Z and renormalises the others. ``Decoded.p_class_head``
keeps the class head's own probabilities, and ``Decoded.class_out_of_range`` marks the rows whose own most
probable class lies outside its range (ZWARN CLASS_UNCERTAIN), including rows where no class's range holds Z:
those keep the class head's probabilities as they are.

zbins decoding (the same code evaluates during training, so training and runtime cannot drift):

- P(z): softmax over bins, the probability mass of each bin (rows sum to 1);
- z: the posterior's peak (argmax) refined by a parabola through log P at the peak and its two
  neighbours, in u. This is exact for a posterior Gaussian in u and moves the estimate by at most
  half a bin; at the first/last bin no refinement is done;
- Z_ERR: the half-width h (in u) of the smallest window centred on the peak bin that holds 68.27%
  of the probability, interpolated linearly between whole-bin windows, converted to z as
  (1 + z) * sinh(h) (the half-width of [u - h, u + h] mapped to z). For a Gaussian of width
  sigma_u this is ~(1 + z) * sigma_u. A second peak far away widens the window, so a
  bimodal posterior gets a large Z_ERR, as it should. A posterior inside one bin gives
  h = 0.68 * du / 2 (mass taken as uniform across the bin): Z_ERR never goes below a third of a bin.
  An optional ``"z_err_scale"`` in the head multiplies Z_ERR: the factor that makes 68.3 % of simulated
  quasars fall within 1 Z_ERR, fitted at export on spectra the network was not selected on
  (``fnet-export --calibrate-z-err N``, fnet.train.calibrate); without it the factor is 1.
  An optional ``"z_err_floor_kms"`` V adds, in quadrature, a velocity no P(z) can hold: how far real
  reference redshifts (a survey catalogue's) scatter from what the network measures, fitted on real spectra
  with such redshifts (``fnet-export --z-err-floor-kms V``, benchmarks/z_err_floor.py):
  Z_ERR = sqrt((scale * width)^2 + (V * (1 + z) / c)^2). Without it V is 0.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .constants import C_KMS

KINDS = ("regression", "zbins")
CLASS_OUTPUT = "class_logits"  # default name of the class head's graph output
ONE_SIGMA_MASS = 0.6826894921370859  # erf(1 / sqrt(2))
# Each class_z_range is widened by this velocity each side before it is applied: a zbins posterior's peak is
# good to about a bin (609 km/s for 1024 bins over 0..7), and a star at the edge of the range it was trained on
# (|v| <= 550 km/s) must not lose its class to one bin of decoding error.
CLASS_Z_MARGIN_KMS = 1500.0
_CHUNK = 4096  # rows decoded at once: bounds the (rows, K) work arrays


@dataclass
class Decoded:
    """Decoded redshifts: z (n,), z_err (n,) (NaN for regression), pdf (n, K) bin masses or None.

    p_class (n, C) class probabilities in the order of ``classes`` when the head has a class head.
    """

    z: np.ndarray
    z_err: np.ndarray
    pdf: np.ndarray | None = None
    p_class: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    p_class_head: np.ndarray | None = None  # the class head's own probabilities, where class_z_range changed p_class
    class_out_of_range: np.ndarray | None = None  # (n,) bool: the head's most probable class is outside its range

    def spectype(self) -> np.ndarray:
        """The most probable class name per row ("" where there is no class head or the row is NaN)."""
        if self.p_class is None:
            return np.full(len(self.z), "", dtype=object)
        names = np.array(self.classes, dtype=object)
        ok = np.isfinite(self.p_class).all(axis=1)
        best = np.where(ok, np.nan_to_num(self.p_class, nan=-1.0).argmax(axis=1), 0)
        return np.where(ok, names[best], "")


def validate_head(head: dict) -> dict:
    """Check a head dict and return a copy with defaults filled in; raises ValueError when malformed."""
    if not isinstance(head, dict) or head.get("kind") not in KINDS:
        raise ValueError(f"head must be a dict with kind in {KINDS}, got {head!r}")
    h = dict(head)
    for key, default in (("z_min", 0.0), ("z_max", 7.0)):
        value = h.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"head {key} must be a finite number, got {value!r}")
        h[key] = float(value)
    if not h["z_max"] > h["z_min"] > -1.0:
        raise ValueError(f"head needs -1 < z_min < z_max, got {h['z_min']}, {h['z_max']}")
    if h["kind"] == "regression":
        h.setdefault("output", "z_scaled")
    else:
        h.setdefault("output", "logits")
        h.setdefault("spacing", "log1p")
        if h["spacing"] != "log1p":
            raise ValueError(f"zbins spacing {h['spacing']!r} is not supported (only 'log1p')")
        nbins = h.get("nbins", 0)
        if isinstance(nbins, bool) or not isinstance(nbins, (int, float)) or not float(nbins).is_integer() \
                or not 3 <= nbins <= 10**6:
            raise ValueError(f"zbins head needs a whole number nbins in 3..1000000, got {nbins!r}")
        h["nbins"] = int(nbins)
    if "z_err_scale" in h:  # Z_ERR calibration factor fitted at export (fnet.train.calibrate), default 1
        scale = h["z_err_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"head z_err_scale must be a positive number, got {scale!r}")
        h["z_err_scale"] = float(scale)
    if "z_err_floor_kms" in h:  # reference-scatter term added in quadrature (fnet-export --z-err-floor-kms), default 0
        floor = h["z_err_floor_kms"]
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < C_KMS:
            raise ValueError(f"head z_err_floor_kms must be a velocity in km/s, 0 or more, got {floor!r}")
        if h["kind"] != "zbins":
            raise ValueError("head z_err_floor_kms needs a zbins head (a regression head reports no Z_ERR)")
        h["z_err_floor_kms"] = float(floor)
    if "classes" in h or "class_output" in h:
        classes = h.get("classes")
        if not isinstance(classes, (list, tuple)) or len(classes) < 2 \
                or not all(isinstance(c, str) and c.strip() == c and c for c in classes) \
                or len(set(classes)) != len(classes):
            raise ValueError(f"head classes must be a list of at least 2 distinct names, got {classes!r}")
        h["classes"] = list(classes)
        h.setdefault("class_output", CLASS_OUTPUT)
        if not isinstance(h["class_output"], str) or h["class_output"] == h["output"]:
            raise ValueError(f"head class_output must name a second graph output, got {h['class_output']!r}")
    if "class_z_range" in h:
        h["class_z_range"] = _valid_class_z_range(h["class_z_range"], h.get("classes") or [])
    return h


def _valid_class_z_range(ranges, classes: list[str]) -> dict[str, list[float]]:
    """{class: [lo, hi]} with lo <= hi finite, for classes of the head; raises ValueError otherwise."""
    if not classes:
        raise ValueError("head class_z_range needs a class head (classes)")
    if not isinstance(ranges, dict) or not ranges or not set(ranges) <= set(classes):
        raise ValueError(f"head class_z_range must map some of the classes {classes} to [lo, hi], got {ranges!r}")
    out = {}
    for name, pair in ranges.items():
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) for v in pair)
        if not ok or not -1.0 < pair[0] <= pair[1]:
            raise ValueError(f"head class_z_range[{name!r}] must be [lo, hi] with -1 < lo <= hi, got {pair!r}")
        out[name] = [float(pair[0]), float(pair[1])]
    return out


def restrict_to_class_z_range(p_class: np.ndarray, z: np.ndarray, classes: tuple[str, ...] | list[str],
                              ranges: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities with classes outside their training redshift range at z set to 0 (renormalised).

    Returns (p, out_of_range): out_of_range marks rows whose own most probable class is outside its range at z.
    A class without a range is allowed everywhere. Rows whose z no class allows, whose allowed classes all have
    probability 0, or whose z or probabilities are not finite keep their probabilities.
    """
    p_head = np.asarray(p_class, dtype=np.float64)
    p = p_head.copy()
    z = np.asarray(z, dtype=np.float64)
    margin = CLASS_Z_MARGIN_KMS / C_KMS  # in u = ln(1 + z), where a velocity is a fixed width
    allowed = np.ones(p.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # z <= -1: u is -inf or NaN, no class allowed
        u = np.log1p(z)
        for j, name in enumerate(classes):
            if name in ranges:
                lo, hi = ranges[name]
                allowed[:, j] = (u >= np.log1p(lo) - margin) & (u <= np.log1p(hi) + margin)
    finite = np.isfinite(p).all(axis=1) & np.isfinite(z)
    kept = np.where(allowed, p, 0.0)
    total = kept.sum(axis=1)
    change = finite & (total > 0)
    p[change] = kept[change] / total[change, None]
    top = np.where(finite, np.nan_to_num(p_head, nan=-1.0).argmax(axis=1), 0)
    out_of_range = finite & ~allowed[np.arange(len(p)), top]
    return p, out_of_range


def has_classes(head: dict) -> bool:
    """True when the head carries a class head (contract version 2)."""
    return bool(head.get("classes"))


def _u_range(head: dict) -> tuple[float, float, float]:
    """u_min, u_max and bin width du for a zbins head."""
    u_min, u_max = np.log1p(head["z_min"]), np.log1p(head["z_max"])
    return float(u_min), float(u_max), float((u_max - u_min) / head["nbins"])


def bin_centres(head: dict) -> np.ndarray:
    """Redshift at the centre of each bin of a zbins head, shape (K,)."""
    head = validate_head(head)
    if head["kind"] != "zbins":
        raise ValueError("bin_centres needs a zbins head")
    u_min, _, du = _u_range(head)
    return np.expm1(u_min + du * (np.arange(head["nbins"]) + 0.5))


def bin_edges(head: dict) -> np.ndarray:
    """Redshift at the K + 1 bin edges of a zbins head."""
    head = validate_head(head)
    u_min, _, du = _u_range(head)
    return np.expm1(u_min + du * np.arange(head["nbins"] + 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    a = np.asarray(logits, dtype=np.float64)
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def _pick_output(outputs, head: dict) -> np.ndarray:
    """The head's output array from a dict of named outputs or a bare array."""
    if isinstance(outputs, dict):
        if head["output"] in outputs:
            return np.asarray(outputs[head["output"]])
        if len(outputs) == 1 and not has_classes(head):
            return np.asarray(next(iter(outputs.values())))
        raise KeyError(f"outputs {sorted(outputs)} do not include the head's {head['output']!r}")
    return np.asarray(outputs)


def _decode_zbins_chunk(p: np.ndarray, u_min: float, du: float) -> tuple[np.ndarray, np.ndarray]:
    """Peak-refined u and 68% half-width h (in u) for a (n, K) block of bin masses."""
    n, k = p.shape
    rows = np.arange(n)
    peak = p.argmax(axis=1)
    # Parabola through log P at peak-1, peak, peak+1: vertex offset in bins, |offset| <= 0.5 for a true maximum.
    lp = np.log(np.maximum(p, 1e-300))
    inner = (peak > 0) & (peak < k - 1)
    pc = np.clip(peak, 1, k - 2)
    l0, l1, l2 = lp[rows, pc - 1], lp[rows, pc], lp[rows, pc + 1]
    denom = l0 - 2.0 * l1 + l2
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(inner & (denom < 0), 0.5 * (l0 - l2) / denom, 0.0)
    offset = np.clip(np.nan_to_num(offset), -0.5, 0.5)
    u = u_min + du * (peak + 0.5 + offset)

    # Mass of the window [peak - w, peak + w] for w = 0..K-1 from the cumulative sum.
    c = np.concatenate((np.zeros((n, 1)), np.cumsum(p, axis=1)), axis=1)  # c[:, j] = sum p[:, :j]
    w = np.arange(k)[None, :]
    hi = np.minimum(peak[:, None] + w + 1, k)
    lo = np.maximum(peak[:, None] - w, 0)
    mass = np.take_along_axis(c, hi, axis=1) - np.take_along_axis(c, lo, axis=1)
    total = c[:, -1:]
    target = ONE_SIGMA_MASS * total[:, 0]
    j = np.argmax(mass >= target[:, None] * (1 - 1e-12), axis=1)  # first window reaching 68%
    m_hi = mass[rows, j]
    m_lo = np.where(j > 0, mass[rows, np.maximum(j - 1, 0)], 0.0)
    r_lo = np.where(j > 0, j - 0.5, 0.0)  # half-width in bins of window j-1 (0 for "no window")
    r_hi = j + 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(m_hi > m_lo, (target - m_lo) / (m_hi - m_lo), 1.0)
    h = du * (r_lo + np.clip(frac, 0.0, 1.0) * (r_hi - r_lo))
    return u, h


def decode_classes(outputs, head: dict) -> np.ndarray | None:
    """(n, C) class probabilities from the class head's logits, or None for a head without classes."""
    if not has_classes(head):
        return None
    if not isinstance(outputs, dict) or head["class_output"] not in outputs:
        got = sorted(outputs) if isinstance(outputs, dict) else "one bare array"
        raise KeyError(f"outputs {got} do not include the class head's {head['class_output']!r}")
    logits = np.asarray(outputs[head["class_output"]], dtype=np.float64)
    logits = logits.reshape(logits.shape[0], -1)
    if logits.shape[1] != len(head["classes"]):
        raise ValueError(f"class head with {len(head['classes'])} classes expects (n, {len(head['classes'])}) "
                         f"logits, got {logits.shape}")
    p = softmax(logits)
    p[~np.isfinite(logits).all(axis=1)] = np.nan
    return p


def decode(outputs: dict[str, np.ndarray] | np.ndarray, head: dict) -> Decoded:
    """Redshift, its error, (zbins) P(z) and (class head) class probabilities, following the head metadata."""
    head = validate_head(head)
    decoded = _decode_redshift(outputs, head)
    if has_classes(head):
        decoded.p_class = decode_classes(outputs, head)
        decoded.classes = tuple(head["classes"])
        if "class_z_range" in head:
            decoded.p_class_head = decoded.p_class
            decoded.p_class, decoded.class_out_of_range = restrict_to_class_z_range(
                decoded.p_class, decoded.z, decoded.classes, head["class_z_range"])
    return decoded


def _decode_redshift(outputs, head: dict) -> Decoded:
    """Z, Z_ERR and P(z) from the redshift head's output."""
    y = _pick_output(outputs, head).astype(np.float64)
    if head["kind"] == "regression":
        y = y.reshape(y.shape[0], -1)
        if y.shape[1] != 1:
            raise ValueError(f"regression head expects (n, 1) outputs, got {y.shape}")
        z = head["z_min"] + y[:, 0] * (head["z_max"] - head["z_min"])
        return Decoded(z=z, z_err=np.full_like(z, np.nan), pdf=None)

    if y.ndim != 2 or y.shape[1] != head["nbins"]:
        raise ValueError(f"zbins head with {head['nbins']} bins expects (n, {head['nbins']}) logits, got {y.shape}")
    u_min, _, du = _u_range(head)
    pdf = softmax(y)
    n = y.shape[0]
    u, h = np.empty(n), np.empty(n)
    for s in range(0, n, _CHUNK):
        u[s:s + _CHUNK], h[s:s + _CHUNK] = _decode_zbins_chunk(pdf[s:s + _CHUNK], u_min, du)
    z = np.expm1(u)
    z_err = head.get("z_err_scale", 1.0) * (1.0 + z) * np.sinh(h)
    if head.get("z_err_floor_kms"):  # what the P(z) cannot know: the reference redshifts' own scatter (a velocity)
        z_err = np.hypot(z_err, head["z_err_floor_kms"] * (1.0 + z) / C_KMS)
    bad = ~np.isfinite(y).all(axis=1)  # a NaN logit poisons the softmax: report NaN, never a bin edge
    z[bad], z_err[bad] = np.nan, np.nan
    return Decoded(z=z, z_err=z_err, pdf=pdf.astype(np.float32))
