"""Build a TensorRT engine from an ONNX model package, check its precision and Δv parity, then write it.

Needs an NVIDIA GPU and the `tensorrt` package (pip install 'fnet-qso[gpu]'), TensorRT 10.x or 11.x.
The network is strongly typed: each layer computes in the type the ONNX graph gives it (the FP16
package is FP16 inside, with FP32 input/output casts, and may keep some layers FP32), so no precision
builder flag is ever set (BuilderFlag.FP16 is deprecated since 10.12 and removed in 11). What the
engine really computes in is then read back from the engine inspector and checked, not assumed.

The engine is specific to the GPU model and TensorRT version it was built with; its metadata travels
in a JSON sidecar (`<engine>.json`, engines cannot carry ONNX metadata_props) that records them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from ..runtime.atomic import atomic_path, atomic_write_text
from ..runtime.backends import OnnxRuntimeBackend, run_in_batches
from ..runtime.errors import BackendUnavailable
from ..runtime.model_package import ModelPackage, engine_sidecar, load_model_package
from .onnx_export import ExportParityError
from .parity import TOLERANCES, ParityReport, compare_outputs


class EnginePrecisionError(RuntimeError):
    """The built engine does not compute in the precision its package promises; nothing was written."""


def tensorrt_available() -> tuple[bool, str]:
    """Whether an engine can be built here, and why not."""
    try:
        importlib.import_module("tensorrt")  # importable at all, before asking for a GPU
    except ImportError:
        return False, "the tensorrt package is not installed (pip install 'fnet-qso[gpu]')"
    try:
        from ..runtime.tensorrt_engine import CudaRuntime

        CudaRuntime()
    except BackendUnavailable as exc:
        return False, str(exc)
    return True, ""


def profile_shapes(npix: int, max_batch: int, opt_batch: int) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) input shapes of the optimisation profile; TensorRT requires min <= opt <= max."""
    max_batch = int(max_batch)
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    opt_batch = min(max(1, int(opt_batch)), max_batch)
    return (1, 1, npix), (opt_batch, 1, npix), (max_batch, 1, npix)


def timing_cache_file(trt_version: str) -> Path:
    """Where builds with this TensorRT version keep their timing cache (beside ONNX Runtime's TensorRT caches)."""
    from ..runtime.backend_choice import cache_path

    return cache_path().parent / "tensorrt" / f"timing-{trt_version}.cache"


# --- what the engine inspector says each layer computes in ------------------------------------------------

# TensorRT 10 writes a tensor's type inside "Format/Datatype" ("Row major linear FP32", "Row major linear FP16
# format", "Channel major FP16 format where channel % 8 == 0"; Myelin layers: "Float", "Half"); TensorRT 11 splits
# it into "DataType" ("Float", "Half") and "Format". Both spellings map to TensorRT's DataType names.
_TYPE_WORDS = {"FP16": "Half", "Half": "Half", "FP32": "Float", "Float": "Float", "BFloat16": "BFloat16",
               "BF16": "BFloat16", "FP8": "FP8", "Int8": "Int8", "INT8": "Int8", "Int32": "Int32", "INT32": "Int32",
               "Int64": "Int64", "Bool": "Bool", "BOOL": "Bool", "UInt8": "UInt8"}
_TYPE_RE = re.compile(r"\b(" + "|".join(sorted(_TYPE_WORDS, key=len, reverse=True)) + r")\b")
_SKIPPED = {"Constant", "NoOp", "shape_call", "signal", "wait"}  # bookkeeping layers that compute nothing


def tensor_datatype(tensor: dict) -> str:
    """TensorRT's name for a layer tensor's type ("Half", "Float", ...), or "Unknown" when not shown."""
    raw = tensor.get("DataType") or tensor.get("Format/Datatype") or ""
    match = _TYPE_RE.search(str(raw))
    return _TYPE_WORDS[match.group(1)] if match else "Unknown"


