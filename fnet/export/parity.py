"""One comparator for every backend pair: decode both outputs to redshift and compare in velocity.

Raw output differences say little (a logit can move without moving the peak); what users care
about is whether Z changes, so parity is judged on dv = c (z_cand - z_ref) / (1 + z_ref).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


from ..metrics import velocity_offsets
from ..runtime.heads import decode, decode_classes, has_classes

# Default tolerances per precision: p99 of |dv| between the two backends, and the largest allowed
# fraction of spectra whose Z moves by more than 6000 km/s (a changed answer at the paper's first threshold).
# A class head adds max_frac_class_changed: the largest fraction of spectra whose SPECTYPE may change.
TOLERANCES = {
    "fp32": {"p99_abs_dv_kms": 1.0, "max_frac_over_6000": 0.0, "max_frac_class_changed": 0.0},
    "fp16": {"p99_abs_dv_kms": 100.0, "max_frac_over_6000": 0.005, "max_frac_class_changed": 0.005},
    # the FFT backend computes the FP32 graph another way: every spectrum within 1 km/s, not just 99 %
    "fft-fp32": {"p99_abs_dv_kms": 1.0, "max_abs_dv_kms": 1.0, "max_frac_over_6000": 0.0,
                 "max_frac_class_changed": 0.0},
}


@dataclass
class ParityReport:
    """How far a candidate backend's redshifts are from the reference's on the same inputs."""

    reference: str
    candidate: str
    n_spectra: int
    max_abs_output_diff: float
    median_abs_dv_kms: float
    p99_abs_dv_kms: float
    max_abs_dv_kms: float
    frac_over: dict = field(default_factory=dict)  # threshold km/s -> fraction of spectra above it
    tolerance: dict = field(default_factory=dict)
    passed: bool = False
    n_nonfinite: int = 0  # spectra with a NaN/inf in the candidate's outputs: any one fails the check
    companions: dict = field(default_factory=dict)  # other backends checked on the same file: name -> ParityReport
    # how the candidate's arithmetic was obtained: "cpu" (run here), "device:<GPU name>" (run on that GPU) or
    # "emulated-fp16" (FP16 arithmetic emulated on the CPU, fnet.export.fp16_emulation); "" in older packages
    arithmetic: str = ""
    # companions that are part of this verdict (`passed` is False when one failed): ["fp16-arithmetic"] for FP16
    # packages; the others (fft) are recorded beside it and judged by the backend that reads them
    gated_on: list = field(default_factory=list)
    # class head only (None without one): fraction of spectra whose most probable class differs, and the largest
    # change of any class probability
    frac_class_changed: float | None = None
    max_abs_dp_class: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready form stored in the model package (fnet.parity)."""
        return asdict(self)

    def summary(self) -> str:
        """One line for logs."""
        verdict = "PASS" if self.passed else "FAIL"
        return (f"parity {verdict}: {self.candidate} vs {self.reference} on {self.n_spectra} spectra: "
                f"|dv| median {self.median_abs_dv_kms:.3g}, p99 {self.p99_abs_dv_kms:.3g}, "
                f"max {self.max_abs_dv_kms:.3g} km/s; >6000 km/s: {self.frac_over.get('6000', 0):.2%}; "
                f"max |output diff| {self.max_abs_output_diff:.3g}"
                + (f"; {self.n_nonfinite} spectra with NaN/inf outputs" if self.n_nonfinite else "")
                + (f"; class changed for {self.frac_class_changed:.2%} (max |dP| {self.max_abs_dp_class:.3g})"
                   if self.frac_class_changed is not None else "")
                + "".join(f"; with {name}: {'PASS' if _passed(self.companions.get(name)) else 'FAIL'}"
                          for name in self.gated_on))


def _passed(report: "ParityReport | dict | None") -> bool:
    """A companion's verdict, whether a report or its stored dict; a missing one has not passed."""
    return bool(report.passed if isinstance(report, ParityReport) else (report or {}).get("passed"))


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], head: dict, *,
                    reference_name: str, candidate_name: str, tolerance: dict) -> ParityReport:
    """Decode both output sets with the model's head and compare the redshifts in velocity."""
    out = head["output"]
    # inf/NaN candidates (an overflowing FP16 network) give inf/NaN statistics: n_nonfinite below refuses them
    with np.errstate(invalid="ignore", over="ignore"):
        z_ref = decode(reference, head).z
        z_cand = decode(candidate, head).z
        dv = np.abs(velocity_offsets(z_cand, z_ref))
        diff = float(np.max(np.abs(reference[out].astype(np.float64) - candidate[out].astype(np.float64))))
        frac = {str(t): float(np.mean(dv > t)) for t in (10, 100, 1000, 6000)}
        report = ParityReport(reference=reference_name, candidate=candidate_name, n_spectra=int(dv.size),
                              max_abs_output_diff=diff, median_abs_dv_kms=float(np.median(dv)),
                              p99_abs_dv_kms=float(np.percentile(dv, 99)), max_abs_dv_kms=float(dv.max()),
                              frac_over=frac, tolerance=dict(tolerance))
    # a NaN/inf output is a broken artefact whatever the head's clipping makes of it (an overflowing FP16 engine
    # would otherwise count as one row over 6000 km/s, under the FP16 gate's allowance)
    values = np.asarray(candidate[out], dtype=np.float64).reshape(len(candidate[out]), -1)
    bad = ~np.isfinite(values).all(axis=1) | ~np.isfinite(z_cand)
    class_ok = True
    if has_classes(head):
        p_ref, p_cand = decode_classes(reference, head), decode_classes(candidate, head)
        bad |= ~np.isfinite(p_cand).all(axis=1)
        changed = np.nan_to_num(p_ref, nan=-1).argmax(axis=1) != np.nan_to_num(p_cand, nan=-1).argmax(axis=1)
        report.frac_class_changed = float(np.mean(changed))
        report.max_abs_dp_class = float(np.nanmax(np.abs(p_ref - p_cand))) if len(p_ref) else 0.0
        class_ok = report.frac_class_changed <= tolerance.get("max_frac_class_changed", 0.0)
    report.n_nonfinite = int(np.sum(bad))
    report.passed = bool(report.n_nonfinite == 0 and report.p99_abs_dv_kms <= tolerance["p99_abs_dv_kms"]
                         and report.max_abs_dv_kms <= tolerance.get("max_abs_dv_kms", np.inf)
                         and frac["6000"] <= tolerance["max_frac_over_6000"] and class_ok)
    return report
