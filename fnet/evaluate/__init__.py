"""Evaluate a model on spectra with known redshifts: match a truth catalog, predict, report, plot.

Works on an ONNX package through the runtime (no torch needed) or on a torch checkpoint.
Stress tests from the paper: mask the strong emission lines at the true redshift (Fig. 6), or
add noise to halve the S/N. With a class head and a truth that gives classes (truth.py), each
report gains a confusion matrix with completeness/purity intervals and z accuracy per true class.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..metrics import class_axes, classification_report, report as metrics_report
from ..runtime.atomic import atomic_write_text
from ..runtime.backends import run_in_batches
from ..runtime.constants import C_KMS
from ..runtime.heads import Decoded, decode, has_classes
from ..runtime.spectrum import Spectrum
from .truth import (TRUTH_CLASS_CHOICES, Sample, Truth, collect, collect_sample, load_sample, normalise_class,
                    read_truth)

__all__ = ["TRUTH_CLASS_CHOICES", "Sample", "Truth", "collect", "collect_sample", "load_sample", "normalise_class",
           "read_truth", "Predictions", "Predict", "make_predict", "onnx_predictor", "evaluate", "evaluate_sample",
           "evaluate_arrays", "score_outputs", "summary_table", "summary_text", "confusion_table", "mask_lines",
           "degrade_sn", "plot_report", "write_report", "PAPER_LINES"]

# Rest-frame vacuum wavelengths of the lines masked in the paper's Fig. 6 test.
PAPER_LINES = {"OVI": 1033.8, "Lya": 1215.7, "NV": 1240.1, "SiIV+OIV]": 1399.8, "CIV": 1549.1,
               "CIII]": 1908.7, "CII]": 2326.4}
LINE_MASK_HALF_WIDTH_KMS = 5000.0


def mask_lines(spec: Spectrum, z: float, lines: dict[str, float] = PAPER_LINES,
               half_width_kms: float = LINE_MASK_HALF_WIDTH_KMS) -> Spectrum:
    """Copy of a spectrum with the given emission lines masked at redshift z (paper Fig. 6 test)."""
    good = spec.good.copy()
    wave = spec.wavelength
    for rest in lines.values():
        centre = rest * (1.0 + z)
        good &= np.abs(wave - centre) > centre * half_width_kms / C_KMS
    return replace(spec, good=good, notes=spec.notes + ["emission lines masked"])


def degrade_sn(spec: Spectrum, factor: float, rng: np.random.Generator) -> Spectrum:
    """Copy with extra Gaussian noise so that S/N drops by `factor` (ivar / factor**2)."""
    sigma = np.where(spec.ivar > 0, 1.0 / np.sqrt(np.where(spec.ivar > 0, spec.ivar, 1.0)), 0.0)
    extra = np.sqrt(factor**2 - 1.0) * sigma
    flux = spec.flux + rng.normal(size=spec.flux.size) * extra
    return replace(spec, flux=flux, ivar=spec.ivar / factor**2, notes=spec.notes + [f"S/N / {factor:g}"])


class Predictions(NamedTuple):
    """What a predictor returns: per spectrum Z, Z_ERR, ZWARN, COVERAGE, and class probabilities with a class head."""

    z: np.ndarray
    z_err: np.ndarray
    zwarn: np.ndarray
    coverage: np.ndarray
    p_class: np.ndarray | None = None
    classes: tuple[str, ...] = ()

    @classmethod
    def of(cls, out) -> "Predictions":
        """From a Predictions, a Decoded (no ZWARN: zeros) or the older (z, z_err, zwarn, coverage) tuple."""
        if isinstance(out, Decoded):
            n = len(out.z)
            return cls(out.z, out.z_err, np.zeros(n, np.int64), np.full(n, np.nan), out.p_class, tuple(out.classes))
        return out if isinstance(out, cls) else cls(*out)

    def spectype(self) -> np.ndarray:
        """Most probable class per spectrum ("" without a class head or where the probabilities are NaN)."""
        return Decoded(self.z, self.z_err, p_class=self.p_class, classes=self.classes).spectype()


Predict = Callable[[list[Spectrum]], "Predictions | Decoded | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]"]


def make_predict(package, backend, batch_size: int = 64) -> Predict:
    """Prediction exactly as fnet-run does it (preprocessing, backend, head decoding, ZWARN, class probabilities)."""
    from ..runtime.catalog import Catalog, class_columns
    from ..runtime.pipeline import Predictor

    predictor = Predictor(package, backend)
    classes = tuple(package.head.get("classes") or ())
    names = list(class_columns(classes).values()) if classes else []

    def predict(spectra: list[Spectrum]) -> Predictions:
        catalog = Catalog()
        for start in range(0, len(spectra), batch_size):
            predictor.predict(spectra[start:start + batch_size], catalog)
        # the catalog's P_<CLASS> columns, as fnet-run writes them: NaN (no class) on failed rows
        p_class = np.column_stack([catalog.column(n).astype(np.float64) for n in names]) if names else None
        return Predictions(catalog.column("Z"), catalog.column("Z_ERR"), catalog.column("ZWARN"),
                           catalog.column("COVERAGE"), p_class, classes)
    return predict


def onnx_predictor(model_path: str | Path, device: str = "auto", threads: int | None = None,
                   batch_size: int = 64) -> tuple[Predict, dict]:
    """Predict through the runtime with an ONNX package or TensorRT engine."""
    from ..runtime.backends import open_backend
    from ..runtime.model_package import load_model_package

    package = load_model_package(model_path)
    backend = open_backend(package, device=device, threads=threads)
    return make_predict(package, backend, batch_size), {
        "model": str(model_path), "name": package.name, "version": package.version, "sha256": package.sha256,
        "backend": backend.describe()}


def summary_table(reports: list[dict]) -> str:
    """Plain-text table: one line per variant with the paper's thresholds and 95% intervals (+ confusion matrices)."""
    lines = [f"{'variant':<14}{'n':>5}  {'<6000 km/s':>22}{'<12000':>9}{'<30000':>9}{'median|dv|':>12}{'p68|dv|':>10}"]
    for rep in reports:
        f = rep["fractions"]
        six = f["6000"]
        med = rep["median_abs_dv"]
        p68 = rep["p68_abs_dv"]
        lines.append(f"{rep['variant']:<14}{rep['n']:>5}  {six['fraction']:>7.1%} [{six['lo']:.1%}-{six['hi']:.1%}]"
                     f"{f['12000']['fraction']:>9.1%}{f['30000']['fraction']:>9.1%}"
                     f"{(med if med is not None else float('inf')):>12.0f}{(p68 if p68 is not None else float('inf')):>10.0f}")
    for rep in reports:
        if rep.get("classification"):
            lines += ["", f"classification, {rep['variant']}:", confusion_table(rep["classification"])]
    return "\n".join(lines)


