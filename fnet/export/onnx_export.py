"""Export a trained FNet to an ONNX model package (FP32 or FP16), checked for Δv parity before it is written.

FP16 packages are mixed precision: the network body (``.features``, ``.fc``) computes in FP16, the head
(``.out``, the layer that decides the redshift) in FP32 with FP32 weights, so output rounding never moves a
redshift; input and output stay float32 (Cast nodes at the boundaries) so the runtime feeds the same arrays
to every package. A network without ``.out`` is exported wholly in FP16. The package names its FP32 layers
in ``fnet.fp32_layers``.

An FP16 package is written only if both its graph (ONNX Runtime CPU, which runs most of an FP16 graph in
FP32) and FP16 arithmetic (measured on the CUDA GPU when there is one, else emulated:
fnet.export.fp16_emulation) give redshifts within the FP16 tolerance of the float64 network.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime.atomic import atomic_path
from ..runtime.backends import OnnxRuntimeBackend, available_providers, open_backend, run_in_batches
from ..runtime.model_package import ModelPackage
from ..runtime.onnx_wire import stamp_integrity
from ..train.evaluate_torch import reference_outputs as torch_reference
from ..train.fft_conv import plain_copy
from ..train.package import PackageInfo
from ..runtime.errors import BackendUnavailable
from ..runtime.fft_backend import FftBackend
from .fp16_emulation import fp16_arithmetic_outputs, fp32_layers, mixed_precision
from .parity import TOLERANCES, ParityReport, compare_outputs

PRECISIONS = ("fp32", "fp16")
OPSET = 17


class ExportParityError(RuntimeError):
    """The exported artefact's redshifts differ from the reference beyond tolerance; nothing was written."""

    def __init__(self, path: Path, report: ParityReport, reason: str | None = None):
        self.report = report
        super().__init__(f"{path}: not written, {reason or f'{report.summary()} (tolerance {report.tolerance})'}")


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace an ONNX file's metadata_props with `metadata` and stamp its fnet.integrity record."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    # fnet.integrity: checksums of the graph and the metadata, so the runtime refuses a corrupted copy
    path.write_bytes(stamp_integrity(proto.SerializeToString()))


