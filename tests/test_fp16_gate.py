"""FP16 packages are judged by FP16 arithmetic (issue #8): mixed precision with an FP32 head, and a gate that
refuses a network whose activations overflow FP16 even though ONNX Runtime CPU passes its file (it runs most
of an FP16 graph in FP32). The emulation itself is checked against torch's own FP16 execution."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fnet.export.fp16_emulation import (emulated_fp16_outputs, fold_batchnorm, fp32_layers, head_names,
                                        mixed_precision)
from fnet.export.onnx_export import ExportParityError, export_onnx
from fnet.export.parity import TOLERANCES, compare_outputs
from fnet.runtime.backends import open_backend, run_in_batches
from fnet.runtime.grid import Grid
from fnet.runtime.model_package import load_model_package
from fnet.runtime.preprocess import prepare_arrays
from fnet.simulate import QuasarSimulator
from fnet.train.evaluate_torch import TorchBackend, reference_outputs
from fnet.train.heads import head_loss, make_targets
from fnet.train.model import build_model
from fnet.train.package import PackageInfo

GRID = Grid(3.5522, 8e-4, 578)
HEAD = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}
SCALE = 4096.0  # = 16^3: undone over the two hidden FC layers and the head, 16x each
FP16_MAX = 65504.0
EXPECTED_ARITHMETIC = f"device:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "emulated-fp16"


@pytest.fixture(scope="module")
def spectra() -> tuple[np.ndarray, np.ndarray]:
    batch = QuasarSimulator(source="auto", seed=1).sample(256)
    return prepare_arrays(batch.loglam, batch.flux, batch.ivar, batch.good, GRID, NORM).x, batch.z


@pytest.fixture(scope="module")
def trained(spectra) -> nn.Module:
    """The tiny FNet after 60 Adam steps on simulated quasars: moved BN statistics and weights, as after a real run."""
    x, z = spectra
    torch.manual_seed(0)
    net = build_model("tiny", HEAD, GRID)
    inputs, targets = torch.from_numpy(x[:, None, :]), torch.from_numpy(make_targets(z, HEAD))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        rows = torch.randint(0, len(x), (32,), generator=generator)
        loss = head_loss(net(inputs[rows]), targets[rows], HEAD)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


def rescale(model: nn.Module, s: float = SCALE) -> nn.Module:
    """The same FP32 function with every hidden activation of the residual stages multiplied by s (a power of 2).

    ReLU networks are positively homogeneous. A convolution whose input is already scaled by s gets its bias,
    and the BN after it its running mean and shift, multiplied by s: BN(s·c) then is s·BN(c) exactly (conv
    weights, BN scale and variance unchanged, so eps is untouched). The first convolution of the network sees
    the unscaled spectrum: its BN's scale and shift take the factor instead, and so does the 1x1 shortcut of
    the first unit. The FC layers divide by 16 each (biases follow the scale of their output), the head takes
    what is left. Powers of two scale exactly in floating point: the FP32 outputs are bit-identical.
    """
    m = copy.deepcopy(model)
    with torch.no_grad():
        for i, unit in enumerate(m.features):
            unit_in = 1.0 if i == 0 else s
            for j, (conv, bn) in enumerate(((unit.conv1, unit.bn1), (unit.conv2, unit.bn2), (unit.conv3, unit.bn3))):
                conv_in = unit_in if j == 0 else s
                if conv_in == 1.0:
                    bn.weight.mul_(s)
                    bn.bias.mul_(s)
                else:
                    conv.bias.mul_(conv_in)
                    bn.running_mean.mul_(conv_in)
                    bn.bias.mul_(s)
            if isinstance(unit.shortcut, nn.Conv1d):
                unit.shortcut.weight.mul_(s / unit_in)
                unit.shortcut.bias.mul_(s)
        scale = s
        for layer in [m for m in m.fc if isinstance(m, nn.Linear)]:
            layer.weight.div_(16)
            scale /= 16
            layer.bias.mul_(scale)
        m.out.weight.div_(scale)
    return m.eval()


@pytest.fixture(scope="module")
def rescaled(trained) -> nn.Module:
    return rescale(trained)


@pytest.fixture(scope="module")
def info() -> PackageInfo:
    return PackageInfo("tiny-fp16-gate", "0.0.1", "tiny", GRID, NORM, HEAD, (0.0, 7.0))


@pytest.fixture(scope="module")
def reference(trained, spectra) -> dict[str, np.ndarray]:
    return reference_outputs(trained, "logits", spectra[0])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)) / np.sqrt(np.mean(b.astype(np.float64) ** 2)))


def test_the_rescaled_checkpoint_is_the_same_fp32_function_and_overflows_in_true_fp16(trained, rescaled, spectra):
    x = torch.from_numpy(spectra[0][:, None, :])
    with torch.no_grad():
        torch.testing.assert_close(rescaled(x), trained(x), rtol=1e-5, atol=0)
        # every weight, in the checkpoint and folded as the package holds them, is a finite FP16 number
        for tensors in (rescaled.state_dict(), fold_batchnorm(rescaled).state_dict()):
            assert max(float(t.abs().max()) for t in tensors.values() if t.is_floating_point()) < FP16_MAX
        # ... yet torch's own FP16 execution overflows on almost every spectrum
        half = copy.deepcopy(rescaled).half()(x.half()).float()
        assert (~torch.isfinite(half)).any(dim=1).float().mean() > 0.9
        assert torch.isfinite(copy.deepcopy(trained).half()(x.half())).all()


def test_the_emulated_fp16_gate_refuses_the_rescaled_checkpoint_that_onnxruntime_cpu_passes(
        tmp_path, rescaled, spectra, reference, info):
    x = spectra[0]
    path = tmp_path / "big-fp16.onnx"
    with pytest.raises(ExportParityError, match=r"FP16 arithmetic overflows: \d+/256 spectra give inf") as refused:
        export_onnx(rescaled, info, path, x, precision="fp16", reference_outputs=reference)
    assert list(tmp_path.iterdir()) == []
    arithmetic = refused.value.report.companions["fp16-arithmetic"]
    assert arithmetic.arithmetic == EXPECTED_ARITHMETIC and arithmetic.n_nonfinite > 0.9 * len(x)
    assert not refused.value.report.passed and "with fp16-arithmetic: FAIL" in refused.value.report.summary()

    # The old gate's blind spot: written anyway, the file through ONNX Runtime CPU passes the FP16 tolerance ...
    export_onnx(rescaled, info, path, x, precision="fp16", reference_outputs=reference, force=True)
    package = load_model_package(path)
    ort_cpu = compare_outputs(reference, run_in_batches(open_backend(package, "cpu").run, x), HEAD,
                              reference_name="torch-fp64", candidate_name="ort-cpu", tolerance=TOLERANCES["fp16"])
    assert ort_cpu.passed and ort_cpu.n_nonfinite == 0
    # ... and the package records that its FP16 arithmetic failed: fnet-run flags it (PARITY = FAIL)
    assert package.parity["passed"] is False and package.parity["gated_on"] == ["fp16-arithmetic"]
    assert package.parity["companions"]["fp16-arithmetic"]["passed"] is False
    assert package.parity["arithmetic"] == "cpu"


def test_fnet_export_names_the_fp16_arithmetic_failure_and_still_writes_fp32(tmp_path, monkeypatch, rescaled):
    from fnet.export.command import export_command
    from fnet.export import pipeline

    meta = {"name": "big", "arch": "tiny", "grid": GRID.to_dict(), "normalisation": NORM, "head": dict(HEAD),
            "z_range": [0.0, 7.0], "training": {}}
    monkeypatch.setattr(pipeline, "load_model", lambda path: (rescaled, dict(meta)))
    checkpoint = tmp_path / "big.pt"
    checkpoint.write_bytes(b"not read: load_model is replaced")
    result = CliRunner().invoke(export_command, [str(checkpoint), "-o", str(tmp_path / "out"), "--n-simulated", "48",
                                                 "--no-fft"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("onnx-fp16") and "NOT WRITTEN" in line for line in lines), result.output
    assert any(line.startswith("fp16-arithmetic") and "NOT WRITTEN" in line for line in lines), result.output
    assert "FP16 arithmetic overflows: " in result.output and EXPECTED_ARITHMETIC in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["big-fp32.onnx"]


def test_an_ordinary_trained_model_passes_with_its_head_in_fp32(tmp_path, trained, spectra, reference, info):
    import onnx
    from onnx import TensorProto

    x = spectra[0]
    path = tmp_path / "m-fp16.onnx"
    report = export_onnx(trained, info, path, x, precision="fp16", reference_outputs=reference)
    arithmetic = report.companions["fp16-arithmetic"]
    assert report.passed and report.arithmetic == "cpu"
    assert arithmetic.passed and arithmetic.arithmetic == EXPECTED_ARITHMETIC and arithmetic.n_nonfinite == 0
    package = load_model_package(path)
    assert package.metadata["fnet.precision"] == "fp16" and package.metadata["fnet.fp32_layers"] == '["out"]'
    assert package.parity["companions"]["fp16-arithmetic"]["arithmetic"] == EXPECTED_ARITHMETIC

    graph = onnx.load(str(path)).graph
    dtypes = {t.name: t.data_type for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    head = producers[graph.output[0].name]
    assert head.op_type in ("Gemm", "MatMul")  # no Cast after the head: it computes in FP32
    assert dtypes[head.input[1]] == dtypes[head.input[2]] == TensorProto.FLOAT
    cast = producers[head.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT  # FP16 activations into the head
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert convs and all(dtypes[node.input[1]] == TensorProto.FLOAT16 for node in convs)
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    out = open_backend(package, "cpu").run(x[:4])["logits"]
    assert out.dtype == np.float32 and np.isfinite(out).all()


def shipped_default_network() -> tuple[nn.Module, PackageInfo]:
    """The embedded default model as a torch network from its ONNX weights, and what its package says of it."""
    from default_twin import default_model_twin

    net, package = default_model_twin()
    info = PackageInfo(package.name, package.version, package.architecture, package.grid, package.normalisation,
                       package.head, package.z_range)
    return net, info


def test_the_shipped_default_model_passes_the_fp16_gate(tmp_path):
    from conftest import require_shared
    from fnet.export.pipeline import parity_inputs

    net, info = shipped_default_network()
    x, _ = parity_inputs(info.grid, info.normalisation, [str(require_shared("sdss", "dr16"))], n_simulated=32)
    report = export_onnx(net, info, tmp_path / "default-fp16.onnx", x, precision="fp16")
    arithmetic = report.companions["fp16-arithmetic"]
    assert report.passed and arithmetic.passed and arithmetic.arithmetic == EXPECTED_ARITHMETIC
    assert arithmetic.frac_over["1000"] == 0 and arithmetic.p99_abs_dv_kms < 10  # far inside the tolerance


def test_the_emulation_matches_torch_fp16_and_is_not_fp32(trained, spectra, reference):
    x = spectra[0][:64]
    ref = reference["logits"][:64]
    emulated = emulated_fp16_outputs(trained, "logits", x)["logits"]
    # torch's FP16 on the CPU, on the same folded weights and mixed precision as the package
    with torch.no_grad():
        half = mixed_precision(fold_batchnorm(trained).float())(torch.from_numpy(x[:, None, :])).numpy()
    fp32 = TorchBackend(trained, "logits").run(x)["logits"]
    assert np.isfinite(emulated).all() and np.isfinite(half).all()
    assert _rel(emulated, half) < 0.5 * _rel(emulated, ref)  # closer to torch's FP16 than to the exact function
    assert _rel(emulated, ref) > 100 * _rel(fp32, ref)  # really FP16: far from FP32's own rounding
    assert _rel(emulated, ref) < 1e-2


def test_with_a_gpu_the_check_is_measured_there_and_says_so(monkeypatch, trained, spectra, reference):
    from fnet.export import fp16_emulation
    from fnet.export.onnx_export import fp16_arithmetic_check

    x = spectra[0][:32]
    # the device path itself, run on the CPU: torch's FP16 there, the same mixed-precision network
    on_cpu = fp16_emulation.device_fp16_outputs(trained, "logits", x, device="cpu")["logits"]
    assert on_cpu.dtype == np.float32 and _rel(on_cpu, reference["logits"][:32]) < 1e-2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")
    real = fp16_emulation.device_fp16_outputs
    monkeypatch.setattr(fp16_emulation, "device_fp16_outputs", lambda *a, **k: real(*a, **k, device="cpu"))
    report = fp16_arithmetic_check(trained, HEAD, x, {"logits": reference["logits"][:32]})
    assert report.arithmetic == "device:Stand-in GPU" and report.candidate == "fp16-arithmetic[device:Stand-in GPU]"


def test_the_accumulation_models_and_the_headless_fallback():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 16, 31, padding=15), nn.ReLU(), nn.Conv1d(16, 16, 31, padding=15)).eval()
    x = np.random.default_rng(0).normal(size=(4, 256)).astype(np.float32)
    exact = TorchBackend(net, "y", float64=True).run(x)["y"]
    errors = [_rel(emulated_fp16_outputs(net, "y", x, accumulation=acc, chunk=chunk)["y"], exact)
              for acc, chunk in (("fp32", 16), ("fp16", 16), ("fp16", 1))]
    assert errors[0] < errors[1] < errors[2] < 5e-2  # FP16 partial sums lose more the more often they round
    # no .out: nothing is kept in FP32 and the whole network runs in FP16, float32 out
    assert head_names(net) == [] and fp32_layers(net) == []
    with torch.no_grad():
        out = mixed_precision(net)(torch.from_numpy(x[:, None, :]))
    assert out.dtype == torch.float32 and _rel(out.numpy(), exact) < 1e-2
    with pytest.raises(ValueError, match="accumulation"):
        emulated_fp16_outputs(net, "y", x, accumulation="bf16")
