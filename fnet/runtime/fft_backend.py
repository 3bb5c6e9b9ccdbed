"""The FFT backend: a model package's own ONNX graph executed with numpy (CPU) or CuPy (GPU), convolutions by FFT.

Why: FNet's cost is its k=500 and k=200 convolutions (96 % of 29.3 GMAC per spectrum); through the FFT
they are the same function for a small fraction of the operations (fnet.runtime.fft_conv says how and
when a convolution takes that route).

How: the graph and the weights are read from the package file (fnet.runtime.onnx_graph: the ONNX file
stays the one artifact, no second weight format). At load every node becomes one step of a plan, with
its weights baked in. A run walks the plan with every 3-D activation channels-last, (batch, length,
channels), the layout the FFT convolutions work in; the ops that care about layout (Conv, MaxPool,
BatchNormalization, Add with a constant) work in it directly, every other op (Flatten, Reshape, Gemm,
Softmax, ...) sees the ONNX layout (batch, channels, length) through a transposed view. Elementwise steps
(Relu, Add, BatchNormalization) write into their input when nothing reads it afterwards, which saves a
pass over the activations per step. One implementation over an array module ``xp``: numpy (with ducc0 or
scipy.fft and worker threads) or CuPy (cuFFT, cuBLAS).

Supported ops (everything the shipped networks, the paper network and ensembles of them export to): Conv
(1-D, group 1, stride 1, dilation 1), Relu, Add, Identity, MaxPool (1-D), Flatten, Reshape, Gemm, MatMul,
Softmax, Cast, BatchNormalization, Constant, Mul, Log. Any other graph is refused at load, naming the op.

Not thread-safe: one backend runs one batch at a time (its convolutions reuse their padding buffers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backends import Backend
from .errors import BackendUnavailable
from .fft_conv import ArrayOps, Conv1d
from .model_package import ModelPackage
from .onnx_graph import Node, read_graph
from .onnx_wire import WireError

SUPPORTED_OPS = ("Conv", "Relu", "Add", "Identity", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Softmax",
                 "Cast", "BatchNormalization", "Constant", "Mul", "Log")
ALIASING_OPS = ("Identity", "Flatten", "Reshape")  # their output may share memory with their input
IN_PLACE_OPS = ("Relu", "Add", "BatchNormalization")
# ops that take channels-last activations as they are; every other op gets the ONNX layout (a transposed view)
CHANNELS_LAST_OPS = ("Conv", "Relu", "Add", "Identity", "MaxPool", "Cast", "BatchNormalization")
_ONNX_FLOAT = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64}


def _open_array_module(device: str) -> Any:
    """numpy for cpu, CuPy for cuda (refused cleanly when CuPy or a GPU is missing)."""
    if device == "cpu":
        return np
    if device != "cuda":
        raise BackendUnavailable(f"the FFT backend runs on cpu or cuda, not {device!r}")
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy, no driver or no GPU: a clean refusal, not a traceback
        raise BackendUnavailable(f"--backend fft --device cuda needs CuPy and a GPU ({exc})") from None
    return cupy


class FftBackend(Backend):
    """Runs a model package's ONNX graph with FFT convolutions, on numpy (CPU) or CuPy (GPU)."""

    def __init__(self, package: ModelPackage, device: str = "cpu", threads: int | None = None,
                 fft_engine: str | None = None):
        """`fft_engine`: the first CPU FFT engine to try (fnet.runtime.fft_conv.FFT_ENGINES); default the fastest."""
        xp = _open_array_module(device)
        self.xp, self.device = xp, device
        try:
            graph = read_graph(Path(package.path).read_bytes())
        except WireError as exc:
            raise BackendUnavailable(f"{package.path}: cannot read the ONNX graph for the FFT backend: {exc}") from None
        unsupported = sorted({n.op_type for n in graph.nodes if n.op_type not in SUPPORTED_OPS or n.domain})
        if unsupported:
            raise BackendUnavailable(f"{package.path}: the FFT backend does not support op(s) {', '.join(unsupported)} "
                                     f"(supported: {', '.join(SUPPORTED_OPS)})")
        several = sorted({n.op_type for n in graph.nodes if len([o for o in n.outputs if o]) > 1})
        if several:
            raise BackendUnavailable(f"{package.path}: the FFT backend runs single-output nodes only ({', '.join(several)} "
                                     "here has more than one output)")
        if graph.inputs != [package.input_name]:
            raise BackendUnavailable(f"{package.path}: graph inputs {graph.inputs}, metadata says {package.input_name!r}")
        recorded = (package.parity.get("companions") or {}).get("fft")
        if isinstance(recorded, dict) and recorded.get("passed") is False:
            raise BackendUnavailable(f"{package.path}: its FFT-backend parity check failed at export (max |dv| "
                                     f"{recorded.get('max_abs_dv_kms')} km/s against PyTorch); run it with "
                                     "--backend onnxruntime")
        self.graph = graph
        self.output_names = list(graph.outputs)
        self.ops = ArrayOps(xp, threads, fft_engine)
        self.values = dict(graph.initializers)  # weights, and what Identity/Constant nodes make of them
        for node in graph.nodes:
            if node.op_type == "Identity" and node.inputs[0] in self.values:
                self.values[node.outputs[0]] = self.values[node.inputs[0]]
            elif node.op_type == "Constant":
                self.values[node.outputs[0]] = np.asarray(node.attributes["value"])
        self.constants = {k: xp.asarray(v) for k, v in self.values.items()}
        reusable = self._reusable_inputs(graph)
        self.plan = [(node, self._step(node, reusable[i])) for i, node in enumerate(graph.nodes)
                     if node.outputs[0] not in self.values]
        self.convolutions = [step for _, step in self.plan if isinstance(step, Conv1d)]
        self._fuse_relus()
        self._fuse_add_relus()
        self.release = self._release_after()
        self.name = f"fft[{self.ops.label}]"

    def _fuse_relus(self) -> None:
        """A Relu read only by one Conv is applied by that Conv while it copies its input: one pass fewer."""
        readers: dict[str, list] = {}
        for node, step in self.plan:
            for name in node.inputs:
                readers.setdefault(name, []).append((node, step))
        for i, (node, step) in enumerate(self.plan):
            users = readers.get(node.outputs[0], [])
            # only where the Relu is the one reader of its input too: the fused Relu passes that very array on,
            # so no other step may overwrite it before the Conv reads it
            if node.op_type == "Relu" and node.outputs[0] not in self.output_names and len(users) == 1 \
                    and len(readers.get(node.inputs[0], [])) == 1 and node.inputs[0] not in self.output_names \
                    and isinstance(users[0][1], Conv1d) and users[0][0].inputs[0] == node.outputs[0]:
                users[0][1].relu_input = True
                self.plan[i] = (node, _unchanged)

    def _fuse_add_relus(self) -> None:
        """A Relu that is the one reader of an Add is done by that Add, spectrum by spectrum while it is in cache."""
        readers: dict[str, int] = {}
        for node, _ in self.plan:
            for name in node.inputs:
                readers[name] = readers.get(name, 0) + 1
        made_by = {node.outputs[0]: step for node, step in self.plan}
        for i, (node, step) in enumerate(self.plan):
            add = made_by.get(node.inputs[0]) if node.op_type == "Relu" and step is not _unchanged else None
            if isinstance(add, _Add) and readers[node.inputs[0]] == 1 and node.inputs[0] not in self.output_names:
                add.relu_output = True
                self.plan[i] = (node, _unchanged)

    def _release_after(self) -> list[list[str]]:
        """Per plan step, the values nobody reads after it (their pool buffers can be reused)."""
        last: dict[str, int] = {}
        for i, (node, _) in enumerate(self.plan):
            for name in list(node.inputs) + list(node.outputs):
                last[name] = i
        keep = set(self.output_names) | set(self.constants)
        out: list[list[str]] = [[] for _ in self.plan]
        for name, i in last.items():
            if name and name not in keep:
                out[i].append(name)
        return out

    def _reusable_inputs(self, graph) -> list[set[str]]:
        """Per node, the data inputs it may overwrite: made by this run, not aliased, not an output, read last here."""
        last_use: dict[str, int] = {}
        for i, node in enumerate(graph.nodes):
            for name in node.inputs:
                last_use[name] = i
        aliased = {n.inputs[0] for n in graph.nodes if n.op_type in ALIASING_OPS}
        made = {n.outputs[0] for n in graph.nodes if n.op_type not in ALIASING_OPS}
        keep = aliased | set(graph.outputs) | set(graph.inputs) | set(self.values)
        return [{name for name in node.inputs if name in made and name not in keep and last_use[name] == i}
                if node.op_type in IN_PLACE_OPS else set() for i, node in enumerate(graph.nodes)]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs for input x (n, npix), float32."""
        if len(x) == 0:  # outputs with no rows, shaped as the model makes them
            return {k: v[:0] for k, v in self.run(np.zeros((1, np.shape(x)[1]), np.float32)).items()}
        xp = self.xp
        env: dict[str, Any] = dict(self.constants)
        env[self.graph.inputs[0]] = xp.asarray(np.asarray(x, dtype=np.float32)[:, :, None])  # (B, L, 1) channels-last
        readers: dict[int, int] = {}  # pool buffer -> how many live values are (views of) it
        with self.ops.blas_limit():
            for (node, step), dead in zip(self.plan, self.release):
                value = step(*[env[name] if name else None for name in node.inputs])
                env[node.outputs[0]] = value
                owner = self.ops.owner(value)
                if owner is not None:
                    readers[owner] = readers.get(owner, 0) + 1
                for name in dead:
                    owner = self.ops.owner(env.pop(name))
                    if owner is not None:
                        readers[owner] -= 1
                        if readers[owner] == 0:
                            self.ops.give(owner)
        out = {name: _onnx_layout(env[name]) for name in self.output_names}
        if xp is not np:
            return {k: np.asarray(xp.asnumpy(v), dtype=np.float32) for k, v in out.items()}
        # a copy where the value lives in a pool buffer: the next batch will write there
        return {k: np.array(v, dtype=np.float32) if self.ops.owner(v) is not None else np.asarray(v, dtype=np.float32)
                for k, v in out.items()}

    # -- one function per op -------------------------------------------------------------------------

    def _step(self, node: Node, reusable: set[str]) -> Callable:
        """The function computing one node, on channels-last 3-D activations; `reusable`: inputs it may overwrite."""
        step = self._op(node, reusable)
        constant = [name in self.values for name in node.inputs]
        if node.op_type in CHANNELS_LAST_OPS:
            return step

        def in_onnx_layout(*args):
            value = step(*[v if c or v is None else _onnx_layout(v) for v, c in zip(args, constant)])
            return _channels_last(value)
        return in_onnx_layout

    def _op(self, node: Node, reusable: set[str]) -> Callable:
        """The function computing one node in ONNX semantics (3-D activations channels-last for CHANNELS_LAST_OPS)."""
        xp, a = self.xp, node.attributes
        op = node.op_type
        own = [bool(name) and name in reusable for name in node.inputs]
        if op == "Conv":
            return self._conv(node)
        if op == "Relu":
            def relu(x):
                out = x if own[0] else self.ops.take(x.shape, x.dtype)
                self.ops.map_batch(lambda s: xp.maximum(x[s], 0, out=out[s]), len(x))
                return out
            return relu
        if op == "Add":
            return _Add(self.ops, own, [name in self.values for name in node.inputs])
        if op == "Identity":
            return lambda x: x
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
        if op == "Mul":  # an ensemble's 1/K (fnet.train.ensemble)
            return lambda x, y: xp.multiply(x, y)
        if op == "Log":
            return lambda x: xp.log(x)
        if op == "Gemm":
            alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
            ta, tb = a.get("transA", 0), a.get("transB", 0)

            def gemm(x, w, c=None):
                x, w = x.T if ta else x, w.T if tb else w
                y = xp.empty((x.shape[0], w.shape[1]), dtype=xp.result_type(x, w))
                self.ops.map_batch(lambda s: xp.matmul(x[s], w, out=y[s]), x.shape[0])  # rows over the threads
                y = y * alpha if alpha != 1.0 else y
                return y + (beta * c if beta != 1.0 else c) if c is not None else y
            return gemm
        if op == "BatchNormalization":
            eps = a.get("epsilon", 1e-5)

            def batchnorm(x, scale, bias, mean, var):
                # channels are the last axis of (B, C) and channels-last (B, L, C); axis 1 of higher ranks (ONNX)
                shape = (-1,) if x.ndim <= 3 else (1, -1) + (1,) * (x.ndim - 2)
                k = (scale / xp.sqrt(var + eps)).reshape(shape)
                y = xp.subtract(x, mean.reshape(shape), out=x if own[0] else None)
                y *= k
                y += bias.reshape(shape)
                return y
            return batchnorm
        if op == "MaxPool":
            return self._maxpool(node)
        raise BackendUnavailable(f"op {op} is not supported by the FFT backend")

    def _conv(self, node: Node) -> Conv1d:
        a = node.attributes
        missing = [name for name in node.inputs[1:] if name and name not in self.values]
        if missing:
            raise BackendUnavailable(f"Conv {node.name}: weights {missing} are computed in the graph, not constants")
        w = np.asarray(self.values[node.inputs[1]], dtype=np.float32)
        if w.ndim != 3:
            raise BackendUnavailable(f"Conv {node.name}: only 1-D convolutions are supported (weight shape {w.shape})")
        if a.get("group", 1) != 1 or any(s != 1 for s in a.get("strides", [1])) or \
                any(d != 1 for d in a.get("dilations", [1])) or a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise BackendUnavailable(f"Conv {node.name}: only group 1, stride 1, dilation 1, explicit pads are supported")
        bias = self.values.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        pads = list(a.get("pads", [0, 0]))
        return Conv1d(w, bias, (pads[0], pads[1]), self.ops)

    def _maxpool(self, node: Node) -> Callable:
        xp, a = self.xp, node.attributes
        if len(a["kernel_shape"]) != 1:
            raise BackendUnavailable(f"MaxPool {node.name}: only 1-D pooling is supported (kernel {a['kernel_shape']})")
        k = a["kernel_shape"][0]
        s = a.get("strides", [1])[0]
        if any(a.get("pads", [0, 0])) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1])):
            raise BackendUnavailable(f"MaxPool {node.name}: only unpadded, floor-mode 1-D pooling is supported")

        def maxpool(x):  # (B, L, C), pooled along L
            n = (x.shape[1] - k) // s + 1
            if s == k:
                return x[:, : n * k].reshape(x.shape[0], n, k, x.shape[2]).max(axis=2)
            return xp.stack([x[:, i: i + s * (n - 1) + 1: s] for i in range(k)]).max(axis=0)
        return maxpool


class _Add:
    """ONNX Add (numpy broadcasting), into an input nothing reads afterwards when it can, and a fused Relu if set.

    3-D activations are added one spectrum at a time on the worker threads: the sum is still in cache
    when the fused Relu reads it back.
    """

    def __init__(self, ops: ArrayOps, own: list[bool], constant: list[bool]):
        self.ops, self.own, self.constant = ops, own, constant
        self.relu_output = False  # set by FftBackend._fuse_add_relus

    def __call__(self, x, y):
        xp = self.ops.xp
        if max(x.ndim, y.ndim) == 3:  # a channels-last sum: operands in the ONNX layout are turned to match
            x, y = (v if v.ndim == 3 and not c else _channels_last_operand(v) for v, c in zip((x, y), self.constant))
        else:  # any other rank is added in the ONNX layout
            x, y = (v if c else _onnx_layout(v) for v, c in zip((x, y), self.constant))
        shape = np.broadcast_shapes(x.shape, y.shape)  # shape arithmetic: numpy's, on either array module
        if self.own[0] and x.shape == shape:
            out = x
        elif self.own[1] and y.shape == shape:
            out = y
        else:
            out = self.ops.take(shape, xp.result_type(x, y))
        if len(shape) != 3 or xp is not np:
            xp.add(x, y, out=out)
            if self.relu_output:
                xp.maximum(out, 0, out=out)
            return out

        def row(v, i: int):  # operand i of the batch: its own row, its only row, or all of it (lower rank)
            return v if v.ndim < 3 else v[i if v.shape[0] > 1 else 0]

        def part(s: slice) -> None:
            for i in range(s.start, s.stop):
                xp.add(row(x, i), row(y, i), out=out[i])
                if self.relu_output:
                    xp.maximum(out[i], 0, out=out[i])
        self.ops.map_batch(part, shape[0])
        return out


def _onnx_layout(value):
    """A channels-last 3-D activation as the ONNX layout (B, C, L) (a view); other ranks as they are."""
    return value.transpose(0, 2, 1) if value.ndim == 3 else value


def _channels_last(value):
    """An ONNX-layout 3-D activation as channels-last (B, L, C) (a view); other ranks as they are."""
    return value.transpose(0, 2, 1) if value.ndim == 3 else value


def _channels_last_operand(value):
    """An ONNX-layout operand of rank <= 3 (a constant, or a computed lower-rank value) that broadcasts against
    (B, C, L), as the view that broadcasts the same way against (B, L, C)."""
    return value.reshape((1,) * (3 - value.ndim) + tuple(value.shape)).transpose(0, 2, 1)


def _unchanged(x, *_):
    """The step of a node whose work another step does (a Relu fused into the Conv that reads it)."""
    return x


def _host(value) -> list:
    """A small shape tensor as a Python list, wherever it lives."""
    return [int(v) for v in (value.get() if hasattr(value, "get") else np.asarray(value)).ravel()]
