"""Export a trained FNet to an ONNX model package (FP32 or FP16), checked for Δv parity before it is written.

FP16 keeps float32 input/output (Cast nodes at the boundaries) so the runtime feeds the same
arrays to every package; only the weights and the arithmetic inside the graph are half precision.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime.atomic import atomic_path
from ..runtime.backends import OnnxRuntimeBackend, run_in_batches
from ..runtime.model_package import ModelPackage
from ..runtime.onnx_wire import stamp_integrity
from ..train.evaluate_torch import reference_outputs as torch_reference
from ..train.fft_conv import plain_copy
from ..train.package import PackageInfo
from ..runtime.errors import BackendUnavailable
from ..runtime.fft_backend import FftBackend
from .parity import TOLERANCES, ParityReport, compare_outputs

PRECISIONS = ("fp32", "fp16")
OPSET = 17


class ExportParityError(RuntimeError):
    """The exported artefact's redshifts differ from the reference beyond tolerance; nothing was written."""

    def __init__(self, path: Path, report: ParityReport):
        self.report = report
        super().__init__(f"{path}: not written, {report.summary()} (tolerance {report.tolerance})")


class _HalfPrecision(nn.Module):
    """Run the wrapped network in float16 while keeping float32 input and output."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


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
    """Write the network as an ONNX graph (input 'flux' (N, 1, npix), dynamic batch), FP32 or FP16 inside."""
    net = copy.deepcopy(model).eval().float().cpu()
    if precision == "fp16":
        net = _HalfPrecision(net.half()).eval()
    dummy = torch.zeros(2, 1, npix)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(path), input_names=["flux"], output_names=[output],
                          dynamic_axes={"flux": {0: "batch"}, output: {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def export_onnx(model: nn.Module, info: PackageInfo, out_path: str | Path, parity_x: np.ndarray, *,
                precision: str = "fp32", tolerance: dict | None = None, force: bool = False,
                reference_outputs: dict[str, np.ndarray] | None = None, threads: int | None = None,
                check_fft: bool = False) -> ParityReport:
    """Export, run the file through onnxruntime on parity_x, compare with torch, and write only on PASS.

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
        set_metadata(tmp, info.metadata(precision))
        package = ModelPackage.from_metadata(tmp, info.metadata(precision))
        backend = OnnxRuntimeBackend(package, ["CPUExecutionProvider"], threads)
        candidate = run_in_batches(backend.run, parity_x)
        report = compare_outputs(reference_outputs, candidate, info.head, reference_name="torch-fp64",
                                 candidate_name=f"onnxruntime-cpu-{precision}", tolerance=tolerance)
        if not report.passed and not force:
            raise ExportParityError(out_path, report)
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
        set_metadata(tmp, info.metadata(precision, parity=report.to_dict()))
    return report
