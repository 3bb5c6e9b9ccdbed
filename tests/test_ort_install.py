"""Which ONNX Runtime is installed: one distribution, a TensorRT major its provider can load, a clear refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fnet.runtime import ort_install
from fnet.runtime.errors import BackendUnavailable


def test_missing_onnxruntime_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"fnet-qso\[cpu\].*fnet-qso\[gpu\]"):
        ort_install.import_onnxruntime()


def test_fnet_run_without_onnxruntime_exits_2_with_the_install_command(tmp_path):
    code = ("import sys; sys.modules['onnxruntime'] = None; from fnet.cli import run_command; "
            "run_command(sys.argv[1:], prog_name='fnet-run')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), "-o", str(tmp_path / "c.fits")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "ONNX Runtime is not installed" in proc.stderr and "fnet-qso[cpu]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_both_distributions_installed_is_reported_with_the_fix(monkeypatch):
    monkeypatch.setattr(ort_install, "installed_versions",
                        lambda names: {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"})
    problem = ort_install.install_problem()
    assert "two ONNX Runtime distributions" in problem and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem
    monkeypatch.setattr(ort_install, "installed_versions", lambda names: {"onnxruntime-gpu": "1.22.0"})
    assert ort_install.install_problem() is None


def test_this_install_has_exactly_one_onnxruntime_distribution():
    assert len(ort_install.installed_versions(ort_install.ORT_DISTRIBUTIONS)) == 1
    assert ort_install.install_problem() is None


def _provider_dir(tmp_path, soname: bytes):
    capi = tmp_path / "capi"
    capi.mkdir()
    # what matters of the real library: its dynamic section names the TensorRT soname it needs
    (capi / "libonnxruntime_providers_tensorrt.so").write_bytes(b"\x7fELF\0\0junk\0" + soname + b"\0more\0")
    return capi


def test_tensorrt_major_mismatch_is_detected_from_the_provider_library(tmp_path):
    capi = _provider_dir(tmp_path, b"libnvinfer.so.10")
    assert ort_install.tensorrt_majors_needed(capi) == [10]
    problem = ort_install.tensorrt_provider_problem(capi, installed={"tensorrt": "11.1.0"})
    assert "needs TensorRT 10" in problem and "tensorrt 11.1.0" in problem and "tensorrt>=10,<11" in problem
    assert ort_install.tensorrt_provider_problem(capi, installed={"tensorrt-cu12": "10.16.0"}) is None
    # no tensorrt wheel (system libraries), or no TensorRT provider at all: nothing to compare
    assert ort_install.tensorrt_provider_problem(capi, installed={}) is None
    assert ort_install.tensorrt_majors_needed(tmp_path) == []


def test_cpu_onnxruntime_has_no_tensorrt_provider_library():
    assert ort_install.tensorrt_majors_needed() == []


def test_backend_tensorrt_refuses_a_provider_that_needs_another_tensorrt_major(monkeypatch):
    from fnet.runtime import backends
    from fnet.runtime.model_package import load_model_package
    from fnet.cli import default_model_path

    monkeypatch.setattr(backends, "available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(backends, "tensorrt_provider_problem", lambda: "needs TensorRT 10 but tensorrt 11.1.0 is here")
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10 but tensorrt 11.1.0"):
        backends.open_backend(load_model_package(default_model_path()), device="auto", backend="tensorrt")


def test_missing_cuda_provider_message_adds_the_two_distributions_fix(monkeypatch):
    from fnet.runtime import backends
    from fnet.runtime.model_package import load_model_package
    from fnet.cli import default_model_path

    monkeypatch.setattr(backends, "install_problem", lambda: "two ONNX Runtime distributions are installed")
    with pytest.raises(BackendUnavailable, match="no CUDAExecutionProvider.*two ONNX Runtime distributions"):
        backends.open_backend(load_model_package(default_model_path()), device="cuda", backend="onnxruntime")