def _pct(d: dict) -> str:
    """'93.8% [71.7-98.9]' for a fraction with interval (n/a for an empty sample)."""
    return "n/a" if d["fraction"] is None else f"{d['fraction']:.1%} [{d['lo']:.1%}-{d['hi']:.1%}]"


def confusion_table(cls: dict) -> str:
    """The confusion matrix (rows true, columns predicted) with completeness, purity and z accuracy per class."""
    names, counts, unpredicted = cls["classes"], cls["counts"], cls["unpredicted"]
    extra = any(unpredicted)  # a "none" column only when some spectrum got no class
    head = f"{'true / pred':<12}" + "".join(f"{c:>8}" for c in names) + (f"{'none':>8}" if extra else "")
    lines = [head + "  completeness"]
    for i, c in enumerate(names):
        lines.append(f"{c:<12}" + "".join(f"{n:>8}" for n in counts[i]) + (f"{unpredicted[i]:>8}" if extra else "")
                     + f"  {_pct(cls['completeness'][c])}")
    lines.append("purity      " + ", ".join(f"{c} {_pct(cls['purity'][c])}" for c in names))
    for c, z in cls["redshift_by_true_class"].items():
        if z["n"]:
            med = z["median_abs_dv"]
            lines.append(f"z of true {c:<7} n={z['n']:<5} <1000 km/s {_pct(z['fractions']['1000'])}  "
                         f"<6000 {_pct(z['fractions']['6000'])}  median|dv| "
                         f"{med if med is not None else float('inf'):.0f} km/s")
    if cls.get("n_truth_unknown"):
        lines.append(f"({cls['n_truth_unknown']} spectra without a usable truth class left out)")
    return "\n".join(lines)


