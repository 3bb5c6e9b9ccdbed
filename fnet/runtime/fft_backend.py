"""The FFT backend: a model package's own ONNX graph executed with numpy (CPU) or CuPy (GPU), convolutions by FFT.

Why: FNet's cost is its k=500 and k=200 convolutions (96 % of 29.3 GMAC per spectrum). Through the FFT a
convolution over L pixels costs O(L log L) per channel plus a per-frequency channel mixing (a batched
complex matrix product), instead of O(L·k) multiply-adds per channel pair: the same function with far
fewer operations.

How: the graph and the weights are read from the package file (fnet.runtime.onnx_graph: the ONNX file
stays the one artifact, no second weight format). At load every node becomes one step of a plan;
convolution kernels are transformed once per input length and kept as (frequency, c_in, c_out)
complex matrices. A run is then, per convolution: zero-pad, real FFT, batched matmul over
frequencies, inverse FFT, crop, bias. The code is written against an array module ``xp``: numpy
(with scipy.fft and worker threads when scipy is installed) or CuPy (cuFFT, cuBLAS), one implementation.

Supported ops (everything the shipped networks and the paper network export to): Conv (1-D, group 1,
stride 1, dilation 1), Relu, Add, Identity, MaxPool (1-D), Flatten, Reshape, Gemm, MatMul, Softmax,
Cast, BatchNormalization, Constant. Any other graph is refused at load, naming the op.

Which convolutions go through the FFT (CONV_RULE): every kernel wider than one pixel; a 1x1
convolution is a plain matrix product. This is a first rule, not yet measured layer by layer (issue #7);
benchmarks/bench_fft.py measures the whole networks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backends import Backend
from .errors import BackendUnavailable
from .model_package import ModelPackage
from .onnx_graph import Node, read_graph
from .onnx_wire import WireError

SUPPORTED_OPS = ("Conv", "Relu", "Add", "Identity", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Softmax",
                 "Cast", "BatchNormalization", "Constant")
TIME_MAJOR_OPS = ("Conv", "Relu", "Add", "Identity", "MaxPool", "BatchNormalization")
CONV_RULE = "FFT for every kernel wider than 1 pixel; 1x1 kernels as a matrix product"
_ONNX_FLOAT = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64}


def next_fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT sizes both pocketfft and cuFFT handle fastest)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


class _Fft:
    """rfft / irfft along the time axis (axis 0): scipy.fft with worker threads for numpy when present, else xp.fft."""

    def __init__(self, xp: Any, workers: int | None):
        self.xp = xp
        self.kwargs: dict = {}
        if xp is np:
            try:
                import scipy.fft as sfft

                self.module, self.kwargs = sfft, {"workers": workers or os.cpu_count() or 1}
                return
            except ImportError:
                pass
        self.module = xp.fft

    def rfft(self, x, n: int):
        return self.module.rfft(x, n=n, axis=0, **self.kwargs)

    def irfft(self, x, n: int):
        return self.module.irfft(x, n=n, axis=0, **self.kwargs)


class _Conv:
    """A 1-D convolution step: FFT with kernels transformed once per input length, or a 1x1 matrix product."""

    def __init__(self, node: Node, weights: dict, xp: Any, fft: _Fft):
        a = node.attributes
        w = np.asarray(weights[node.inputs[1]], dtype=np.float32)
        if w.ndim != 3:
            raise BackendUnavailable(f"Conv {node.name}: only 1-D convolutions are supported (weight shape {w.shape})")
        if a.get("group", 1) != 1 or any(s != 1 for s in a.get("strides", [1])) or \
                any(d != 1 for d in a.get("dilations", [1])) or a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise BackendUnavailable(f"Conv {node.name}: only group 1, stride 1, dilation 1, explicit pads are supported")
        self.pads = list(a.get("pads", [0, 0]))
        self.k = w.shape[2]
        self.xp, self.fft = xp, fft
        self.w = w
        bias = weights.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        self.bias = None if bias is None else xp.asarray(np.asarray(bias, np.float32)[None, None, :])
        self.w1 = xp.asarray(np.ascontiguousarray(w[:, :, 0].T)) if self.k == 1 else None
        self._spectra: dict[int, Any] = {}  # FFT length -> (F, c_in, c_out) conj(rfft(kernel))

    def _kernel_spectrum(self, n: int):
        if n not in self._spectra:
            xp = self.xp
            spectrum = np.conj(np.fft.rfft(self.w.astype(np.float64), n=n, axis=-1))  # (c_out, c_in, F), once
            self._spectra[n] = xp.asarray(np.ascontiguousarray(spectrum.transpose(2, 1, 0)).astype(np.complex64))
        return self._spectra[n]

    def __call__(self, x, *_weights):  # x time-major (L, B, c_in); the weights are baked in at load
        xp = self.xp
        left, right = self.pads
        length = x.shape[0] + left + right
        out_len = length - self.k + 1
        if self.k == 1:
            if left or right:
                x = xp.pad(x, ((left, right), (0, 0), (0, 0)))
            y = xp.matmul(x, self.w1)
        else:
            # circular correlation of length n >= padded length never wraps into the outputs kept; with the
            # time axis first, the FFT output (F, B, c_in) feeds the per-frequency matmul with no transpose.
            # One zero buffer of length n holds the padding and the FFT's own zero extension.
            n = next_fast_length(length)
            buffer = xp.zeros((n,) + x.shape[1:], dtype=np.float32)
            buffer[left:left + x.shape[0]] = x
            y = self.fft.irfft(xp.matmul(self.fft.rfft(buffer, n), self._kernel_spectrum(n)), n)[:out_len]
        y = y.astype(np.float32, copy=False)
        return y + self.bias if self.bias is not None else y


class FftBackend(Backend):
    """Runs a model package's ONNX graph with FFT convolutions, on numpy (CPU) or CuPy (GPU)."""

    def __init__(self, package: ModelPackage, device: str = "cpu", threads: int | None = None):
        if device == "cuda":
            try:
                import cupy as xp
                xp.cuda.runtime.getDeviceCount()
            except Exception as exc:  # no CuPy, no driver or no GPU: a clean refusal, not a traceback
                raise BackendUnavailable(f"--backend fft --device cuda needs CuPy and a GPU ({exc})") from None
        elif device == "cpu":
            xp = np
        else:
            raise BackendUnavailable(f"the FFT backend runs on cpu or cuda, not {device!r}")
        self.xp = xp
        self.device = device
        try:
            graph = read_graph(Path(package.path).read_bytes())
        except WireError as exc:
            raise BackendUnavailable(f"{package.path}: cannot read the ONNX graph for the FFT backend: {exc}") from None
        unsupported = sorted({n.op_type for n in graph.nodes if n.op_type not in SUPPORTED_OPS or n.domain})
        if unsupported:
            raise BackendUnavailable(f"{package.path}: the FFT backend does not support op(s) {', '.join(unsupported)} "
                                     f"(supported: {', '.join(SUPPORTED_OPS)})")
        if graph.inputs != [package.input_name]:
            raise BackendUnavailable(f"{package.path}: graph inputs {graph.inputs}, metadata says {package.input_name!r}")
        self.graph = graph
        self.fft = _Fft(xp, threads)
        self.constants = {k: xp.asarray(v) for k, v in graph.initializers.items()}
        # Activations of the convolution stack live time-major, (L, B, C): the FFT then runs along axis 0
        # and its output feeds the per-frequency channel matmul with no transpose. A tensor leaves that
        # layout (to (B, C, L)) only where an op that needs the ONNX layout (Flatten, Gemm, ...) reads it.
        time_major = {graph.inputs[0]}
        self.values = dict(graph.initializers)  # weights, and what Identity/Constant nodes make of them
        constant = self.values
        self.plan = []
        for node in graph.nodes:
            data = [name for name in node.inputs if name and name not in constant]
            if node.op_type == "Identity" and not data:
                constant[node.outputs[0]] = constant[node.inputs[0]]
            elif node.op_type == "Constant":
                constant[node.outputs[0]] = np.asarray(node.attributes["value"])
            tm = node.op_type in TIME_MAJOR_OPS and bool(data) and all(name in time_major for name in data)
            if node.op_type == "Conv" and not tm:
                raise BackendUnavailable(f"Conv {node.name}: its input is not a spectrum-shaped activation")
            convert = [bool(name) and name in time_major and not tm for name in node.inputs]
            if tm:
                time_major.update(node.outputs)
            self.plan.append((node, self._step(node, tm), convert))
        self.output_time_major = [name in time_major for name in graph.outputs]
        self.output_names = list(graph.outputs)
        self.name = f"fft[{'cupy' if xp is not np else 'numpy'}{'+scipy.fft' if self.fft.kwargs else ''}]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs for input x (n, npix), float32."""
        xp = self.xp
        env: dict[str, Any] = dict(self.constants)
        env[self.graph.inputs[0]] = xp.asarray(np.ascontiguousarray(np.asarray(x, np.float32).T[:, :, None]))
        for node, step, convert in self.plan:
            args = [(env[name].transpose(1, 2, 0) if flip else env[name]) if name else None
                    for name, flip in zip(node.inputs, convert)]
            results = step(*args)
            for name, value in zip(node.outputs, results if isinstance(results, tuple) else (results,)):
                env[name] = value
        out = {name: (env[name].transpose(1, 2, 0) if tm else env[name])
               for name, tm in zip(self.output_names, self.output_time_major)}
        if xp is not np:
            out = {k: xp.asnumpy(v) for k, v in out.items()}
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    # -- one function per op -------------------------------------------------------------------------

    def _step(self, node: Node, tm: bool) -> Callable:
        """The function computing one node; `tm`: its activations are time-major (L, B, C)."""
        xp, a = self.xp, node.attributes
        op = node.op_type
        if op == "Conv":
            missing = [name for name in node.inputs[1:] if name and name not in self.values]
            if missing:
                raise BackendUnavailable(f"Conv {node.name}: weights {missing} are computed in the graph, not constants")
            return _Conv(node, self.values, xp, self.fft)
        if op == "Relu":
            return lambda x: xp.maximum(x, 0)
        if op == "Add":
            return lambda x, y: x + y
        if op == "Identity":
            return lambda x: x
        if op == "Constant":
            value = xp.asarray(a["value"])
            return lambda: value
        if op == "Flatten":
            axis = a.get("axis", 1)
            return lambda x: x.reshape(int(np.prod(x.shape[:axis])), -1)
        if op == "Reshape":
            return lambda x, shape: x.reshape([int(s) if s != 0 else x.shape[i] for i, s in enumerate(_host(shape))])
        if op == "Cast":
            dtype = _ONNX_FLOAT.get(a["to"])
            if dtype is None:
                raise BackendUnavailable(f"Cast {node.name}: target type {a['to']} is not supported")
            return lambda x: x.astype(dtype)
        if op == "Softmax":
            axis = a.get("axis", -1)

            def softmax(x):
                e = xp.exp(x - x.max(axis=axis, keepdims=True))
                return e / e.sum(axis=axis, keepdims=True)
            return softmax
        if op == "MatMul":
            return lambda x, y: xp.matmul(x, y)
        if op == "Gemm":
            alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
            ta, tb = a.get("transA", 0), a.get("transB", 0)

            def gemm(x, w, c=None):
                y = alpha * xp.matmul(x.T if ta else x, w.T if tb else w)
                return y + beta * c if c is not None else y
            return gemm
        if op == "BatchNormalization":
            eps = a.get("epsilon", 1e-5)

            def batchnorm(x, scale, bias, mean, var):
                shape = (1, 1, -1) if tm else (1, -1) + (1,) * (x.ndim - 2)
                k = (scale / xp.sqrt(var + eps)).reshape(shape)
                return (x - mean.reshape(shape)) * k + bias.reshape(shape)
            return batchnorm
        if op == "MaxPool":
            k = a["kernel_shape"][0]
            s = a.get("strides", [1])[0]
            if any(a.get("pads", [0, 0])) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1])):
                raise BackendUnavailable(f"MaxPool {node.name}: only unpadded, floor-mode 1-D pooling is supported")

            def maxpool(x):
                if not tm:
                    return maxpool(x.transpose(2, 0, 1)).transpose(1, 2, 0)
                n = (x.shape[0] - k) // s + 1
                if s == k:
                    return x[: n * k].reshape((n, k) + x.shape[1:]).max(axis=1)
                return xp.stack([x[i: i + s * (n - 1) + 1: s] for i in range(k)]).max(axis=0)
            return maxpool
        raise BackendUnavailable(f"op {op} is not supported by the FFT backend")


def _host(value) -> list:
    """A small shape tensor as a Python list, wherever it lives."""
    return [int(v) for v in (value.get() if hasattr(value, "get") else np.asarray(value)).ravel()]
