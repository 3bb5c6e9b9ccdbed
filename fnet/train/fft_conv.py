"""Exact FFT convolutions for training: ``FFTConv1d``, a drop-in ``nn.Conv1d``, and ``convert_convolutions``.

Why: a k-tap convolution over L pixels costs L·k multiply-adds per channel pair directly, while through a
length-n real FFT it costs one transform per input and output channel plus ~n/2 complex multiply-adds per
channel pair whatever k is. FNet's k=500/200 layers (k=125/50 in lite4x) are where the direct
convolution spends almost all of a training step.

Method (cross-correlation with explicit zero padding p, as nn.Conv1d): the kernel is written, flipped
and shifted by p, into a zero buffer of length n (g[(p - j) mod n] = w[j]), so that
y = irfft(rfft(x, n) · rfft(g, n))[:L_out] is the circular convolution that equals the padded linear
one as long as n >= max(L + p, L_out, k) (wrapped indices land only in the zero region; a tighter bound
than L + 2p). n is fnet.runtime.fft_conv.fft_length, 7-smooth with 2^4 in it (torch's fast sizes). The
channel mixing is one complex batched matmul per frequency, (F, B, c_in) @ (F, c_in, c_out), on contiguous
frequency-major tensors (measured as fast as the real-GEMM block form [[re, im], [-im, re]] without
building that 4x matrix).

Backward is a custom autograd.Function: the gradients are correlations again, computed from the saved
spectra (input: grad-output spectrum times the conjugate kernel spectrum; weight: conjugate input
spectrum times grad-output spectrum summed over the batch, then one inverse FFT per channel pair and a
gather of the k taps; bias: a sum). torch.fft's own autograd is slower (its rfft backward is a padded
full complex FFT, and complex matmul backward resolves conjugate views copy by copy); measured numbers
are in docs/models.md and ``python benchmarks/bench_train_fft.py``.

ONNX export always sees nn.Conv1d: under torch.onnx export or tracing the forward is the plain
convolution, and fnet.export converts a copy back to nn.Conv1d before exporting. The state_dict is
nn.Conv1d's (same class hierarchy, same parameters), so checkpoints load either way.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from fnet.runtime.fft_conv import fft_length as runtime_fft_length  # the FFT sizes the runtime's FFT backend uses

Mode = Literal["auto", "on", "off"]

# "auto" sends a convolution through the FFT when its kernel has at least this many taps, on CPU only.
# Measured on the 2-core machine (forward + backward of one c -> c layer, best of 3, 1 and 2 threads;
# `python benchmarks/bench_train_fft.py --layers` for the archs' own layers): at k = 31 and 41 the FFT wins
# or ties everywhere (c = 8/16 at 1155 px, batch 16/32: 2-5x; c = 32 at 4618 px, batch 4: 0.9-1.7x, batch 16:
# 2.5-3.4x), k = 50..500 wins 3-80x; at k = 23 and below it loses for the paper's 32 channels at batch 4
# (and at k <= 9 for 16+ channels); 32 sits between. No shipped network has a kernel of 16-49 taps.
AUTO_MIN_KERNEL = 32
AUTO_RULE = (f"FFT for kernels of {AUTO_MIN_KERNEL}+ taps on CPU; never 1x1; direct on CUDA "
             "(cuDNN, not measured against the FFT yet)")


TORCH_FFT_TWOS = 4  # torch's CPU FFT (MKL) is ~2x slower at sizes with fewer than 2^4 (next_fast_length)


def fft_length(length: int, k: int, padding: int) -> int:
    """The FFT length for an input of `length` pixels, a k-tap kernel and zero padding on both sides."""
    return runtime_fft_length(length, k, (padding, padding), twos=TORCH_FFT_TWOS)


class _FFTCorrelation(torch.autograd.Function):
    """nn.Conv1d's forward (groups 1, stride 1, dilation 1, zero padding) and its exact gradients by FFT."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        batch, _, length = x.shape
        c_out, c_in, k = weight.shape
        out_len = length + 2 * padding - k + 1
        if out_len < 1:
            raise ValueError(f"kernel size {k} exceeds the padded input size {length + 2 * padding}")
        n = fft_length(length, k, padding)
        taps = (padding - torch.arange(k, device=x.device)) % n  # where each tap sits in the shifted buffer
        g = weight.new_zeros(c_out, c_in, n)
        g[..., taps] = weight
        # frequency-major and contiguous: the mixing is then one batched matmul (F, B, c_in) @ (F, c_in, c_out)
        wf = torch.fft.rfft(g).permute(2, 1, 0).contiguous()
        xf = torch.fft.rfft(x, n).permute(2, 0, 1).contiguous()
        # irfft of a contiguous (B, c_out, F) copy: torch's c2r on the permuted view was ~2.5x slower than the copy
        y = torch.fft.irfft(torch.matmul(xf, wf).permute(1, 2, 0).contiguous(), n)[..., :out_len]
        if bias is not None:
            y = y + bias[:, None]
        else:
            y = y.contiguous()
        ctx.save_for_backward(xf, wf, taps)
        ctx.sizes = (length, n, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        xf, wf, taps = ctx.saved_tensors
        length, n, has_bias = ctx.sizes
        gf = torch.fft.rfft(grad_y, n).permute(2, 0, 1).contiguous()  # (F, B, c_out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # correlation with the flipped kernel: times the conjugate spectrum
            zf = torch.matmul(gf, wf.transpose(1, 2).conj())
            grad_x = torch.fft.irfft(zf.permute(1, 2, 0).contiguous(), n)[..., :length].contiguous()
        if ctx.needs_input_grad[1]:  # input x grad-output, summed over the batch, per frequency
            df = torch.matmul(xf.transpose(1, 2).conj(), gf)  # (F, c_in, c_out)
            grad_w = torch.fft.irfft(df.permute(2, 1, 0).contiguous(), n)[..., taps].contiguous()
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2))
        return grad_x, grad_w, grad_b, None


