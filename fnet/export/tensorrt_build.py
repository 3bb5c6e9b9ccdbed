"""Build a TensorRT engine from an ONNX model package and check its Δv parity before writing it.

Needs an NVIDIA GPU and the `tensorrt` package (pip install 'fnet-qso[gpu]'). The engine is
specific to the GPU model and TensorRT version it was built with; its metadata travels in a
JSON sidecar (`<engine>.json`) because engines cannot carry ONNX metadata_props.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..runtime.atomic import atomic_path, atomic_write_text
from ..runtime.backends import OnnxRuntimeBackend, TensorRTEngineBackend
from ..runtime.errors import BackendUnavailable
from ..runtime.model_package import ModelPackage, engine_sidecar, load_model_package
from .onnx_export import ExportParityError
from ..runtime.backends import run_in_batches
from .parity import TOLERANCES, ParityReport, compare_outputs


def tensorrt_available() -> tuple[bool, str]:
    """Whether an engine can be built here, and why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed (pip install 'fnet-qso[gpu]')"
    try:
        from ..runtime.backends import CudaRuntime

        CudaRuntime()
    except BackendUnavailable as exc:
        return False, str(exc)
    return True, ""


def build_engine(onnx_path: str | Path, engine_path: str | Path, parity_x: np.ndarray, *, fp16: bool = False,
                 max_batch: int = 256, opt_batch: int = 64, workspace_gib: float = 4.0,
                 tolerance: dict | None = None, force: bool = False) -> ParityReport:
    """Compile onnx_path into a TensorRT engine, compare it with onnxruntime-CPU, write engine + sidecar on PASS."""
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    package = load_model_package(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # TF32 is on by default for FP32 layers; an "fp32" engine must really compute in FP32
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    npix = package.grid.npix
    opt_batch = min(max(1, int(opt_batch)), int(max_batch))  # TensorRT requires min <= opt <= max
    profile.set_shape(package.input_name, (1, 1, npix), (opt_batch, 1, npix), (max_batch, 1, npix))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")

    precision = "fp16" if fp16 else "fp32"
    sidecar_meta = dict(package.metadata)
    sidecar_meta["fnet.precision"] = precision
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
        engine_pkg = ModelPackage.from_metadata(tmp, sidecar_meta)
        candidate = run_in_batches(TensorRTEngineBackend(engine_pkg).run, parity_x, batch_size=min(64, max_batch))
        reference = run_in_batches(OnnxRuntimeBackend(package, ["CPUExecutionProvider"]).run, parity_x)
        report = compare_outputs(reference, candidate, package.head, reference_name=f"onnxruntime-cpu:{onnx_path.name}",
                                 candidate_name=f"tensorrt-{precision}", tolerance=tolerance or TOLERANCES[precision])
        if not report.passed and not force:
            raise ExportParityError(engine_path, report)
        sidecar_meta["fnet.parity"] = json.dumps(report.to_dict())
        sidecar_meta["fnet.tensorrt"] = json.dumps({"version": trt.__version__, "max_batch": max_batch,
                                                    "opt_batch": opt_batch, "source_onnx_sha256": package.sha256,
                                                    # the runtime refuses a sidecar beside another engine
                                                    "engine_sha256": hashlib.sha256(bytes(serialized)).hexdigest()})
        with atomic_path(engine_sidecar(engine_path)) as side:
            atomic_write_text(side, json.dumps(sidecar_meta, indent=1))
    return report
