"""Inference backends behind one interface: ONNX Runtime (CPU, CUDA, TensorRT EP) and TensorRT engines.

Every backend takes the normalised batch (n, npix) float32 and returns the model's outputs
by name. Which output means what is the head's business (fnet.runtime.heads), not the backend's.
The TensorRT engine backend and its CUDA runtime calls live in fnet.runtime.tensorrt_engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .errors import BackendUnavailable
from .model_package import ModelPackage
from .ort_install import install_problem, tensorrt_provider_problem

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
# ONNX Runtime is fed batches of exactly this many spectra (the last one zero-padded). Its CPU kernels
# partition work by batch shape, so a spectrum's Z could otherwise change in the 8th digit with
# --batch-size (issue #6 reported 41 of 2876 rows differing by <= 3e-8); with one shape, a row's result does not
# depend on the batch it travels in or on its neighbours (tests/test_reliability.py checks this).
# Small on the CPU (padding costs little at --batch-size 1), larger on GPUs (fewer launches).
FIXED_BATCH = {"cpu": 8, "gpu": 64}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def run_in_batches(run, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Call a backend's run (or any function of that shape) batch by batch and concatenate its outputs by name.

    The one batch-and-concatenate of the toolkit: export parity, checkpoint evaluation and the test-split
    report all go through it.
    """
    parts: dict[str, list] = {}
    for start in range(0, len(x), batch_size):
        for name, value in run(x[start:start + batch_size]).items():
            parts.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
    return {name: np.concatenate(values) for name, values in parts.items()}


