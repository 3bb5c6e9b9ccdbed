"""The FFT backend as an artefact: export parity against PyTorch, `--backend auto`, and the catalog header."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from onnx import helper

from conftest import require_shared
from fnet.cli import default_model_path, run_command
from fnet.runtime import backend_choice
from fnet.runtime.backends import OnnxRuntimeBackend, open_backend
from fnet.runtime.errors import BackendUnavailable
from fnet.runtime.fft_backend import FftBackend
from fnet.runtime.heads import decode
from fnet.runtime.model_package import load_model_package
from fnet.runtime.preprocess import prepare_arrays, prepare_spectra
from fnet.runtime.readers import read_spectra
from test_fft_backend import _graph_package

C_KMS = 299792.458


def _wide_kernel_package(tmp_path, k: int = 101, npix: int = 2000):
    """Conv(k) -> Relu -> Conv(1x1) -> Flatten -> Gemm: a model whose first convolution takes the FFT route."""
    rng = np.random.default_rng(3)
    w = {"W1": (rng.normal(size=(4, 1, k)) / k).astype(np.float32), "B1": rng.normal(size=4).astype(np.float32),
         "W2": rng.normal(size=(1, 4, 1)).astype(np.float32),
         "G": (rng.normal(size=(1, npix)) / npix).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["flux", "W1", "B1"], ["c1"], kernel_shape=[k], pads=[k // 2, k // 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], kernel_shape=[1]),
             helper.make_node("Flatten", ["c2"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "G"], ["z_scaled"], transB=1)]
    return _graph_package(tmp_path, nodes, ["flux"], ["z_scaled"], w, npix, 1)


def test_auto_measures_once_per_model_and_machine_then_remembers(tmp_path, monkeypatch):
    monkeypatch.setenv("FNET_CACHE_DIR", str(tmp_path / "cache"))
    package = _wide_kernel_package(tmp_path)
    first = open_backend(package, "cpu", backend="auto")
    cache = json.loads(backend_choice.cache_path().read_text())
    (key, entry), = cache.items()
    assert key.startswith(package.sha256) and "device=cpu" in key
    assert set(entry["seconds_per_batch"]) == {"fft", "onnxruntime"}
    assert entry["backend"] == min(entry["seconds_per_batch"], key=entry["seconds_per_batch"].get)
    assert isinstance(first, FftBackend) == (entry["backend"] == "fft")

    def no_measuring(*_):
        raise AssertionError("measured again although the choice is cached")
    monkeypatch.setattr(backend_choice, "_seconds", no_measuring)
    assert type(open_backend(package, "cpu", backend="auto")) is type(first)
    # the answer is the same whichever backend was chosen
    x = np.random.default_rng(0).normal(size=(5, 2000)).astype(np.float32)
    assert np.allclose(first.run(x)["z_scaled"], open_backend(package, "cpu", backend="onnxruntime").run(x)["z_scaled"],
                       atol=1e-4)


def test_auto_keeps_onnxruntime_when_no_convolution_would_take_the_fft(tmp_path, monkeypatch):
    monkeypatch.setenv("FNET_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["flux", "W"], ["c"], kernel_shape=[1]),
             helper.make_node("Flatten", ["c"], ["f"], axis=1), helper.make_node("Gemm", ["f", "G"], ["z_scaled"], transB=1)]
    package = _graph_package(tmp_path, nodes, ["flux"], ["z_scaled"],
                             {"W": rng.normal(size=(2, 1, 1)).astype(np.float32),
                              "G": rng.normal(size=(1, 200)).astype(np.float32)}, 100, 1)
    assert isinstance(open_backend(package, "cpu", backend="auto"), OnnxRuntimeBackend)
    assert not backend_choice.cache_path().exists()  # decided by the rule: nothing measured, nothing cached


def test_a_package_whose_fft_parity_failed_is_refused_by_the_fft_backend_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("FNET_CACHE_DIR", str(tmp_path / "cache"))
    package = _wide_kernel_package(tmp_path)
    package.parity = {"passed": True, "companions": {"fft": {"passed": False, "max_abs_dv_kms": 3.5}}}
    with pytest.raises(BackendUnavailable, match="FFT-backend parity check failed.*3.5"):
        FftBackend(package)
    assert isinstance(open_backend(package, "cpu", backend="auto"), OnnxRuntimeBackend)


def test_the_catalog_header_names_the_backend_that_ran(tmp_path):
    files = sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:3]
    for backend in ("fft", "onnxruntime"):
        out = tmp_path / f"{backend}.fits"
        result = CliRunner().invoke(run_command, [*map(str, files), "-o", str(out), "--backend", backend],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert fits.getheader(out, "FNET")["BACKEND"].startswith("fft[" if backend == "fft" else "onnxruntime[")




def _parity_set(package, n_simulated: int):
    """Real spectra of three surveys plus simulated quasars, prepared as fnet-run prepares them."""
    from fnet.simulate import QuasarSimulator

    files = (sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:24]
             + [require_shared("desi", "coadd-main-dark-9144.fits")]
             + sorted(require_shared("lamost", "dr1").glob("*.fits*"))[:4])
    real = prepare_spectra([s for f in files for s in read_spectra(f)], package.grid, package.normalisation)
    batch = QuasarSimulator(source="auto", seed=7).sample(n_simulated)
    simulated = prepare_arrays(batch.loglam, batch.flux, batch.ivar, batch.good, package.grid, package.normalisation)
    return np.concatenate([real.x[real.good.any(axis=1)], simulated.x])


def test_the_default_model_through_the_fft_passes_the_fp32_gate_against_pytorch():
    from fnet.export.parity import TOLERANCES, compare_outputs
    from fnet.train.evaluate_torch import reference_outputs

    pytest.importorskip("torch")
    from default_twin import default_model_twin

    model, package = default_model_twin()
    x = _parity_set(package, 64)
    reference = reference_outputs(model, package.head["output"], x)
    # the twin is the package's network: ONNX Runtime agrees with it as the export gate demands
    ort = compare_outputs(reference, open_backend(package, "cpu", backend="onnxruntime").run(x), package.head,
                          reference_name="torch-fp64", candidate_name="ort", tolerance=TOLERANCES["fp32"])
    fft = compare_outputs(reference, FftBackend(package).run(x), package.head, reference_name="torch-fp64",
                          candidate_name="fft", tolerance=TOLERANCES["fft-fp32"])
    assert ort.passed and fft.passed, (ort.summary(), fft.summary())
    assert fft.max_abs_dv_kms < 1.0 and fft.frac_over["6000"] == 0.0


@pytest.mark.slow
def test_the_paper_network_export_records_fft_parity_within_the_fp32_gate(tmp_path):
    torch = pytest.importorskip("torch")
    from fnet.export.onnx_export import export_onnx
    from fnet.runtime.grid import Grid
    from fnet.train.model import build_model
    from fnet.train.package import PackageInfo

    grid = Grid(3.5522, 1e-4, 4618)
    head = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
    torch.manual_seed(0)
    model = build_model("paper", head, grid).eval()
    info = PackageInfo("paper", "t", "paper", grid, {"scheme": "zscore_minmax"}, head, (0, 7))
    files = sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:4]
    from fnet.simulate import QuasarSimulator

    batch = QuasarSimulator(source="auto", seed=7).sample(4)
    x = np.concatenate([prepare_spectra([read_spectra(f)[0] for f in files], grid, info.normalisation).x,
                        prepare_arrays(batch.loglam, batch.flux, batch.ivar, batch.good, grid, info.normalisation).x])
    report = export_onnx(model, info, tmp_path / "paper.onnx", x, check_fft=True)
    fft = report.companions["fft"]
    # With random weights the paper network's regression output sits at z ~ -0.2..0.4 and is the small
    # difference of large activations: float32 rounding alone moves it by up to ~1.0-1.4 km/s against float64,
    # for ONNX Runtime's direct convolutions and for the FFT alike (docs/models.md, "Inference through the FFT").
    # So what is pinned here is that the FFT backend is as exact as ONNX Runtime's float32 on the same spectra,
    # and that the export measured and recorded it; the 1 km/s gate decides `passed` as for any package.
    assert report.passed and fft.frac_over["6000"] == 0.0, (report.summary(), fft.summary())
    assert fft.max_abs_dv_kms <= max(1.0, 1.5 * report.max_abs_dv_kms), (report.summary(), fft.summary())
    recorded = load_model_package(tmp_path / "paper.onnx").parity["companions"]["fft"]
    assert recorded["passed"] == fft.passed == (fft.max_abs_dv_kms <= 1.0)
    assert recorded["candidate"].startswith("fft[") and recorded["reference"] == "torch-fp64"
    if fft.passed:
        z = decode(FftBackend(load_model_package(tmp_path / "paper.onnx")).run(x), head).z
        assert np.all(np.isfinite(z))
    else:  # the runtime honours the recorded gate: it refuses, saying why and what to run instead
        with pytest.raises(BackendUnavailable, match="parity check failed at export.*--backend onnxruntime"):
            FftBackend(load_model_package(tmp_path / "paper.onnx"))