def _kind(layer: dict) -> str | None:
    """"convolution", "matmul" or None, from the layer's ParameterType/LayerType."""
    text = f"{layer.get('ParameterType', '')} {layer.get('LayerType', '')}".lower()
    if "convolution" in text or "correlation" in text:  # TensorRT 10 names some convolutions "correlation"
        return "convolution"
    if any(word in text for word in ("matrixmultiply", "gemm", "fullyconnected", "matmul")):
        return "matmul"
    return None


def layer_precisions(information: dict, fp16: bool) -> dict:
    """Per-precision summary of an engine's layers, from the inspector's JSON, and whether it is as expected.

    Counts layers by the type of their outputs; convolutions and matrix multiplies by the type they read
    (their first input, the activation). An FP16 engine must run every convolution in Half and show some
    Half layer; an FP32 engine must have no Half tensor anywhere. A FP32 matmul in an FP16 engine is the
    mixed-precision head the FP16 package may keep: listed, not refused.
    """
    layers = information.get("Layers", []) if isinstance(information, dict) else []
    if layers and not all(isinstance(layer, dict) for layer in layers):
        raise EnginePrecisionError("the engine inspector gave layer names only (the engine was not built with "
                                   "ProfilingVerbosity.DETAILED): its precision cannot be checked")
    layers = [layer for layer in layers if layer.get("LayerType") not in _SKIPPED]
    outputs: Counter = Counter()
    compute: dict[str, Counter] = {"convolution": Counter(), "matmul": Counter()}
    expected = "Half" if fp16 else "Float"
    unexpected = []
    for layer in layers:
        for datatype in {tensor_datatype(t) for t in layer.get("Outputs", [])}:
            outputs[datatype] += 1
        kind = _kind(layer)
        if kind is None:
            continue
        tensors = layer.get("Inputs", []) or layer.get("Outputs", [])
        datatype = tensor_datatype(tensors[0]) if tensors else "Unknown"
        compute[kind][datatype] += 1
        if datatype != expected:
            unexpected.append({"name": str(layer.get("Name", "?")), "kind": kind, "precision": datatype})
    summary = {"expected": expected, "n_layers": len(layers), "outputs": dict(outputs),
               "convolutions": dict(compute["convolution"]), "matmuls": dict(compute["matmul"]),
               "unexpected_compute": unexpected, "problem": "", "undetermined": ""}
    # Refused only on evidence: a layer seen computing in the wrong type. Where the inspector cannot show it
    # (no types at all; or fused layers, e.g. a Myelin "ForeignNode" whose boundary casts make its visible
    # inputs and outputs Float), the engine is not refused: the network is strongly typed, so its types are
    # the ONNX graph's, and the Δv gate on the device still judges it; the sidecar says what was not seen.
    known = sum(v for k, v in outputs.items() if k != "Unknown")
    if not known:
        summary["undetermined"] = (f"the engine inspector shows no layer data types ({len(layers)} layers): "
                                   "precision not checked")
    elif fp16:
        bad = [u for u in unexpected if u["kind"] == "convolution"]
        if bad:
            summary["problem"] = (f"{len(bad)} of {sum(compute['convolution'].values())} convolutions do not compute "
                                  f"in FP16 (e.g. {bad[0]['name']!r} in {bad[0]['precision']})")
        elif not outputs.get("Half"):
            summary["undetermined"] = ("no layer of the engine is seen computing in FP16 and no convolution is seen "
                                       "in FP32 (fused layers?): precision not confirmed")
    elif outputs.get("Half") or any(u["precision"] == "Half" for u in unexpected):
        summary["problem"] = f"{outputs.get('Half', 0)} layers of an FP32 engine compute in FP16"
    return summary


