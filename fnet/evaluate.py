"""Evaluate a model on spectra with known redshifts: match a truth catalog, predict, report, plot.

Works on an ONNX package through the runtime (no torch needed) or on a torch checkpoint.
Stress tests from the paper: mask the strong emission lines at the true redshift (Fig. 6), or
add noise to halve the S/N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .runtime.atomic import atomic_write_text
from .runtime.backends import run_in_batches
from .runtime.heads import decode
from .runtime.constants import C_KMS

from .metrics import report as metrics_report
from .runtime.pipeline import expand_inputs
from .runtime.readers import read_spectra
from .runtime.spectrum import Spectrum
from .runtime.errors import SpectrumReadError

# Rest-frame vacuum wavelengths of the lines masked in the paper's Fig. 6 test.
PAPER_LINES = {"OVI": 1033.8, "Lya": 1215.7, "NV": 1240.1, "SiIV+OIV]": 1399.8, "CIV": 1549.1,
               "CIII]": 1908.7, "CII]": 2326.4}
LINE_MASK_HALF_WIDTH_KMS = 5000.0


@dataclass
class Truth:
    """True redshifts keyed by (PLATE, MJD, FIBERID) and by TARGETID."""

    by_pmf: dict[tuple[int, int, int], float]
    by_targetid: dict[int, float]

    def lookup(self, spec: Spectrum) -> float | None:
        """The true z of a spectrum, or None when the catalog does not list it."""
        m = spec.meta
        if m.get("TARGETID") is not None and int(m["TARGETID"]) in self.by_targetid:
            return self.by_targetid[int(m["TARGETID"])]
        key = (m.get("PLATE"), m.get("MJD"), m.get("FIBERID"))
        if None not in key:
            return self.by_pmf.get(tuple(int(k) for k in key))
        return None


def read_truth(path: str | Path, z_column: str = "auto") -> Truth:
    """Read a truth catalog (DR12Q/DR16Q style PLATE MJD FIBERID Z[_VI], or DESI TARGETID Z)."""
    import warnings

    from astropy.table import Table
    from astropy.units import UnitsWarning

    with warnings.catch_warnings():  # survey catalogs carry unit strings astropy cannot parse ("-")
        warnings.simplefilter("ignore", UnitsWarning)
        table = Table.read(path)
    names = {n.upper(): n for n in table.colnames}
    if z_column == "auto":
        if "Z" not in names and "Z_VI" not in names and "Z_TRUE" not in names:
            raise ValueError(f"{path}: no redshift column (looked for Z_VI, Z, Z_TRUE); pass --z-column")
        # DR12Q/DR16Q: Z_VI where a person inspected the spectrum (> 0), else the catalog's Z (as the dataset builder)
        base = names.get("Z", names.get("Z_TRUE"))
        z = np.asarray(table[base], dtype=np.float64) if base else np.full(len(table), np.nan)
        if "Z_VI" in names:
            zvi = np.asarray(table[names["Z_VI"]], dtype=np.float64)
            z = np.where(np.isfinite(zvi) & (zvi > 0), zvi, z)
    else:
        if z_column.upper() not in names:
            raise ValueError(f"{path}: no column {z_column!r}")
        z = np.asarray(table[names[z_column.upper()]], dtype=np.float64)
    usable = np.isfinite(z) & (z > -0.5)  # -1 and NaN mean "no redshift" in SDSS catalogs
    by_pmf, by_tid = {}, {}
    if all(c in names for c in ("PLATE", "MJD", "FIBERID")):
        for p, mj, f, zz, ok in zip(table[names["PLATE"]], table[names["MJD"]], table[names["FIBERID"]], z, usable):
            if ok:
                by_pmf[(int(p), int(mj), int(f))] = float(zz)
    if "TARGETID" in names:
        by_tid = {int(t): float(zz) for t, zz, ok in zip(table[names["TARGETID"]], z, usable) if ok}
    if not by_pmf and not by_tid:
        raise ValueError(f"{path}: needs PLATE/MJD/FIBERID or TARGETID columns to match spectra")
    return Truth(by_pmf, by_tid)


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


def collect(inputs: Sequence[str], truth: Truth) -> tuple[list[Spectrum], np.ndarray, list[str]]:
    """Spectra listed in the truth catalog, their true z, and messages for inputs that were skipped."""
    spectra, z_true, skipped = [], [], []
    for item in expand_inputs(inputs):
        if item.problem:
            skipped.append(f"{item.path}: {item.problem}")
            continue
        try:
            records = read_spectra(item.path)
        except SpectrumReadError as exc:
            skipped.append(str(exc))
            continue
        for spec in records:
            z = truth.lookup(spec)
            if z is None:
                skipped.append(f"{spec.source}[{spec.row}]: not in the truth catalog")
            else:
                spectra.append(spec)
                z_true.append(z)
    return spectra, np.asarray(z_true), skipped


Predict = Callable[[list[Spectrum]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def make_predict(package, backend, batch_size: int = 64) -> Predict:
    """Prediction exactly as fnet-run does it (preprocessing, backend, head decoding, ZWARN)."""
    from .runtime.catalog import Catalog
    from .runtime.pipeline import Predictor

    predictor = Predictor(package, backend)

    def predict(spectra: list[Spectrum]):
        catalog = Catalog()
        for start in range(0, len(spectra), batch_size):
            predictor.predict(spectra[start:start + batch_size], catalog)
        return (catalog.column("Z"), catalog.column("Z_ERR"), catalog.column("ZWARN"), catalog.column("COVERAGE"))
    return predict


def onnx_predictor(model_path: str | Path, device: str = "auto", threads: int | None = None,
                   batch_size: int = 64) -> tuple[Predict, dict]:
    """Predict through the runtime with an ONNX package or TensorRT engine."""
    from .runtime.backends import open_backend
    from .runtime.model_package import load_model_package

    package = load_model_package(model_path)
    backend = open_backend(package, device=device, threads=threads)
    return make_predict(package, backend, batch_size), {
        "model": str(model_path), "name": package.name, "version": package.version, "sha256": package.sha256,
        "backend": backend.describe()}


def summary_table(reports: list[dict]) -> str:
    """Plain-text table: one line per variant with the paper's thresholds and 95% intervals."""
    lines = [f"{'variant':<14}{'n':>5}  {'<6000 km/s':>22}{'<12000':>9}{'<30000':>9}{'median|dv|':>12}{'p68|dv|':>10}"]
    for rep in reports:
        f = rep["fractions"]
        six = f["6000"]
        med = rep["median_abs_dv"]
        p68 = rep["p68_abs_dv"]
        lines.append(f"{rep['variant']:<14}{rep['n']:>5}  {six['fraction']:>7.1%} [{six['lo']:.1%}-{six['hi']:.1%}]"
                     f"{f['12000']['fraction']:>9.1%}{f['30000']['fraction']:>9.1%}"
                     f"{(med if med is not None else float('inf')):>12.0f}{(p68 if p68 is not None else float('inf')):>10.0f}")
    return "\n".join(lines)


