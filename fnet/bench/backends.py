"""fnet-bench's backends by name, each built through the toolkit's own code (open_backend, FftBackend, torch).

A backend this machine cannot run raises Skipped with the reason in the user's terms (no GPU, no CuPy,
no tensorrt, a package torch cannot rebuild); a bench run reports it in one line and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.backends import Backend, open_backend
from ..runtime.errors import BackendUnavailable
from ..runtime.model_package import ModelPackage, load_model_package

# name -> the device it runs on (the JSON "device" field); torch's is chosen by --device at run time.
DEVICES = {
    "torch": None, "torch-bf16": "cuda",
    "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "cuda",
    "fft-numpy": "cpu", "fft-cupy": "cuda",
    "tensorrt-engine": "cuda",
    "torch-fp64": None,
}
BACKEND_NAMES = tuple(DEVICES)
DEFAULT_NAMES = tuple(n for n in DEVICES if n != "torch-fp64")  # float64 is the reference, not a contender
# Parity reference, first available: the torch network in float64 (the exact function: torch's own float32
# rounding on the paper network is ~1-5 km/s, more than what the backends are judged on), else ONNX Runtime
# CPU (the package as exported).
REFERENCES = ("torch-fp64", "onnxruntime-cpu")
# Why --model never gets a torch backend: the export folds BatchNorm into the convolutions and renames the
# weights (onnx::Conv_115 ...), so the package's initializers are no torch state_dict and the network cannot
# be rebuilt from it without a graph-to-torch converter.
NO_TORCH_FOR_PACKAGES = ("torch eager needs the torch network, which an ONNX package does not carry (BatchNorm is "
                         "folded into the convolutions at export); use --arch NAME --random-weights to compare "
                         "with torch")


class Skipped(Exception):
    """A backend this machine cannot run; the message says why."""


@dataclass
class Subject:
    """What a bench run measures: the package every backend runs, the same network in torch (--arch), an engine."""

    package: ModelPackage
    torch_model: Any = None  # torch.nn.Module with the package's weights, or None (--model)
    engine: Path | None = None  # --engine PATH
    workdir: Path | None = None  # where an engine built for this run goes
    torch_device: str = "cpu"


def backend_device(name: str, subject: Subject) -> str:
    """The device a named backend runs on."""
    return DEVICES[name] or subject.torch_device


def open_named(name: str, subject: Subject, threads: int | None, batch_sizes: list[int],
               parity_x: np.ndarray) -> Backend:
    """Build the named backend for the subject; Skipped (with the reason) when it cannot run here."""
    package = subject.package
    try:
        if name in ("torch", "torch-bf16", "torch-fp64"):
            if subject.torch_model is None:
                raise Skipped(NO_TORCH_FOR_PACKAGES)
            from .torch_net import Float64Reference, torch_backend

            if name == "torch-fp64":
                return Float64Reference(subject.torch_model, package.head["output"], subject.torch_device)

            return torch_backend(subject.torch_model, package.head["output"], subject.torch_device,
                                 bf16=name == "torch-bf16", threads=threads)
        if name.startswith("onnxruntime-"):
            device = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}[name]
            if package.is_engine:
                raise Skipped(f"{package.path} is a TensorRT engine; {name} runs ONNX packages (give the ONNX "
                              "package with --model and the engine with --engine)")
            return open_backend(package, device=device, threads=threads, backend="onnxruntime")
        if name.startswith("fft-"):
            from ..runtime.fft_backend import FftBackend

            if package.is_engine:
                raise Skipped(f"{package.path} is a TensorRT engine; the FFT backend runs ONNX packages")
            return FftBackend(package, device="cpu" if name == "fft-numpy" else "cuda", threads=threads)
        if name == "tensorrt-engine":
            return open_backend(_engine_package(subject, batch_sizes, parity_x), device="tensorrt")
    except (BackendUnavailable, ImportError, OSError) as exc:
        raise Skipped(str(exc) or type(exc).__name__) from None
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")


def _engine_package(subject: Subject, batch_sizes: list[int], parity_x: np.ndarray) -> ModelPackage:
    """The engine to run: --engine, a --model that is one, or one built here from the ONNX package (TensorRT + GPU)."""
    if subject.engine is not None:
        return load_model_package(subject.engine)
    if subject.package.is_engine:
        return subject.package
    try:
        import tensorrt  # noqa: F401  (checked first: the reason to give when it is missing)
    except ImportError:
        raise Skipped("no --engine given, and building one needs the tensorrt package "
                      "(pip install 'fnet-qso[gpu]') and an NVIDIA GPU") from None
    from ..export.tensorrt_build import build_engine, tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        raise Skipped(f"no --engine given, and one cannot be built here: {why}")
    path = Path(subject.workdir) / (Path(subject.package.path).stem + ".plan")
    # force: the engine is kept whatever its parity, since reporting parity is this benchmark's job.
    largest = max(max(batch_sizes), len(parity_x))
    build_engine(subject.package.path, path, parity_x, max_batch=largest, opt_batch=max(batch_sizes), force=True)
    return load_model_package(path)
