"""From a training checkpoint to model packages: the parity set, then ONNX FP32/FP16 and TensorRT engines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime.grid import Grid
from ..runtime.pipeline import expand_inputs
from ..runtime.preprocess import prepare_arrays, prepare_spectra
from ..runtime.readers import read_spectra
from ..runtime.errors import SpectrumReadError
from ..train.checkpoint import load_model
from ..train.ensemble import load_ensemble
from ..train.evaluate_torch import reference_outputs
from ..train.package import package_info
from .onnx_export import ExportParityError, export_onnx
from .parity import ParityReport


@dataclass
class ExportResult:
    """One artefact: where it went (None when parity refused it) and its parity report."""

    kind: str
    path: Path | None
    report: ParityReport | None
    error: str | None = None


def _arithmetic_line(report: ParityReport, path: Path | None) -> list[ExportResult]:
    """The FP16 arithmetic check of an FP16 package as its own line (none for FP32 packages)."""
    arithmetic = report.companions.get("fp16-arithmetic")
    if arithmetic is None:
        return []
    error = None
    if not arithmetic.passed:
        error = (f"{path}: written with --force, but its FP16 arithmetic fails: a GPU's redshifts are not vouched for"
                 if path else "FP16 arithmetic fails: the FP16 package is not written")
    return [ExportResult("fp16-arithmetic", path, arithmetic, error)]


def parity_inputs(grid: Grid, normalisation: dict, spectra: Sequence[str] = (), n_simulated: int = 256,
                  seed: int = 12345, classes: bool = False) -> tuple[np.ndarray, list[str]]:
    """Network inputs for the parity check: real spectra files (any format) plus simulated quasars.

    classes: simulate a quasar target list's mix of quasars, stars and galaxies instead (a class head's
    answers can flip on any of them), when the star and galaxy templates are there.
    """
    xs, sources = [], []
    records = []
    for item in expand_inputs(list(spectra)):
        if item.problem:
            continue
        try:
            records.extend(read_spectra(item.path))
        except SpectrumReadError:
            continue  # a non-spectrum file in a folder is not the exporter's concern
    if records:
        prepared = prepare_spectra(records, grid, normalisation)
        keep = prepared.good.any(axis=1)
        xs.append(prepared.x[keep])
        sources.append(f"{int(keep.sum())} real spectra")
    if n_simulated:
        from ..simulate import QuasarSimulator, SpectrumMixSimulator

        simulator, what = None, "simulated spectra"
        if classes:
            try:
                simulator, what = SpectrumMixSimulator(seed=seed), "simulated spectra (quasars, stars, galaxies)"
            except FileNotFoundError:  # no star/galaxy templates here: quasars only, and the report says so
                pass
        simulator = simulator or QuasarSimulator(source="auto", seed=seed)
        batch = simulator.sample(n_simulated)
        xs.append(prepare_arrays(batch.loglam, batch.flux, batch.ivar, batch.good, grid, normalisation).x)
        sources.append(f"{n_simulated} {what}")
    if not xs:
        raise ValueError("no parity inputs: give real spectra or a number of simulated ones")
    return np.concatenate(xs), sources


def export_checkpoint(checkpoint: str | Path | Sequence[str | Path], out_dir: str | Path, *,
                      precisions: Sequence[str] = ("fp32",), tensorrt: bool = False,
                      parity_spectra: Sequence[str] = (), n_simulated: int = 256, model_version: str = "0.1.0",
                      name: str | None = None, force: bool = False, max_batch: int = 256, fft: bool = True,
                      calibrate_z_err: int = 0, class_z_range_spectra: int = 0,
                      z_err_floor_kms: float = 0.0) -> list[ExportResult]:
    """Export every requested artefact of a checkpoint (or of several, as one ensemble); each is written only if its
    parity check passes.

    checkpoint: one training checkpoint, or a list of two or more trained alike (fnet.train.ensemble: one graph
    whose posteriors are the mean of theirs).

    fft: also check the FP32 package through the FFT backend (fnet-run --backend fft) against PyTorch.
    calibrate_z_err: fit the head's Z_ERR factor on this many freshly simulated spectra (fnet.train.calibrate).
    class_z_range_spectra: measure each class's training redshift range on this many simulated spectra and store it
    in the head (fnet.runtime.heads: the decoder then drops a class at a redshift training never had it).
    z_err_floor_kms: a velocity added to Z_ERR in quadrature (reference redshifts' own scatter, fitted on real spectra:
    benchmarks/z_err_floor.py); 0: none.
    """
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    model, meta = load_model(paths[0]) if len(paths) == 1 else load_ensemble(paths)
    checkpoint = paths[0]  # errors below name it (an ensemble's members share the recipe)
    info = package_info(meta, model_version, name)
    data = (meta.get("config") or {}).get("data") or {}
    for option, n in (("--calibrate-z-err", calibrate_z_err), ("--fit-class-z-range", class_z_range_spectra)):
        if n and data.get("source") != "simulate":
            raise ValueError(f"{checkpoint}: {option} needs a run trained on simulated spectra "
                             f"(data.source is {data.get('source')!r})")
    if class_z_range_spectra:
        if not info.head.get("classes") or info.head.get("kind") != "zbins":
            # the decoder's margin is a few bins of a P(z) head; a regression head's scatter is not measured
            raise ValueError(f"{checkpoint}: --fit-class-z-range needs a model with a class head and a zbins "
                             "redshift head")
        from ..train.calibrate import fit_class_z_range

        fit = fit_class_z_range(info.head["classes"], data["simulator_class"], data.get("simulator") or {},
                                info.grid, info.normalisation, class_z_range_spectra,
                                tuple(data.get("z_range", (0.0, 7.0))), data.get("z_sampling", "simulator"))
        info.head["class_z_range"] = fit["ranges"]
        info.training["class_z_range"] = fit
    if calibrate_z_err:
        from ..train.calibrate import fit_z_err_scale

        fit = fit_z_err_scale(model, info.head, info.grid, info.normalisation, data["simulator_class"],
                              data.get("simulator") or {}, calibrate_z_err, tuple(data.get("z_range", (0.0, 7.0))))
        info.head["z_err_scale"] = fit["z_err_scale"]
        info.training["z_err_calibration"] = fit
    if z_err_floor_kms:
        if info.head.get("kind") != "zbins":
            raise ValueError(f"{checkpoint}: --z-err-floor-kms needs a zbins head (a regression head reports no Z_ERR)")
        info.head["z_err_floor_kms"] = float(z_err_floor_kms)
        info.training["z_err_floor"] = {"kms": float(z_err_floor_kms)}
    x, sources = parity_inputs(info.grid, info.normalisation, parity_spectra, n_simulated,
                               classes=bool(info.head.get("classes")))
    info.training["parity_inputs"] = sources
    reference = reference_outputs(model, info.head["output"], x)
    out_dir = Path(out_dir)
    results = []
    for precision in precisions:
        path = out_dir / f"{info.model_name}-{precision}.onnx"
        try:
            report = export_onnx(model, info, path, x, precision=precision, force=force, reference_outputs=reference,
                                 check_fft=fft)
            results.append(ExportResult(f"onnx-{precision}", path, report))
            fft_report = report.companions.get("fft")
            if fft_report is not None:  # same file, another way to run it: reported as its own line
                results.append(ExportResult("fft-fp32", path if fft_report.passed else None, fft_report,
                                            None if fft_report.passed else
                                            f"{path}: written, but --backend fft will refuse it"))
            results.extend(_arithmetic_line(report, path))
        except ExportParityError as exc:
            results.append(ExportResult(f"onnx-{precision}", None, exc.report, str(exc)))
            results.extend(_arithmetic_line(exc.report, None))
        except Exception as exc:  # noqa: BLE001  an artefact that cannot be built: reported, the others still built
            results.append(ExportResult(f"onnx-{precision}", None, None, f"{path}: not built: {type(exc).__name__}: {exc}"))
    if tensorrt:
        from .tensorrt_build import build_engine

        # one engine per written ONNX package: the other lines (fft-fp32, fp16-arithmetic) name the same files
        for res in [r for r in results if r.path is not None and r.kind.startswith("onnx-")]:
            precision = res.kind.split("-", 1)[1]
            kind, engine = f"tensorrt-{precision}", res.path.with_suffix(".engine")
            try:
                # gated against the float64 PyTorch network, like the ONNX packages (not ONNX Runtime on the file)
                report = build_engine(res.path, engine, x, fp16=precision == "fp16", max_batch=max_batch, force=force,
                                      reference_outputs=reference, reference_name="torch-fp64")
                results.append(ExportResult(kind, engine, report))
            except ExportParityError as exc:
                results.append(ExportResult(kind, None, exc.report, str(exc)))
            except Exception as exc:  # noqa: BLE001  parse/build/precision failure: this engine only, with the reason
                results.append(ExportResult(kind, None, None, f"{engine}: not built: {type(exc).__name__}: {exc}"))
    return results


def export_summary(results: list[ExportResult]) -> tuple[str, str]:
    """(the lines fnet-export prints, outcome): "broken" when an artefact could not be built at all (parse or
    build error), "failed" when one failed its parity check, else "ok"."""
    lines = []
    for res in results:
        where = res.path if res.path else "NOT WRITTEN"
        detail = res.report.summary() if res.report else ""
        detail = f"{detail}\n               {res.error}" if res.error and detail else (detail or res.error)
        lines.append(f"{res.kind:<14} {where}\n               {detail}")
    broken = any(r.path is None and r.report is None for r in results)
    failed = any(r.path is None or (r.report is not None and not r.report.passed) for r in results)
    return "\n".join(lines), "broken" if broken else "failed" if failed else "ok"