def score_outputs(outputs: dict[str, np.ndarray], head: dict, z_true: np.ndarray) -> dict:
    """The metrics report of raw network outputs against true redshifts, decoded exactly as the runtime decodes.

    Training validation, the test-split report and array evaluation all score through this function.
    """
    decoded = decode(outputs, head)
    return metrics_report(decoded.z, z_true, z_err=decoded.z_err if head["kind"] == "zbins" else None)


def evaluate_arrays(run: Callable[[np.ndarray], dict[str, np.ndarray]], x: np.ndarray, z_true: np.ndarray,
                    head: dict, batch_size: int = 256) -> dict:
    """Metrics report of a backend's run over already prepared network inputs x (n, npix)."""
    return score_outputs(run_in_batches(run, x, batch_size), head, z_true)


def evaluate(predict: Predict, spectra: list[Spectrum], z_true: np.ndarray, *, variant: str = "as observed",
             seed: int = 0) -> dict:
    """Metrics report for one variant: 'as observed', 'lines masked' or 'S/N halved'."""
    rng = np.random.default_rng(seed)
    if variant == "lines masked":
        spectra = [mask_lines(s, z) for s, z in zip(spectra, z_true)]
    elif variant == "S/N halved":
        spectra = [degrade_sn(s, 2.0, rng) for s in spectra]
    elif variant != "as observed":
        raise ValueError(f"unknown variant {variant!r}")
    z_pred, z_err, zwarn, coverage = predict(spectra)
    rep = metrics_report(z_pred, z_true, z_err=z_err if np.isfinite(z_err).any() else None)
    rep["variant"] = variant
    rep["n_zwarn_nonzero"] = int((zwarn != 0).sum())
    rep["rows"] = [{"source": s.source, "row": s.row, "z_true": float(t), "z_pred": float(p), "z_err": float(e),
                    "zwarn": int(w)} for s, t, p, e, w in zip(spectra, z_true, z_pred, z_err, zwarn)]
    return rep


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
