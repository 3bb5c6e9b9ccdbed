"""FFTConv1d (fnet.train.fft_conv): nn.Conv1d's outputs and gradients, its checkpoints, the swap, export, config."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fnet.runtime.grid import Grid
from fnet.train.config import load_config
from fnet.train.fft_conv import (AUTO_MIN_KERNEL, FFTConv1d, convert_convolutions, fft_conv1d, fft_length,
                                 plain_copy, wants_fft)
from fnet.train.model import build_model, count_macs

REG = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
TINY_GRID = Grid(3.5522, 8e-4, 578)
LITE_GRID = Grid(3.5522, 4e-4, 1155)

# (c_in, c_out, k, pad, L, batch): the paper's three kernels at 4 channels, lite4x's, and the edges of the
# FFT length bound (pad >= k, k > L + pad, one output pixel, a 1x1 kernel)
CASES = [
    (1, 4, 500, 250, 4618, 2), (4, 4, 200, 100, 4619, 2), (4, 4, 15, 6, 4620, 2),
    (8, 8, 125, 62, 1155, 3), (8, 16, 50, 25, 1156, 3), (16, 8, 4, 1, 1157, 3),
    (3, 5, 9, 12, 40, 2), (2, 3, 35, 3, 30, 1), (2, 3, 5, 2, 1, 2), (2, 3, 1, 0, 7, 2),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread avoids OpenMP barrier stalls when the cores are shared (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(c_in: int, c_out: int, k: int, pad: int, bias: bool = True) -> tuple[nn.Conv1d, FFTConv1d]:
    torch.manual_seed(k * 31 + c_in)
    conv = nn.Conv1d(c_in, c_out, k, padding=pad, bias=bias)
    if bias:
        nn.init.normal_(conv.bias)  # non-zero, so the bias path is checked too
    return conv, FFTConv1d.from_conv(conv)


def _forward_and_grads(module: nn.Module, x: torch.Tensor, grad_y: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    return [y.detach(), *torch.autograd.grad(y, [x, *params], grad_y)]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("c_in, c_out, k, pad, length, batch", CASES)
def test_forward_and_gradients_equal_conv1d_within_float32_rounding(c_in, c_out, k, pad, length, batch):
    conv, fft = _pair(c_in, c_out, k, pad)
    x = torch.randn(batch, c_in, length)
    grad_y = torch.randn(batch, c_out, length + 2 * pad - k + 1)
    exact = _forward_and_grads(conv.double(), x.double(), grad_y.double())  # the function both approximate
    direct = _forward_and_grads(conv.float(), x, grad_y)
    ours = _forward_and_grads(fft, x, grad_y)
    for name, e, d, o in zip(("output", "grad input", "grad weight", "grad bias"), exact, direct, ours):
        assert o.dtype == torch.float32 and o.shape == d.shape
        # float32 rounding: a few 1e-7 of the largest value, as the direct float32 convolution (measured)
        assert _relative_error(o, e) < 3e-6, (name, _relative_error(o, e), _relative_error(d, e))


@pytest.mark.parametrize("c_in, c_out, k, pad, length, batch", [c for c in CASES if c[4] < 2000])
def test_exact_in_float64(c_in, c_out, k, pad, length, batch):
    conv, fft = _pair(c_in, c_out, k, pad)
    conv, fft = conv.double(), fft.double()
    x = torch.randn(batch, c_in, length, dtype=torch.float64)
    grad_y = torch.randn(batch, c_out, length + 2 * pad - k + 1, dtype=torch.float64)
    for e, o in zip(_forward_and_grads(conv, x, grad_y), _forward_and_grads(fft, x, grad_y)):
        assert _relative_error(o, e) < 1e-12


def test_no_bias_and_an_input_without_gradient():
    conv, fft = _pair(3, 4, 31, 15, bias=False)
    x = torch.randn(2, 3, 200)  # the network's input: no gradient wanted
    torch.testing.assert_close(fft(x), conv(x), rtol=0, atol=1e-5)
    (gw,) = torch.autograd.grad(fft(x).square().sum(), [fft.weight])
    (gw_ref,) = torch.autograd.grad(conv(x).square().sum(), [conv.weight])
    assert _relative_error(gw, gw_ref) < 1e-5


def test_half_precision_is_computed_in_float32():
    conv, fft = _pair(2, 2, 50, 25)
    x = torch.randn(2, 2, 300)
    y = fft_conv1d(x.half(), conv.weight.half(), conv.bias.half(), 25)
    assert y.dtype == torch.float16
    assert _relative_error(y, conv(x)) < 2e-3  # half inputs and weights, float32 arithmetic


def test_fft_length_lets_the_correlation_wrap_onto_zero_padding_only():
    assert fft_length(4618, 500, 250) == 5040  # from L + pad = 4868, not L + 2 pad = 5117 (5120); 2^4 in it
    assert fft_length(96, 9, 0) == 96 and fft_length(10, 31, 15) == 32  # the kernel itself must fit


def test_unsupported_convolutions_are_refused_or_left_alone():
    for kwargs in ({"stride": 2}, {"dilation": 2}, {"groups": 2}, {"padding": "same"}, {"padding_mode": "circular"}):
        with pytest.raises(ValueError, match="FFTConv1d supports"):
            FFTConv1d(4, 4, 9, **{"padding": 4, **kwargs})
        assert not wants_fft(nn.Conv1d(4, 4, 9, **{"padding": 4, **kwargs}), "on")
    with pytest.raises(ValueError, match="exceeds"):
        FFTConv1d(1, 1, 9)(torch.zeros(1, 1, 5))


def test_state_dicts_are_interchangeable():
    conv, fft = _pair(4, 6, 50, 25)
    assert list(fft.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    other = FFTConv1d(4, 6, 50, padding=25)
    other.load_state_dict(conv.state_dict())
    back = nn.Conv1d(4, 6, 50, padding=25)
    back.load_state_dict(other.state_dict())
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)

    torch.manual_seed(0)
    net = build_model("tiny", REG, TINY_GRID)
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    convert_convolutions(net, "on")
    assert list(net.state_dict()) == list(plain) and all(torch.equal(net.state_dict()[k], v) for k, v in plain.items())
    fresh = build_model("tiny", REG, TINY_GRID)
    fresh.load_state_dict(net.state_dict())  # a checkpoint of an FFT run loads into the plain network
    convert_convolutions(net, "off")
    net.load_state_dict(plain)


def test_convert_tiny_on_keeps_parameters_and_outputs():
    torch.manual_seed(1)
    net = build_model("tiny", REG, TINY_GRID)
    reference = copy.deepcopy(net)
    params = list(net.parameters())
    x = torch.randn(4, 1, TINY_GRID.npix)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv1d)]
    n = convert_convolutions(net, "on")
    ffts = [m for m in net.modules() if isinstance(m, FFTConv1d)]
    assert n == len(ffts) == sum(m.kernel_size[0] > 1 for m in convs) == 24  # 8 units x 3; 1x1 shortcuts stay
    assert all(type(m) is nn.Conv1d and m.kernel_size == (1,) for m in net.modules()
               if isinstance(m, nn.Conv1d) and not isinstance(m, FFTConv1d))
    assert all(a is b for a, b in zip(net.parameters(), params))  # an optimiser built before stays valid
    torch.testing.assert_close(net.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.train()(x), reference.train()(x), rtol=1e-4, atol=1e-5)  # batch statistics
    assert convert_convolutions(net, "off") == 0 and not any(isinstance(m, FFTConv1d) for m in net.modules())
    assert all(a is b for a, b in zip(net.parameters(), params))
    torch.testing.assert_close(net.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


def test_auto_rule():
    net = build_model("lite4x", REG, LITE_GRID)
    assert convert_convolutions(net, "auto", "cuda") == 0  # cuDNN on a GPU: not measured against the FFT
    assert convert_convolutions(net, "auto") == 16  # k = 125 and 50 in each of 8 units; k = 4 stays direct
    assert {m.kernel_size[0] for m in net.modules() if isinstance(m, FFTConv1d)} == {125, 50}
    assert convert_convolutions(build_model("tiny", REG, TINY_GRID), "auto") == 0  # k = 31 < AUTO_MIN_KERNEL
    assert AUTO_MIN_KERNEL == 32
    pooled = build_model("pooled4x", REG, LITE_GRID)
    macs = count_macs(pooled)
    assert convert_convolutions(pooled, "on") == 10 and count_macs(pooled) == macs  # meta copies: the plain path
    assert convert_convolutions(net, "off") == 0
    with pytest.raises(ValueError, match="fft_conv mode"):
        convert_convolutions(net, "yes")  # type: ignore[arg-type]


def test_onnx_export_stays_a_plain_conv_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    from fnet.export.onnx_export import export_graph

    torch.manual_seed(2)
    net = build_model("tiny", REG, TINY_GRID).eval()
    convert_convolutions(net, "on")
    plain = plain_copy(net)
    assert plain is not net and not any(isinstance(m, FFTConv1d) for m in plain.modules())
    assert any(isinstance(m, FFTConv1d) for m in net.modules())  # the original is untouched
    assert plain_copy(plain) is plain
    path = tmp_path / "tiny.onnx"
    export_graph(net, path, TINY_GRID.npix, "z_scaled", "fp32")  # FFTConv1d modules inside: the forward's own guard
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not ops & {"DFT", "MatMul", "Einsum"}


def test_config_field():
    assert load_config("smoke").train.fft_conv == "auto"
    assert load_config("smoke", ["train.fft_conv=on"]).train.fft_conv == "on"  # YAML reads on/off as booleans
    assert load_config("smoke", ["train.fft_conv=off"]).train.fft_conv == "off"
    assert load_config("smoke", ["train.fft_conv=auto"]).train.fft_conv == "auto"
    with pytest.raises(ValueError, match="train.fft_conv: 'fast' is not one of 'auto', 'on', 'off'"):
        load_config("smoke", ["train.fft_conv=fast"])


def test_training_loop_applies_the_setting(tmp_path, caplog):
    from fnet.train.checkpoint import load_model
    from fnet.train.loop import train

    overrides = [f"train.checkpoint_dir={tmp_path}", "train.progress=false", "train.fft_conv=on", "train.epochs=1",
                 "train.steps_per_epoch=2", "validation.n_simulated=16"]
    with caplog.at_level("INFO", logger="fnet.train"):
        result = train("smoke", overrides)
    assert "train.fft_conv=on: 24 convolutions through the FFT" in caplog.text
    assert result.history[0]["train_spectra"] == 32
    model, _ = load_model(result.last_checkpoint)  # the plain network reads the FFT run's checkpoint
    assert not any(isinstance(m, FFTConv1d) for m in model.modules())
