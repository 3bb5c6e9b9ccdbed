"""The FFT backend: a model package's own ONNX graph executed with numpy (CPU) or CuPy (GPU), convolutions by FFT.

Why: FNet's cost is its k=500 and k=200 convolutions (96 % of 29.3 GMAC per spectrum); through the FFT
they are the same function for a small fraction of the operations (fnet.runtime.fft_conv says how and
when a convolution takes that route).

How: the graph and the weights are read from the package file (fnet.runtime.onnx_graph: the ONNX file
stays the one artifact, no second weight format). At load every node becomes one step of a plan, with
its weights baked in; a run walks the plan over the ONNX layout (batch, channels, length). Elementwise
steps (Relu, Add, BatchNormalization) write into their input when nothing reads it afterwards, which
saves a pass over the activations per step. One implementation over an array module ``xp``: numpy
(scipy.fft with worker threads when scipy is installed) or CuPy (cuFFT, cuBLAS).

Supported ops (everything the shipped networks and the paper network export to): Conv (1-D, group 1,
stride 1, dilation 1), Relu, Add, Identity, MaxPool (1-D), Flatten, Reshape, Gemm, MatMul, Softmax,
Cast, BatchNormalization, Constant. Any other graph is refused at load, naming the op.

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
                 "Cast", "BatchNormalization", "Constant")
ALIASING_OPS = ("Identity", "Flatten", "Reshape")  # their output may share memory with their input
IN_PLACE_OPS = ("Relu", "Add", "BatchNormalization")
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

    def __init__(self, package: ModelPackage, device: str = "cpu", threads: int | None = None):
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
        self.ops = ArrayOps(xp, threads)
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
        env[self.graph.inputs[0]] = xp.asarray(np.asarray(x, dtype=np.float32)[:, None, :])
        readers: dict[int, int] = {}  # pool buffer -> how many live values are (views of) it
        for (node, step), dead in zip(self.plan, self.release):
            results = step(*[env[name] if name else None for name in node.inputs])
            for name, value in zip(node.outputs, results if isinstance(results, tuple) else (results,)):
                env[name] = value
                owner = self.ops.owner(value)
                if owner is not None:
                    readers[owner] = readers.get(owner, 0) + 1
            for name in dead:
                owner = self.ops.owner(env.pop(name))
                if owner is not None:
                    readers[owner] -= 1
                    if readers[owner] == 0:
                        self.ops.give(owner)
        out = {name: env[name] for name in self.output_names}
        if xp is not np:
            return {k: np.asarray(xp.asnumpy(v), dtype=np.float32) for k, v in out.items()}
        # a copy where the value lives in a pool buffer: the next batch will write there
        return {k: np.array(v, dtype=np.float32) if self.ops.owner(v) is not None else np.asarray(v, dtype=np.float32)
                for k, v in out.items()}

    # -- one function per op -------------------------------------------------------------------------

    def _step(self, node: Node, reusable: set[str]) -> Callable:
        """The function computing one node; `reusable`: the inputs it may overwrite."""
        xp, a = self.xp, node.attributes
        op = node.op_type
        own = [bool(name) and name in reusable for name in node.inputs]
        if op == "Conv":
            return self._conv(node)
        if op == "Relu":
            return (lambda x: xp.maximum(x, 0, out=x)) if own[0] else (lambda x: xp.maximum(x, 0, out=self.ops.take(x.shape)))
        if op == "Add":
            def add(x, y):
                shape = np.broadcast_shapes(x.shape, y.shape)  # shape arithmetic: numpy's, on either array module
                if own[0] and x.shape == shape:
                    return xp.add(x, y, out=x)
                if own[1] and y.shape == shape:
                    return xp.add(x, y, out=y)
                return xp.add(x, y, out=self.ops.take(shape, xp.result_type(x, y)))
            return add
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
        if op == "Gemm":
            alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
            ta, tb = a.get("transA", 0), a.get("transB", 0)

            def gemm(x, w, c=None):
                y = xp.matmul(x.T if ta else x, w.T if tb else w)
                y = y * alpha if alpha != 1.0 else y
                return y + (beta * c if beta != 1.0 else c) if c is not None else y
            return gemm
        if op == "BatchNormalization":
            eps = a.get("epsilon", 1e-5)

            def batchnorm(x, scale, bias, mean, var):
                shape = (1, -1) + (1,) * (x.ndim - 2)
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
        k = a["kernel_shape"][0]
        s = a.get("strides", [1])[0]
        if any(a.get("pads", [0, 0])) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1])):
            raise BackendUnavailable(f"MaxPool {node.name}: only unpadded, floor-mode 1-D pooling is supported")

        def maxpool(x):
            n = (x.shape[-1] - k) // s + 1
            if s == k:
                return x[..., : n * k].reshape(x.shape[:-1] + (n, k)).max(axis=-1)
            return xp.stack([x[..., i: i + s * (n - 1) + 1: s] for i in range(k)]).max(axis=0)
        return maxpool


def _unchanged(x, *_):
    """The step of a node whose work another step does (a Relu fused into the Conv that reads it)."""
    return x


def _host(value) -> list:
    """A small shape tensor as a Python list, wherever it lives."""
    return [int(v) for v in (value.get() if hasattr(value, "get") else np.asarray(value)).ravel()]