def inspect_engine(trt, serialized: bytes, input_name: str, shape: tuple, fp16: bool) -> dict:
    """Deserialize the engine, ask its inspector for every layer (at `shape`) and summarise the precisions."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(bytes(serialized))
    if engine is None:
        raise RuntimeError("TensorRT cannot deserialize the engine it has just built")
    context = engine.create_execution_context()
    inspector = engine.create_engine_inspector()
    # With dynamic shapes the inspector shows formats and types only for a context whose input shapes are set
    # (TensorRT docs, Engine Inspector); `execution_context` is the attribute in both 10.x and 11.x.
    if context is not None and context.set_input_shape(input_name, shape):
        inspector.execution_context = context
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        information = json.loads(text)
    except (TypeError, ValueError):
        raise EnginePrecisionError("the engine inspector's answer is not JSON: the precision cannot be checked") from None
    return layer_precisions(information, fp16)


# --- the build ---------------------------------------------------------------------------------------------

def _network_flags(trt) -> int:
    """Strongly typed: required for FP16 packages on 10.x without the deprecated FP16 flag; 11.x always is."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _configure(trt, builder, workspace_gib: float):
    """The builder config: workspace, no precision flags, no TF32, detailed layer information."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # TF32 (BuilderFlag.TF32: "Allow (but not require) computations on tensors of type DataType.FLOAT to use
    # TF32 ... Enabled by default", TensorRT 10.16 Python docs) is a math mode for FLOAT tensors, not a tensor
    # type, so a strongly typed network still gets it; it is not among the flags TensorRT 11 removes (FP16,
    # INT8, FP8, BF16, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS, DIRECT_IO: migration guide 10.x -> 11.x).
    # FP32 in the ONNX graph must mean FP32, as ONNX Runtime CPU computed it for the package's own parity gate:
    # the whole of an FP32 package, and the layers an FP16 package keeps in FP32 (its head). So it is cleared
    # for both, wherever the flag still exists.
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    # layer names, types and formats in the engine, for inspect_engine (the default shows names only)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    return config


def _load_timing_cache(config, path: Path) -> bool:
    """Give the builder the timing cache at `path` (True) or a fresh one (False: none yet, or unusable)."""
    blob = b""
    try:
        blob = path.read_bytes()
    except OSError:
        pass
    cache = None
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # noqa: BLE001  a damaged file: timed again, then overwritten
            cache = None
        # second argument ignore_mismatch=False (positional: the bindings' keyword names are not a stable API):
        # a cache from another GPU or TensorRT build is refused, it would give wrong tactic choices
        if cache is not None and config.set_timing_cache(cache, False):
            return True
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def _save_timing_cache(config, path: Path) -> bool:
    """Write the builder's timing cache back atomically; False when the cache folder is not writable."""
    try:
        data = bytes(config.get_timing_cache().serialize())
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return True
    except OSError:  # a read-only cache folder: the next build times its layers again
        return False


def _reference(package: ModelPackage, parity_x: np.ndarray) -> tuple[dict, str]:
    """Standalone builds: ONNX Runtime CPU on the FP32 package (the sibling -fp32.onnx of an FP16 one)."""
    path = Path(package.path)
    source = package
    if package.metadata.get("fnet.precision", "fp32") != "fp32":
        sibling = path.with_name(path.name.replace("-fp16", "-fp32"))
        if sibling != path and sibling.is_file():
            candidate = load_model_package(sibling)
            if candidate.name == package.name:
                source = candidate
    outputs = run_in_batches(OnnxRuntimeBackend(source, ["CPUExecutionProvider"]).run, parity_x)
    name = f"onnxruntime-cpu:{Path(source.path).name}"
    if source is package and package.metadata.get("fnet.precision", "fp32") != "fp32":
        name += " (no FP32 package beside it: the FP16 graph itself)"
    return outputs, name