def summary_text(reports: list[dict], info: dict, sample: Sample, report_path: str | Path) -> str:
    """fnet-eval's printout: what was measured, the summary table, the truth's caveats, where the report is."""
    first = reports[0]
    lines = [f"{info.get('name', '')} on {len(sample.spectra)} spectra ({len(sample.skipped)} inputs skipped):",
             summary_table(reports)]
    if first.get("n_truth_zwarning_nonzero"):
        lines.append(f"{first['n_truth_zwarning_nonzero']} spectra have a truth ZWARNING != 0 and are included "
                     "(--exclude-truth-zwarning leaves them out)")
    if first.get("classification") and first.get("truth_class_source"):
        lines.append(f"true classes from {first['truth_class_source']}")
    if first.get("classification_skipped"):
        lines.append(f"no classification: {first['classification_skipped']}")
    lines.append(f"report: {report_path}")
    return "\n".join(lines)


def score_outputs(outputs: dict[str, np.ndarray], head: dict, z_true: np.ndarray,
                  true_classes: Sequence[str] | None = None) -> dict:
    """The metrics report of raw network outputs against true redshifts, decoded exactly as the runtime decodes.

    Training validation, the test-split report and array evaluation all score through this function. With a class
    head whose output is in `outputs` and true_classes given, the report gains a "classification" section.
    """
    if has_classes(head) and (not isinstance(outputs, dict) or head.get("class_output", "class_logits") not in outputs):
        head = {k: v for k, v in head.items() if k not in ("classes", "class_output")}  # z-only outputs: score z
    decoded = decode(outputs, head)
    rep = metrics_report(decoded.z, z_true, z_err=decoded.z_err if head["kind"] == "zbins" else None)
    if decoded.p_class is not None and true_classes is not None:
        rep["classification"] = classification_report(true_classes, decoded.spectype(), decoded.z, z_true,
                                                      class_axes(true_classes, classes=decoded.classes))
    return rep


def evaluate_arrays(run: Callable[[np.ndarray], dict[str, np.ndarray]], x: np.ndarray, z_true: np.ndarray,
                    head: dict, batch_size: int = 256, true_classes: Sequence[str] | None = None) -> dict:
    """Metrics report of a backend's run over already prepared network inputs x (n, npix)."""
    return score_outputs(run_in_batches(run, x, batch_size), head, z_true, true_classes)


