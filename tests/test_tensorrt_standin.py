"""TensorRT engine build and engine backend (#8 items 1, 4, 5 and the sidecar), on stand-in tensorrt 10.16/11.1.

The stand-ins (tests/standins) enforce what the real bindings do: no BuilderFlag.FP16 on 11.x, profile
min <= opt <= max, layer details only with DETAILED profiling verbosity, no execution on the default
stream; libcudart's "device" memory is host memory, copies wait on their stream until it is synchronized.
So the whole path (ONNX -> strongly typed build -> precision check -> engine + sidecar -> the runtime's
engine backend -> parity) runs here on generated models, without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # noqa: E402  (the exporter needs it; the runtime does not)

from fnet.export.tensorrt_build import (EnginePrecisionError, build_engine, layer_precisions, profile_shapes,
                                        tensor_datatype, tensorrt_available, timing_cache_file)
from fnet.metrics import velocity_offsets
from fnet.runtime import tensorrt_engine
from fnet.runtime.backends import OnnxRuntimeBackend, open_backend
from fnet.runtime.errors import BackendUnavailable, ModelPackageError
from fnet.runtime.grid import Grid
from fnet.runtime.heads import decode
from fnet.runtime.model_package import engine_sidecar, load_model_package
from standins.cudart_standin import FakeCudart
from standins.tensorrt_standin import make_tensorrt

GRID = Grid(3.5522, 8e-4, 578)
HEAD = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}
VERSIONS = ("10.16.0", "11.1.0")
N_CONV = 28  # Conv nodes of the "tiny" network's graph


@pytest.fixture(scope="module")
def tiny_net():
    from fnet.train.model import build_model

    torch.manual_seed(0)
    return build_model("tiny", HEAD, GRID).eval()


@pytest.fixture(scope="module")
def parity_x():
    from fnet.export.pipeline import parity_inputs

    return parity_inputs(GRID, NORM, [], n_simulated=24, seed=3)[0]


@pytest.fixture(scope="module")
def packages(tmp_path_factory, tiny_net, parity_x):
    """FP32 and FP16 ONNX packages of the tiny network, side by side as fnet-export names them."""
    from fnet.export.onnx_export import export_onnx
    from fnet.train.package import PackageInfo

    info = PackageInfo("tiny-trt", "0.0.1", "tiny", GRID, NORM, HEAD, (0.0, 7.0), training={"note": "test"})
    out = tmp_path_factory.mktemp("packages")
    paths = {p: out / f"tiny-trt-{p}.onnx" for p in ("fp32", "fp16")}
    for precision, path in paths.items():
        export_onnx(tiny_net, info, path, parity_x, precision=precision)
    return paths


@pytest.fixture(params=VERSIONS)
def trt(request, monkeypatch, tmp_path):
    """A stand-in tensorrt of each version in sys.modules, its libcudart, and a fresh cache folder."""
    cudart = FakeCudart()
    module = make_tensorrt(request.param, cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(tensorrt_engine, "load_cudart", lambda: cudart)
    monkeypatch.setenv("FNET_CACHE_DIR", str(tmp_path / "cache"))
    return SimpleNamespace(module=module, cudart=cudart, state=module._standin, version=request.param)


def _sidecar(engine) -> dict:
    meta = json.loads(engine_sidecar(engine).read_text())
    return {**meta, "fnet.tensorrt": json.loads(meta["fnet.tensorrt"]), "fnet.parity": json.loads(meta["fnet.parity"])}


def test_export_builds_both_engines_strongly_typed_gated_on_torch(trt, tmp_path, monkeypatch, tiny_net):
    from fnet.export import pipeline

    meta = {"name": "tiny", "arch": "tiny", "grid": GRID.to_dict(), "normalisation": NORM, "head": dict(HEAD),
            "z_range": [0.0, 7.0], "training": {}}
    monkeypatch.setattr(pipeline, "load_model", lambda path: (tiny_net, dict(meta)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = pipeline.export_checkpoint(tmp_path / "any.pt", tmp_path / "out", precisions=("fp32", "fp16"),
                                             tensorrt=True, n_simulated=16, max_batch=32, fft=True)
    assert not [w for w in caught if "TensorRT" in str(w.message)]  # no deprecated TensorRT API was touched
    kinds = Counter(r.kind for r in results)
    # one engine per ONNX package: the other lines naming the same files (fft-fp32, ...) are not built again
    assert kinds["fft-fp32"] == 1 and kinds["onnx-fp32"] == kinds["onnx-fp16"] == 1, results
    assert kinds["tensorrt-fp32"] == kinds["tensorrt-fp16"] == 1 and len(trt.state.builds) == 2, results
    for res in (r for r in results if r.kind.startswith("tensorrt")):
        assert res.error is None and res.report.passed, res
        assert res.report.reference == "torch-fp64" and res.report.arithmetic == "device:NVIDIA H200"
        side = _sidecar(res.path)
        facts = side["fnet.tensorrt"]
        assert facts["version"] == trt.version and facts["gpu"] == "NVIDIA H200"
        assert (facts["compute_capability"], facts["cuda_runtime"], facts["cuda_driver"]) == ("9.0", "12.8", "12.9")
        assert facts["engine_sha256"] == hashlib.sha256(res.path.read_bytes()).hexdigest()
        assert (facts["max_batch"], facts["opt_batch"]) == (32, 32) and facts["strongly_typed"]
        assert side["fnet.parity"]["reference"] == "torch-fp64"
        precisions = facts["layer_precisions"]
        assert precisions["passed"] and not precisions["problem"]
        if res.kind == "tensorrt-fp16":
            assert side["fnet.precision"] == "fp16" and precisions["convolutions"] == {"Half": N_CONV}
            assert precisions["outputs"]["Half"] > 0
        else:
            assert side["fnet.precision"] == "fp32" and precisions["convolutions"] == {"Float": N_CONV}
            assert "Half" not in precisions["outputs"] and precisions["unexpected_compute"] == []
        assert load_model_package(res.path).is_engine
    # strongly typed networks, no precision flag, TF32 cleared, detailed layer information
    assert all(n["strongly_typed"] for n in trt.state.networks)
    assert all(n["flags"] == 1 << int(trt.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
               for n in trt.state.networks)
    for build in trt.state.builds:
        assert not {"FP16", "BF16", "INT8", "TF32"} & set(build["flags"]) and build["verbosity"] == "DETAILED"
    assert trt.cudart.live() == 0  # the parity run's engine backend freed its buffers and stream


def test_the_old_fp16_flag_path_breaks_on_11_and_is_deprecated_on_10(trt, packages, parity_x, tmp_path):
    module = trt.module
    builder = module.Builder(module.Logger(module.Logger.WARNING))
    config = builder.create_builder_config()
    if trt.version.startswith("11."):
        assert hasattr(module.BuilderFlag, "FP16") is False and hasattr(module.BuilderFlag, "TF32")
        with pytest.raises(AttributeError):
            config.set_flag(module.BuilderFlag.FP16)  # what build_engine did before: an AttributeError on 11
    else:
        with pytest.warns(DeprecationWarning, match="weakly typed"):
            weak = builder.create_network(0)
        with pytest.warns(DeprecationWarning, match="FP16"):
            config.set_flag(module.BuilderFlag.FP16)
        parser = module.OnnxParser(weak, None)
        assert parser.parse(packages["fp32"].read_bytes())
        strong = builder.create_network(1 << int(module.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        module.OnnxParser(strong, None).parse(packages["fp32"].read_bytes())
        assert builder.build_serialized_network(strong, config) is None  # FP16 flag + strong typing: refused
    report = build_engine(packages["fp16"], tmp_path / "m.engine", parity_x, max_batch=16)  # the new path works
    assert report.passed and _sidecar(tmp_path / "m.engine")["fnet.precision"] == "fp16"


@pytest.mark.parametrize("max_batch", [32, 256])
def test_profile_min_opt_max(trt, packages, parity_x, tmp_path, max_batch):
    low, opt, high = profile_shapes(GRID.npix, max_batch, 64)
    assert low == (1, 1, GRID.npix) and opt == (min(64, max_batch), 1, GRID.npix) and high == (max_batch, 1, GRID.npix)
    engine = tmp_path / "m.engine"
    report = build_engine(packages["fp32"], engine, parity_x, max_batch=max_batch, opt_batch=64)
    # standalone (no reference given): ONNX Runtime CPU on the FP32 package, named so
    assert report.passed and report.reference == f"onnxruntime-cpu:{packages['fp32'].name}"
    plan = trt.module.Runtime(None).deserialize_cuda_engine(engine.read_bytes())
    assert plan.get_tensor_profile_shape("flux", 0) == [low, opt, high]
    profile = trt.module.Builder(None).create_optimization_profile()
    with pytest.raises(ValueError, match="min <= opt <= max"):  # the stand-in checks what TensorRT checks
        profile.set_shape("flux", opt, low, high)  # min above opt
    with pytest.raises(ValueError):
        profile_shapes(GRID.npix, 0, 64)


def test_standalone_fp16_build_takes_the_fp32_package_beside_it_as_reference(trt, packages, parity_x, tmp_path):
    report = build_engine(packages["fp16"], tmp_path / "m.engine", parity_x, max_batch=32)
    assert report.passed and report.reference == f"onnxruntime-cpu:{packages['fp32'].name}"
    with pytest.raises(ValueError, match="fp16 package"):
        build_engine(packages["fp16"], tmp_path / "x.engine", parity_x, fp16=False)


def test_timing_cache_is_written_then_reused(trt, packages, parity_x, tmp_path):
    cache = timing_cache_file(trt.version)
    assert cache.parent.parent == tmp_path / "cache" and not cache.exists()
    build_engine(packages["fp32"], tmp_path / "a.engine", parity_x, max_batch=16)
    first = trt.state.builds[-1]
    assert cache.is_file() and first["cache_hits"] == 0 and first["timed"] > 0
    assert _sidecar(tmp_path / "a.engine")["fnet.tensorrt"]["timing_cache"]["loaded"] is False
    build_engine(packages["fp32"], tmp_path / "b.engine", parity_x, max_batch=16)
    second = trt.state.builds[-1]
    assert second["cache_hits"] == first["timed"] and second["timed"] == 0
    assert _sidecar(tmp_path / "b.engine")["fnet.tensorrt"]["timing_cache"]["loaded"] is True
    # a cache from another TensorRT version is refused (ignore_mismatch=False), timed afresh, then replaced
    other = make_tensorrt("9.9.9", trt.cudart).Builder(None).create_builder_config()
    cache.write_bytes(other.create_timing_cache(b"").serialize())
    build_engine(packages["fp32"], tmp_path / "c.engine", parity_x, max_batch=16)
    assert trt.state.builds[-1]["cache_hits"] == 0
    assert json.loads(cache.read_bytes().split(b"\0", 1)[1])["version"] == trt.version


def test_an_engine_whose_inspector_shows_the_wrong_precision_is_refused(trt, packages, parity_x, tmp_path):
    trt.state.inspector_conv_datatype = "Float"  # an "FP16" engine that computes its convolutions in FP32
    engine = tmp_path / "m.engine"
    with pytest.raises(EnginePrecisionError, match=f"{N_CONV} of {N_CONV} convolutions do not compute in FP16"):
        build_engine(packages["fp16"], engine, parity_x, max_batch=16)
    trt.state.inspector_conv_datatype = "Half"  # an "FP32" engine with FP16 layers
    with pytest.raises(EnginePrecisionError, match="of an FP32 engine compute in FP16"):
        build_engine(packages["fp32"], engine, parity_x, max_batch=16)
    assert not engine.exists() and not engine_sidecar(engine).exists()
    report = build_engine(packages["fp32"], engine, parity_x, max_batch=16, force=True)  # forced: recorded
    assert report.passed and _sidecar(engine)["fnet.tensorrt"]["layer_precisions"]["passed"] is False


def test_layer_precision_parsing_on_the_inspectors_real_strings():
    for text, datatype in (("Row major linear FP32", "Float"), ("Row major linear FP16 format", "Half"),
                           ("Channel major FP16 format where channel % 8 == 0", "Half"), ("Half", "Half"),
                           ("Float", "Float"), ("Row major linear BFloat16 format", "BFloat16"),
                           ("Row major linear Int32", "Int32")):
        assert tensor_datatype({"Format/Datatype": text}) == datatype, text
    assert tensor_datatype({"DataType": "Half", "Format": "Row major linear FP16 format (kLINEAR)"}) == "Half"
    assert tensor_datatype({"Name": "x", "Dimensions": [-1, 1, 578]}) == "Unknown"
    with pytest.raises(EnginePrecisionError, match="layer names only"):
        layer_precisions({"Layers": ["conv1", "conv2"]}, fp16=True)
    # what the inspector cannot show is recorded, not refused (the Δv gate on the device still judges the engine)
    blind = layer_precisions({"Layers": [{"Name": "c", "LayerType": "CaskConvolution", "Inputs": [{}],
                                          "Outputs": [{}]}]}, True)
    assert not blind["problem"] and "no layer data types" in blind["undetermined"]
    fused = layer_precisions({"Layers": [{"Name": "{ForeignNode[conv1...head]}", "LayerType": "Myelin",
                                          "Inputs": [{"Format/Datatype": "Float"}],
                                          "Outputs": [{"Format/Datatype": "Float"}]}]}, True)
    assert not fused["problem"] and "not confirmed" in fused["undetermined"]
    head = {"Name": "head", "LayerType": "CaskGemmMatrixMultiply", "Inputs": [{"DataType": "Float"}],
            "Outputs": [{"DataType": "Float"}]}
    conv = {"Name": "c", "LayerType": "CaskConvolution", "Inputs": [{"DataType": "Half"}],
            "Outputs": [{"DataType": "Half"}]}
    mixed = layer_precisions({"Layers": [conv, head]}, fp16=True)  # FP16 convolutions, FP32 head: accepted
    assert not mixed["problem"] and mixed["unexpected_compute"] == [{"name": "head", "kind": "matmul",
                                                                     "precision": "Float"}]


def test_the_engine_backend_matches_onnxruntime_and_allocates_once(trt, packages, parity_x, tmp_path):
    engine = tmp_path / "m.engine"
    build_engine(packages["fp32"], engine, parity_x, max_batch=32)
    package = load_model_package(engine)
    reference = OnnxRuntimeBackend(load_model_package(packages["fp32"]), ["CPUExecutionProvider"])
    cudart = trt.cudart
    calls_before, ops_before = Counter(cudart.calls), len(cudart.ops)
    backend = open_backend(package, "auto")
    assert isinstance(backend, tensorrt_engine.TensorRTEngineBackend) and backend.max_batch == 32
    x = np.concatenate([parity_x, parity_x])[:35]
    for n in (1, 7, 35, 0):  # 35 = the profile's largest batch + 3: two slices
        out, ref = backend.run(x[:n]), reference.run(x[:n])
        assert out["logits"].shape == (n, 64) and out["logits"].dtype == np.float32
        assert np.allclose(out["logits"], ref["logits"], atol=1e-5)
        if n:
            dv = velocity_offsets(decode(out, HEAD).z, decode(ref, HEAD).z)
            assert np.max(np.abs(dv)) <= 1.0
    calls = Counter(cudart.calls) - calls_before
    # allocated once, at the largest batch: one device and one pinned buffer per tensor (flux, logits), one stream
    assert calls["cudaMalloc"] == 2 and calls["cudaHostAlloc"] == 2 and calls["cudaStreamCreateWithFlags"] == 1
    assert sorted(n for kind, n in cudart.allocations[-4:]) == sorted([32 * 578 * 4] * 2 + [32 * 64 * 4] * 2)
    stream = backend._stream
    ops = cudart.ops[ops_before:]
    assert stream and {op.stream for op in ops} == {stream}  # copies, execution and syncs on that one stream
    assert all(op.pinned for op in ops if op.kind in ("H2D", "D2H"))
    assert [op.kind for op in ops[:4]] == ["H2D", "execute", "D2H", "synchronize"]
    assert [b for s, b in trt.state.executions[-5:]] == [1, 7, 32, 3, 1]  # 0 rows: one row run, none returned
    assert all(s == stream for s, _ in trt.state.executions[-5:])
    assert backend.context.execute_async_v3(0) is False  # the stand-in refuses the default stream
    backend.close()
    backend.close()  # idempotent
    assert cudart.live() == 0
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(x[:1])


def test_the_fp16_engine_runs_the_fp16_graph(trt, packages, parity_x, tmp_path):
    engine = tmp_path / "m16.engine"
    build_engine(packages["fp16"], engine, parity_x, max_batch=8)
    backend = open_backend(load_model_package(engine), "tensorrt")
    reference = OnnxRuntimeBackend(load_model_package(packages["fp16"]), ["CPUExecutionProvider"])
    out, ref = backend.run(parity_x[:11]), reference.run(parity_x[:11])
    assert np.max(np.abs(velocity_offsets(decode(out, HEAD).z, decode(ref, HEAD).z))) <= 1.0
    del backend  # __del__ frees what close() would
    assert trt.cudart.live() == 0


def test_mismatched_sidecars_and_foreign_engines_are_refused(trt, packages, parity_x, tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    build_engine(packages["fp32"], engine, parity_x, max_batch=8)
    good = engine.read_bytes()
    engine.write_bytes(good + b"\0")  # e.g. a crash between the two renames: sidecar and engine disagree
    with pytest.raises(ModelPackageError, match="describes another engine"):
        load_model_package(engine)
    engine.write_bytes(good)
    other = "11.1.0" if trt.version.startswith("10.") else "10.16.0"
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(other, trt.cudart))
    with pytest.raises(BackendUnavailable, match=f"built with TensorRT {trt.version} on NVIDIA H200"):
        open_backend(load_model_package(engine), "tensorrt")


def test_cuda_without_a_gpu_is_a_clean_refusal(trt, monkeypatch):
    with pytest.raises(BackendUnavailable, match="no usable GPU"):
        tensorrt_engine.CudaRuntime(lib=FakeCudart(device_count=0))
    assert tensorrt_available() == (True, "")
    monkeypatch.setattr(tensorrt_engine, "load_cudart", lambda: FakeCudart(device_count=0))
    ok, why = tensorrt_available()
    assert not ok and "no usable GPU" in why