def export_graph(model: nn.Module, path: Path, npix: int, output: str, precision: str) -> None:
    """Write the network as an ONNX graph (input 'flux' (N, 1, npix), dynamic batch), FP32 or mixed FP16 inside."""
    net = copy.deepcopy(model).eval().float().cpu()
    if precision == "fp16":
        net = mixed_precision(net)
    dummy = torch.zeros(2, 1, npix)
    head = getattr(model, "head", None) or {}
    # a class head is the graph's second output, named by the head (fnet.runtime.heads)
    outputs = [output] + ([head["class_output"]] if head.get("classes") else [])
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(path), input_names=["flux"], output_names=outputs,
                          dynamic_axes={"flux": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def package_metadata(info: PackageInfo, precision: str, model: nn.Module, parity: dict | None = None) -> dict[str, str]:
    """The package's metadata_props: PackageInfo's, plus fnet.fp32_layers (the layers an FP16 package keeps FP32)."""
    meta = info.metadata(precision, parity=parity)
    if precision == "fp16":
        meta["fnet.fp32_layers"] = json.dumps(fp32_layers(model))
    return meta


def fp16_arithmetic_check(model: nn.Module, head: dict, x: np.ndarray, reference_outputs: dict[str, np.ndarray],
                          tolerance: dict | None = None) -> ParityReport:
    """The mixed-precision network's redshifts in FP16 arithmetic (a CUDA GPU, else emulated) vs the reference."""
    candidate, how = fp16_arithmetic_outputs(model, head["output"], x)
    report = compare_outputs(reference_outputs, candidate, head, reference_name="torch-fp64",
                             candidate_name=f"fp16-arithmetic[{how}]", tolerance=tolerance or TOLERANCES["fp16"])
    report.arithmetic = how
    return report


def _refusal(graph: ParityReport, arithmetic: ParityReport | None) -> str | None:
    """Why an artefact fails its gate, in the user's terms (graph: its own check, before companions); None: passes."""
    reasons = []
    if not graph.passed:
        reasons.append(f"{graph.summary()} (tolerance {graph.tolerance})")
    if arithmetic is not None and not arithmetic.passed:
        if arithmetic.n_nonfinite:
            reasons.append(f"FP16 arithmetic overflows: {arithmetic.n_nonfinite}/{arithmetic.n_spectra} spectra give "
                           f"inf or NaN ({arithmetic.arithmetic}); this network's values do not fit in FP16, "
                           "export it as fp32")
        else:
            reasons.append(f"FP16 arithmetic moves redshifts beyond tolerance ({arithmetic.arithmetic}): "
                           f"{arithmetic.summary()} (tolerance {arithmetic.tolerance})")
    return "; ".join(reasons) or None


def export_onnx(model: nn.Module, info: PackageInfo, out_path: str | Path, parity_x: np.ndarray, *,
                precision: str = "fp32", tolerance: dict | None = None, force: bool = False,
                reference_outputs: dict[str, np.ndarray] | None = None, threads: int | None = None,
                check_fft: bool = False) -> ParityReport:
    """Export, run the file through onnxruntime on parity_x, compare with torch, and write only on PASS.

    FP16: FP16 arithmetic (fp16_arithmetic_check) must pass too; its report is companions["fp16-arithmetic"]
    and the package's verdict (``passed``) includes it, so a package written with force=True whose FP16
    arithmetic failed is flagged FAIL by fnet-run like any other.

    check_fft (FP32 only): also run the file through the FFT backend and record that comparison in the
    package (fnet.parity companions.fft); it does not stop the file being written, but the FFT backend
    refuses a package whose FFT parity failed.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out_path = Path(out_path)
    model = plain_copy(model)  # reference and graph both nn.Conv1d: the package is judged against what it holds
    output = info.head["output"]
    tolerance = tolerance or TOLERANCES[precision]
    if reference_outputs is None:
        reference_outputs = torch_reference(model, output, parity_x)

    with atomic_path(out_path) as tmp:
        export_graph(model, tmp, info.grid.npix, output, precision)
        set_metadata(tmp, package_metadata(info, precision, model))
        package = ModelPackage.from_metadata(tmp, package_metadata(info, precision, model))
        backend = OnnxRuntimeBackend(package, ["CPUExecutionProvider"], threads)
        candidate = run_in_batches(backend.run, parity_x)
        report = compare_outputs(reference_outputs, candidate, info.head, reference_name="torch-fp64",
                                 candidate_name=f"onnxruntime-cpu-{precision}", tolerance=tolerance)
        report.arithmetic = "cpu"
        arithmetic = None
        if precision == "fp16":
            # ONNX Runtime CPU judged the graph, in FP32 arithmetic mostly; FP16 arithmetic is judged here
            arithmetic = fp16_arithmetic_check(model, info.head, parity_x, reference_outputs, tolerance)
        reason = _refusal(report, arithmetic)
        if arithmetic is not None:
            report.companions["fp16-arithmetic"] = arithmetic
            report.gated_on.append("fp16-arithmetic")
            report.passed = report.passed and arithmetic.passed
        if reason and not force:
            raise ExportParityError(out_path, report, reason)
        fft = None
        if check_fft and precision == "fp32":
            try:
                fft = FftBackend(package, "cpu", threads)
            except BackendUnavailable:  # a graph the FFT backend does not run: nothing to check (it refuses it too)
                pass
        if fft is not None:
            report.companions["fft"] = compare_outputs(
                reference_outputs, run_in_batches(fft.run, parity_x, 32), info.head, reference_name="torch-fp64",
                candidate_name=fft.describe(), tolerance=TOLERANCES["fft-fp32"])
            report.companions["fft"].arithmetic = "cpu"
        for name, gpu in gpu_provider_backends(package, threads):
            # ONNX Runtime's GPU providers run the same file another way (cuDNN, TensorRT tactics): recorded per
            # provider, so fnet-run can warn when the provider it uses failed here
            report.companions[name] = compare_outputs(
                reference_outputs, run_in_batches(gpu.run, parity_x), info.head, reference_name="torch-fp64",
                candidate_name=gpu.describe(), tolerance=tolerance)
            report.companions[name].arithmetic = "device:cuda"
        set_metadata(tmp, package_metadata(info, precision, model, parity=report.to_dict()))
    return report


GPU_PROVIDER_CHECKS = {"onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}


def gpu_provider_backends(package: ModelPackage, threads: int | None = None) -> list[tuple[str, object]]:
    """ONNX Runtime sessions on each GPU provider this machine can start, by companion name (none without a GPU)."""
    have = available_providers()
    wanted = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
    backends = []
    for name, device in GPU_PROVIDER_CHECKS.items():
        if wanted[name] not in have:
            continue
        try:
            backends.append((name, open_backend(package, device=device, threads=threads, backend="onnxruntime")))
        except BackendUnavailable:  # installed but no GPU answers: nothing to check here
            continue
    return backends