class Backend(ABC):
    """Runs a model package on a batch of normalised spectra."""

    name: str = "backend"

    @abstractmethod
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs (float32 numpy arrays by output name) for input x of shape (n, npix)."""

    def describe(self) -> str:
        """Human-readable backend description for logs and catalog headers."""
        return self.name


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def provider_options(name: str, package: ModelPackage):
    """An execution provider with the options this toolkit needs, as ONNX Runtime takes them: (name, {...}) or name.

    CUDA: TF32 off for FP32 packages (the provider's default is TF32, ~1e-3 relative: not the FP32 the parity
    gate judged). TensorRT: engines and timing cache kept on disk per model (no rebuild on every run), and one
    profile at the fixed GPU batch every call is padded to (no rebuild when the last batch is smaller).
    """
    fp32 = package.metadata.get("fnet.precision", "fp32") == "fp32"
    if name == "CUDAExecutionProvider":
        return (name, {"use_tf32": "0"}) if fp32 else name
    if name == "TensorrtExecutionProvider":
        from .backend_choice import cache_path

        cache = cache_path().parent / "tensorrt" / (package.sha256[:16] or "unhashed")
        shape = f"{package.input_name}:{FIXED_BATCH['gpu']}x1x{package.grid.npix}"
        return (name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                       "trt_profile_min_shapes": shape, "trt_profile_opt_shapes": shape,
                       "trt_profile_max_shapes": shape})
    return name


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session with a chosen list of execution providers."""

    def __init__(self, package: ModelPackage, providers: list, threads: int | None = None):
        from .ort_install import import_onnxruntime

        ort = import_onnxruntime()
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if any(n in GPU_PROVIDERS for n in names) and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from pip wheels (nvidia-*) are found only once loaded this way (ORT >= 1.21)
                ort.preload_dlls()
            except Exception:  # noqa: BLE001  system libraries then, or the session says what is missing
                pass
        providers = [provider_options(p, package) if isinstance(p, str) else p for p in providers]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(package.path), options, providers=providers)
        self.input = self.session.get_inputs()[0]
        if self.input.name != package.input_name:
            raise BackendUnavailable(f"{package.path}: graph input is {self.input.name!r}, "
                                     f"metadata says {package.input_name!r}")
        self.input_dtype = _ORT_TYPES.get(self.input.type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        self.fixed_batch = FIXED_BATCH["cpu" if self.providers == ["CPUExecutionProvider"] else "gpu"]
        self.name = "onnxruntime[" + ",".join(p.replace("ExecutionProvider", "") for p in self.providers) + "]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the session on (n, npix) input in fixed-size batches, adding the channel axis the network expects."""
        n, size = len(x), self.fixed_batch
        if n == 0:  # outputs with no rows, shaped as the model makes them
            return {k: v[:0] for k, v in self.run(np.zeros((1, x.shape[1]), np.float32)).items()}
        padded = np.zeros((-(-n // size) * size, 1, x.shape[1]), dtype=self.input_dtype)
        padded[:n, 0, :] = x
        parts = [self.session.run(self.output_names, {self.input.name: padded[i:i + size]})
                 for i in range(0, len(padded), size)]
        return {name: np.concatenate([p[k] for p in parts])[:n].astype(np.float32)
                for k, name in enumerate(self.output_names)}


def __getattr__(name: str):
    """TensorRTEngineBackend and CudaRuntime, still importable from here (they moved to tensorrt_engine).

    Lazily: tensorrt_engine subclasses this module's Backend, so importing it at the top would be circular.
    """
    if name in ("TensorRTEngineBackend", "CudaRuntime"):
        from . import tensorrt_engine

        return getattr(tensorrt_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    from .ort_install import import_onnxruntime

    return list(import_onnxruntime().get_available_providers())


BACKENDS = ("auto", "onnxruntime", "fft", "tensorrt")


def open_backend(package: ModelPackage, device: str = "auto", threads: int | None = None,
                 backend: str = "onnxruntime") -> Backend:
    """The backend for a (backend, device) choice; see fnet-run --help (whose default is backend "auto").

    device: auto = CUDA when this onnxruntime has it and a GPU answers, else CPU. backend: "onnxruntime";
    "fft" = the package's graph with FFT convolutions (fnet.runtime.fft_backend) on numpy, or CuPy on
    cuda; "tensorrt" = a TensorRT engine file, or ONNX Runtime's TensorRT provider for an ONNX package;
    "auto" = an engine's TensorRT, else the faster of ONNX Runtime and the FFT backend for this model on
    this device (fnet.runtime.backend_choice: a rule, then a short measurement cached per model and machine).
    `--device tensorrt` is the older spelling of `--backend tensorrt`.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        if device == "cpu":
            raise BackendUnavailable("--backend tensorrt needs a GPU (--device cuda or auto), not --device cpu")
        device = "tensorrt"
    if backend == "fft":
        from .fft_backend import FftBackend

        if package.is_engine:
            raise BackendUnavailable(f"{package.path} is a TensorRT engine; the FFT backend runs ONNX packages")
        if device == "tensorrt":
            raise BackendUnavailable("--backend fft runs on --device cpu or cuda, not tensorrt")
        if device == "auto":  # CuPy on a GPU when both answer, else numpy
            try:
                return FftBackend(package, "cuda", threads)
            except BackendUnavailable:
                device = "cpu"
        return FftBackend(package, device, threads)
    if package.is_engine:
        if device not in ("auto", "tensorrt"):
            raise BackendUnavailable(f"{package.path} is a TensorRT engine; it runs only with --device tensorrt/auto")
        from .tensorrt_engine import TensorRTEngineBackend

        return TensorRTEngineBackend(package)
    have = available_providers()
    if device == "tensorrt":
        if "TensorrtExecutionProvider" not in have:
            raise BackendUnavailable("--backend tensorrt: this onnxruntime has no TensorrtExecutionProvider "
                                     "(pip install 'fnet-qso[gpu]'), or pass a .engine built by fnet-export"
                                     + _install_note())
        mismatch = tensorrt_provider_problem()
        if mismatch:  # the provider would fail to load libnvinfer later, with a message naming only the library
            raise BackendUnavailable(f"--backend tensorrt: {mismatch}")
        return _checked(OnnxRuntimeBackend(package, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                     "CPUExecutionProvider"], threads), "TensorrtExecutionProvider")
    ort, ort_device = None, "cpu"
    if device == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise BackendUnavailable("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                                     "(pip install 'fnet-qso[gpu]' on a machine with an NVIDIA GPU)" + _install_note())
        ort = _checked(OnnxRuntimeBackend(package, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads),
                       "CUDAExecutionProvider")
        ort_device = "cuda"
    elif device == "auto" and "CUDAExecutionProvider" in have:
        # CUDA when the build has it and a GPU answers; TensorRT EP only on request (long first build)
        try:
            candidate = OnnxRuntimeBackend(package, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads)
            if "CUDAExecutionProvider" in candidate.providers:
                ort, ort_device = candidate, "cuda"
        except Exception:  # a CUDA build on a machine without a usable GPU: fall back quietly to CPU
            pass
    ort = ort or OnnxRuntimeBackend(package, ["CPUExecutionProvider"], threads)
    if backend == "onnxruntime":
        return ort
    from .backend_choice import choose

    return choose(package, ort, ort_device, threads)


def _install_note() -> str:
    """'; <why>' when two ONNX Runtime distributions are installed (the usual reason a GPU provider is missing)."""
    problem = install_problem()
    return f"; {problem}" if problem else ""


def _checked(backend: OnnxRuntimeBackend, provider: str) -> OnnxRuntimeBackend:
    """Refuse a session where onnxruntime silently fell back to CPU instead of the requested provider."""
    if provider not in backend.providers:
        raise BackendUnavailable(f"{provider} is installed but could not start (no GPU or driver?); "
                                 f"session providers: {backend.providers}")
    return backend