def fft_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """F.conv1d(x, weight, bias, padding=padding) through the FFT; half precision is computed in float32."""
    half = (torch.float16, torch.bfloat16)
    dtype = x.dtype if x.dtype in half else None
    # autocast off: half FFTs need power-of-two sizes (cuFFT) and lose the accuracy the FFT is exact to
    with torch.autocast(x.device.type, enabled=False):
        if dtype is not None or weight.dtype in half:
            x, weight = x.float(), weight.float()
            bias = None if bias is None else bias.float()
        y = _FFTCorrelation.apply(x, weight, bias, padding)
    return y if dtype is None else y.to(dtype)


class FFTConv1d(nn.Conv1d):
    """nn.Conv1d (groups 1, stride 1, dilation 1, integer zero padding) computed through the FFT."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not supported(self):
            raise ValueError(f"FFTConv1d supports groups 1, stride 1, dilation 1 and integer zero padding, not {self}")

    @classmethod
    def from_conv(cls, conv: nn.Conv1d) -> "FFTConv1d":
        """An FFTConv1d sharing `conv`'s parameter objects (an optimiser built on them stays valid)."""
        return _rebuild(cls, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same output as nn.Conv1d within rounding; the plain convolution while exporting, tracing or on meta."""
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().forward(x)  # the exported graph must stay a plain Conv node
        if x.device.type == "meta":
            return super().forward(x)  # shapes only (count_macs): the same result without FFTs on meta
        return fft_conv1d(x, self.weight, self.bias, self.padding[0])


def supported(conv: nn.Conv1d) -> bool:
    """Whether FFTConv1d can stand in for `conv` (groups 1, stride 1, dilation 1, integer zero padding)."""
    return (conv.groups == 1 and conv.stride == (1,) and conv.dilation == (1,) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _rebuild(cls: type, conv: nn.Conv1d) -> nn.Conv1d:
    """A `cls` module holding `conv`'s own weight and bias objects, in its train/eval state."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], padding=conv.padding[0],
              bias=conv.bias is not None, device="meta")  # meta: no throw-away initialisation
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new


def wants_fft(conv: nn.Conv1d, mode: Mode, device: torch.device | str | None = None) -> bool:
    """Whether `mode` runs this convolution through the FFT ("auto": AUTO_RULE; "on": every kernel > 1)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"fft_conv mode must be 'auto', 'on' or 'off', got {mode!r}")
    k = conv.kernel_size[0]
    if mode == "off" or k == 1 or not supported(conv):
        return False
    if mode == "on":
        return True
    device_type = torch.device(device).type if device is not None else conv.weight.device.type
    return device_type == "cpu" and k >= AUTO_MIN_KERNEL


def convert_convolutions(model: nn.Module, mode: Mode, device: torch.device | str | None = None) -> int:
    """Swap Conv1d <-> FFTConv1d in place as `mode` says, keeping the parameters; returns the FFT count.

    "off" turns every FFTConv1d back into nn.Conv1d (an already plain model is left as it is).
    `device` is where the model will run (default: where its weights are), which "auto" depends on.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Conv1d):
                continue
            fft = wants_fft(child, mode, device)
            if fft and not isinstance(child, FFTConv1d):
                setattr(parent, name, FFTConv1d.from_conv(child))
            elif not fft and isinstance(child, FFTConv1d):
                setattr(parent, name, _rebuild(nn.Conv1d, child))
            count += fft
    return count


def plain_copy(model: nn.Module) -> nn.Module:
    """`model` itself when it has no FFTConv1d, else a deep copy with nn.Conv1d everywhere (for export)."""
    if not any(isinstance(m, FFTConv1d) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    convert_convolutions(plain, "off")
    return plain