def build_engine(onnx_path: str | Path, engine_path: str | Path, parity_x: np.ndarray, *, fp16: bool | None = None,
                 max_batch: int = 256, opt_batch: int = 64, workspace_gib: float = 4.0,
                 tolerance: dict | None = None, force: bool = False, reference_outputs: dict | None = None,
                 reference_name: str = "torch-fp64") -> ParityReport:
    """Compile onnx_path into a TensorRT engine, check its precision and its Δv against the reference, write on PASS.

    reference_outputs: the parity reference on parity_x (fnet-export passes the float64 PyTorch network's,
    named reference_name); without it, ONNX Runtime CPU on the FP32 package. fp16: the precision expected
    (default: the package's fnet.precision); it is checked in the built engine, never requested by a flag.
    force: write the engine even when parity or the precision check fails (the sidecar records both).
    """
    import tensorrt as trt

    from ..runtime.tensorrt_engine import CudaRuntime, TensorRTEngineBackend

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    package = load_model_package(onnx_path)
    declared = package.metadata.get("fnet.precision", "fp32")
    if fp16 is None:
        fp16 = declared == "fp16"
    elif fp16 != (declared == "fp16"):
        raise ValueError(f"{onnx_path} is an {declared} package; a strongly typed engine computes in the ONNX "
                         f"graph's own types, so it cannot be built as {'fp16' if fp16 else 'fp32'}")
    precision = "fp16" if fp16 else "fp32"
    if reference_outputs is not None and len(reference_outputs[package.head["output"]]) != len(parity_x):
        raise ValueError("reference_outputs must hold one row per parity input")
    device = CudaRuntime().device_facts()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = _configure(trt, builder, workspace_gib)
    cache_file = timing_cache_file(trt.__version__)
    cache_loaded = _load_timing_cache(config, cache_file)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(package.grid.npix, max_batch, opt_batch)
    profile.set_shape(package.input_name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    serialized = bytes(serialized)
    cache_saved = _save_timing_cache(config, cache_file)

    precisions = inspect_engine(trt, serialized, package.input_name, shapes[1], fp16)
    if precisions["problem"] and not force:
        raise EnginePrecisionError(f"{engine_path}: not written: the {precision} engine fails its precision "
                                   f"check: {precisions['problem']}")
    precisions["passed"] = not precisions["problem"]
    if precisions["undetermined"]:
        print(f"fnet-export: warning: {engine_path.name}: {precisions['undetermined']}", file=sys.stderr)

    sidecar_meta = dict(package.metadata)
    sidecar_meta["fnet.precision"] = precision
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(serialized)
        engine_pkg = ModelPackage.from_metadata(tmp, sidecar_meta)
        backend = TensorRTEngineBackend(engine_pkg)
        try:
            candidate = run_in_batches(backend.run, parity_x, batch_size=shapes[2][0])
        finally:
            backend.close()
        if reference_outputs is None:
            reference_outputs, reference_name = _reference(package, parity_x)
        report = compare_outputs(reference_outputs, candidate, package.head, reference_name=reference_name,
                                 candidate_name=f"tensorrt-{precision}", tolerance=tolerance or TOLERANCES[precision])
        report.arithmetic = f"device:{device['gpu']}"
        if not report.passed and not force:
            raise ExportParityError(engine_path, report)
        sidecar_meta["fnet.parity"] = json.dumps(report.to_dict())
        sidecar_meta["fnet.tensorrt"] = json.dumps({
            "version": trt.__version__, **device, "max_batch": shapes[2][0], "opt_batch": shapes[1][0],
            "strongly_typed": True, "tf32": False if hasattr(trt.BuilderFlag, "TF32") else None,
            "source_onnx_sha256": package.sha256, "layer_precisions": precisions,
            "timing_cache": {"path": str(cache_file), "loaded": cache_loaded, "saved": cache_saved},
            # the runtime refuses a sidecar beside another engine
            "engine_sha256": hashlib.sha256(serialized).hexdigest()})
        with atomic_path(engine_sidecar(engine_path)) as side:
            atomic_write_text(side, json.dumps(sidecar_meta, indent=1))
    return report