def evaluate(predict: Predict, spectra: list[Spectrum], z_true: np.ndarray, *, variant: str = "as observed",
             seed: int = 0, true_classes: Sequence[str] | None = None,
             truth_zwarning: np.ndarray | None = None) -> dict:
    """Metrics report for one variant: 'as observed', 'lines masked' or 'S/N halved'.

    true_classes ("" = unknown) with a predictor that returns class probabilities add a "classification" section;
    otherwise "classification_skipped" says why there is none. truth_zwarning (-1 = not given) is counted.
    """
    rng = np.random.default_rng(seed)
    if variant == "lines masked":
        spectra = [mask_lines(s, z) for s, z in zip(spectra, z_true)]
    elif variant == "S/N halved":
        spectra = [degrade_sn(s, 2.0, rng) for s in spectra]
    elif variant != "as observed":
        raise ValueError(f"unknown variant {variant!r}")
    pred = Predictions.of(predict(spectra))
    z_pred, z_err, zwarn = pred.z, pred.z_err, pred.zwarn
    rep = metrics_report(z_pred, z_true, z_err=z_err if np.isfinite(z_err).any() else None)
    rep["variant"] = variant
    rep["n_zwarn_nonzero"] = int((zwarn != 0).sum())
    rep["rows"] = [{"source": s.source, "row": s.row, "z_true": float(t), "z_pred": float(p), "z_err": float(e),
                    "zwarn": int(w)} for s, t, p, e, w in zip(spectra, z_true, z_pred, z_err, zwarn)]
    if truth_zwarning is not None:
        rep["n_truth_zwarning_nonzero"] = int((np.asarray(truth_zwarning) > 0).sum())
        for r, w in zip(rep["rows"], truth_zwarning):
            r["truth_zwarning"] = int(w)
    has_truth = true_classes is not None and any(str(c) for c in true_classes)
    if pred.p_class is not None:
        spectype = pred.spectype()
        for r, c, pc in zip(rep["rows"], spectype, pred.p_class):
            r["class_pred"], r["p_class"] = str(c), [float(v) if np.isfinite(v) else None for v in pc]
    if has_truth:
        for r, c in zip(rep["rows"], true_classes):
            r["class_true"] = str(c)
    if pred.p_class is not None and has_truth:
        rep["classification"] = classification_report(true_classes, spectype, z_pred, z_true,
                                                      class_axes(true_classes, classes=pred.classes))
    else:
        rep["classification_skipped"] = ("the model has no class head" if pred.p_class is None else
                                         "the truth has no classes (a CLASS/SPECTYPE column, or --truth-class)")
    return rep


def evaluate_sample(predict: Predict, sample: Sample, variants: Sequence[str], seed: int = 0) -> list[dict]:
    """One report per variant of a collected sample, with its classes and truth ZWARNING."""
    classes = sample.classes if sample.class_source else None
    reports = [evaluate(predict, sample.spectra, sample.z_true, variant=v, seed=seed, true_classes=classes,
                        truth_zwarning=sample.zwarning) for v in variants]
    for rep in reports:
        rep["truth_class_source"] = sample.class_source  # where the true classes came from (None: no classes)
    return reports


def plot_report(rep: dict, path: str | Path, title: str = "") -> Path:
    """z_pred vs z_true and the Δv histogram, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["rows"]
    zt = np.array([r["z_true"] for r in rows])
    zp = np.array([r["z_pred"] for r in rows])
    dv = C_KMS * (zp - zt) / (1 + zt)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    a.scatter(zt, zp, s=10)
    top = max(float(np.nanmax(zt)), float(np.nanmax(zp)), 1.0) * 1.05
    a.plot([0, top], [0, top], "k--", lw=0.8)
    a.set(xlabel="z true", ylabel="z FNet", xlim=(0, top), ylim=(0, top))
    clipped = np.clip(dv, -30000, 30000)
    b.hist(clipped[np.isfinite(clipped)], bins=60, range=(-30000, 30000))
    b.set(xlabel="Δv (km/s, clipped at ±30000)", ylabel="spectra")
    fig.suptitle(f"{title} {rep['variant']}: {rep['n']} spectra, "
                 f"{rep['fractions']['6000']['fraction']:.1%} within 6000 km/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(reports: list[dict], out_dir: str | Path, model_info: dict) -> Path:
    """Write report.json plus one PNG per variant into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the numbers matter more than the pictures: write them anyway
        matplotlib = None
    for rep in reports:
        slug = rep["variant"].replace(" ", "_").replace("/", "")
        rep["plot"] = (str(plot_report(rep, out / f"eval_{slug}.png", model_info.get("name", ""))) if matplotlib
                       else "not drawn: pip install 'fnet-qso[eval]' for plots")
    path = out / "report.json"
    atomic_write_text(path, json.dumps({"model": model_info, "reports": reports}, indent=1))
    return path
