"""Export and runtime checks of issue #8 that need no GPU: non-finite outputs fail parity, an artefact that
cannot be built is reported with exit code 3, empty batches, and a package that failed parity is flagged."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from conftest import require_shared
from tiny_models import patch_export_with_tiny_network
from fnet.cli import default_model_path, run_command
from fnet.export.parity import TOLERANCES, compare_outputs
from fnet.runtime.backends import open_backend
from fnet.runtime.fft_backend import FftBackend
from fnet.runtime.model_package import load_model_package

HEAD = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}


def test_one_non_finite_output_fails_even_the_fp16_gate():
    reference = {"z_scaled": np.full((256, 1), 0.3, np.float32)}
    for bad in (np.inf, np.nan, -np.inf):
        candidate = {"z_scaled": reference["z_scaled"].copy()}
        candidate["z_scaled"][5] = bad
        report = compare_outputs(reference, candidate, HEAD, reference_name="ref", candidate_name="engine",
                                 tolerance=TOLERANCES["fp16"])
        # 1 of 256 over 6000 km/s is within the FP16 allowance (0.5 %): only the finiteness check refuses it
        assert report.frac_over["6000"] <= TOLERANCES["fp16"]["max_frac_over_6000"]
        assert not report.passed and report.n_nonfinite == 1 and "NaN/inf" in report.summary()
    clean = compare_outputs(reference, reference, HEAD, reference_name="ref", candidate_name="same",
                            tolerance=TOLERANCES["fp16"])
    assert clean.passed and clean.n_nonfinite == 0


def test_empty_batches_give_empty_outputs_of_the_right_shape():
    package = load_model_package(default_model_path())
    empty = np.zeros((0, package.grid.npix), np.float32)
    for backend in (open_backend(package, "cpu"), FftBackend(package)):
        out = backend.run(empty)
        assert out["logits"].shape == (0, package.head["nbins"]) and out["logits"].dtype == np.float32


def _tiny_checkpoint(monkeypatch) -> None:
    """Make export_checkpoint load a seeded untrained `tiny` network whatever checkpoint path it is given."""
    pytest.importorskip("torch")
    patch_export_with_tiny_network(monkeypatch, HEAD)


def test_an_artefact_that_cannot_be_built_is_reported_and_exit_code_3(tmp_path, monkeypatch):
    from fnet.export.command import export_command
    from fnet.export import pipeline

    _tiny_checkpoint(monkeypatch)
    real = pipeline.export_onnx

    def broken(model, info, path, *args, precision="fp32", **kwargs):
        if precision == "fp16":
            raise RuntimeError("simulated converter crash")
        return real(model, info, path, *args, precision=precision, **kwargs)
    monkeypatch.setattr(pipeline, "export_onnx", broken)
    checkpoint = tmp_path / "any.pt"
    checkpoint.write_bytes(b"not read: load_model is replaced")
    result = CliRunner().invoke(export_command, [str(checkpoint), "-o", str(tmp_path / "out"), "--n-simulated", "16",
                                                 "--no-fft"], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    assert "not built: RuntimeError: simulated converter crash" in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tiny-fp32.onnx"]  # the other artefact is still built


def test_a_package_that_failed_parity_is_flagged_in_the_run_and_the_catalog(tmp_path):
    import json

    import onnx

    from fnet.runtime.onnx_wire import stamp_integrity

    model = onnx.load(str(default_model_path()))
    for entry in model.metadata_props:
        if entry.key == "fnet.parity":
            parity = json.loads(entry.value)
            parity["passed"] = False
            entry.value = json.dumps(parity)
    forced = tmp_path / "forced.onnx"
    forced.write_bytes(stamp_integrity(model.SerializeToString()))
    files = sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:2]
    out = tmp_path / "cat.fits"
    result = CliRunner().invoke(run_command, [*map(str, files), "--model", str(forced), "-o", str(out),
                                              "--backend", "onnxruntime"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "failed its parity check at export" in result.output
    assert fits.getheader(out, "FNET")["PARITY"] == "FAIL"
    plain = tmp_path / "plain.fits"
    CliRunner().invoke(run_command, [*map(str, files), "-o", str(plain), "--backend", "onnxruntime"])
    assert fits.getheader(plain, "FNET")["PARITY"] == "pass"


def test_gpu_providers_get_their_options(monkeypatch):
    import onnxruntime as ort

    from fnet.runtime.backends import FIXED_BATCH, OnnxRuntimeBackend

    package = load_model_package(default_model_path())  # before the stand-in: loading reads metadata through ORT
    seen = {}

    class FakeSession:  # records what ONNX Runtime would be given; stands in for a GPU build
        def __init__(self, path, options, providers):
            seen["providers"] = providers

        def get_inputs(self):
            return [type("I", (), {"name": "flux", "type": "tensor(float)"})()]

        def get_outputs(self):
            return [type("O", (), {"name": "logits"})()]

        def get_providers(self):
            return [p if isinstance(p, str) else p[0] for p in seen["providers"]]
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda: seen.setdefault("preloaded", True), raising=False)
    OnnxRuntimeBackend(package, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert seen["providers"] == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert seen["preloaded"]
    OnnxRuntimeBackend(package, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    name, options = seen["providers"][0]
    shape = f"flux:{FIXED_BATCH['gpu']}x1x{package.grid.npix}"
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_enable"] == "True"
    assert package.sha256[:16] in options["trt_engine_cache_path"]
    assert options["trt_profile_min_shapes"] == options["trt_profile_opt_shapes"] == options["trt_profile_max_shapes"] == shape
    seen.clear()
    OnnxRuntimeBackend(package, ["CPUExecutionProvider"])
    assert seen["providers"] == ["CPUExecutionProvider"] and "preloaded" not in seen


def test_an_engine_sidecar_that_describes_another_engine_is_refused(tmp_path):
    import hashlib
    import json

    from fnet.runtime.errors import ModelPackageError

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized engine bytes stand-in")
    meta = dict(load_model_package(default_model_path()).metadata)
    for recorded, ok in ((hashlib.sha256(engine.read_bytes()).hexdigest(), True), ("0" * 64, False)):
        meta["fnet.tensorrt"] = json.dumps({"engine_sha256": recorded})
        (tmp_path / "m.engine.json").write_text(json.dumps(meta))
        if ok:
            assert load_model_package(engine).is_engine
        else:
            with pytest.raises(ModelPackageError, match="m.engine.json describes another engine"):
                load_model_package(engine)


def test_cuda_libraries_without_a_gpu_are_a_clean_refusal(monkeypatch):
    import ctypes

    from fnet.export.tensorrt_build import tensorrt_available
    from fnet.runtime import backends
    from fnet.runtime.errors import BackendUnavailable

    class NoDevice:  # libcudart as pip's CUDA wheels install it on a machine without a GPU
        def cudaGetDeviceCount(self, count):
            return 100  # cudaErrorNoDevice

    monkeypatch.setattr(ctypes, "CDLL", lambda name: NoDevice())
    with pytest.raises(BackendUnavailable, match="no usable GPU.*error 100"):
        backends.CudaRuntime()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return
    ok, why = tensorrt_available()
    assert not ok and "no usable GPU" in why


def test_onnxruntime_gpu_providers_are_parity_checked_at_export_and_a_failure_warned_at_run(tmp_path, monkeypatch):
    _tiny_checkpoint(monkeypatch)
    from fnet.cli import provider_parity
    from fnet.export import onnx_export
    from fnet.export.pipeline import export_checkpoint
    from fnet.runtime.backends import OnnxRuntimeBackend

    class Shifted(OnnxRuntimeBackend):  # stands in for a GPU provider whose arithmetic moves every redshift
        def run(self, x):
            return {k: v + 0.01 for k, v in super().run(x).items()}

    def stand_in(package, threads=None):  # what a machine with CUDA and TensorRT providers would open
        return [("onnxruntime-cuda", OnnxRuntimeBackend(package, ["CPUExecutionProvider"])),
                ("onnxruntime-tensorrt", Shifted(package, ["CPUExecutionProvider"]))]
    monkeypatch.setattr(onnx_export, "gpu_provider_backends", stand_in)
    [result] = [r for r in export_checkpoint(tmp_path / "x.pt", tmp_path / "out", n_simulated=16, fft=False)
                if r.kind == "onnx-fp32"]
    assert result.path is not None  # recorded, not gating: the package serves CPUs either way
    companions = load_model_package(result.path).parity["companions"]
    assert companions["onnxruntime-cuda"]["passed"] and companions["onnxruntime-cuda"]["arithmetic"] == "device:cuda"
    assert not companions["onnxruntime-tensorrt"]["passed"]
    package = load_model_package(result.path)

    class OnProvider:  # what fnet-run checks: the providers of the session it opened
        def __init__(self, providers):
            self.providers = providers
    assert provider_parity(package, OnProvider(["TensorrtExecutionProvider", "CPUExecutionProvider"]))["passed"] is False
    assert provider_parity(package, OnProvider(["CUDAExecutionProvider", "CPUExecutionProvider"]))["passed"] is True
    assert provider_parity(package, OnProvider(["CPUExecutionProvider"])) is None
