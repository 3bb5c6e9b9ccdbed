"""FP16 arithmetic as a GPU computes it, emulated on the CPU: what the FP16 export gate judges where no GPU is.

Why: ONNX Runtime CPU runs an FP16 graph mostly in FP32 (it wraps the kernels it lacks in FP16 with Cast
nodes, then drops the back-to-back casts between them), so its outputs equal an FP32 graph holding
FP16-rounded weights. An activation of 1e5 is never rounded to FP16 there, and never overflows; on a GPU it
is inf. Judging an FP16 package by ONNX Runtime CPU alone therefore mostly measures weight rounding.

The emulation model (what an FP16 engine from ONNX Runtime CUDA or TensorRT computes):

- BatchNorm is folded into the convolution before it (in float64) and the folded weights are rounded to
  FP16: ONNX Runtime and TensorRT fuse Conv+BN, so the folded weights are the ones the device holds;
- the input of the FP16 part, every weight and bias of it, and every layer's output are rounded to FP16
  (round to nearest even; overflow gives ±inf, as ``torch.Tensor.half()``): convolutions, a BatchNorm not
  folded, ReLU, the residual Add, MaxPool, the fully connected layers — every node of the traced graph;
- accumulation inside a layer, ``accumulation=``:

  * ``"fp32"`` (default): the products of FP16 operands are exact in FP32 and are summed in FP32; one
    rounding at the layer's output. This is how tensor-core (HMMA) kernels with FP32 accumulators compute
    (not yet compared with a GPU in this project: where one is present the gate measures there instead);
  * ``"fp16"``: partial sums held in FP16. The reduction of a layer (input channels x kernel taps,
    channels innermost as in an implicit GEMM) is consumed ``chunk`` products at a time (16: one HMMA
    k-step), each chunk summed in FP32 and added to a running FP16 sum that is rounded after every chunk;
    ``chunk=1`` is naive FP16 accumulation. It bounds kernels that accumulate in FP16; it costs
    (reduction / chunk) convolution calls per layer: for small networks and for measurement, too slow as
    the gate of the paper network;

- the head (the module ``.out``, when the network has one) runs in FP32 on the FP16 activations, with
  FP32 weights, as in the mixed-precision package (fnet.export.onnx_export): an FP16 output would move
  a redshift by up to half an FP16 step, for the regression head 2^-12 x (z_max - z_min) in z, ~100 km/s
  at z ~ 4 for z_max = 7.

Measured on the paper network's unit-2 k=500 convolution (32 -> 32 channels, 16,000 products per output;
He-normal weights, real DR16 spectra; ``python benchmarks/fp16_accumulation.py``): relative rms error against
float64 of 3.3e-4 with FP32 accumulation (FP16 rounding of the input, the weights and the output), 4.5e-3 with
FP16 partial sums in chunks of 16, 1.3e-2 with naive FP16 accumulation (chunk 1). The gate uses the FP32
model: it is the faithful one for the kernels the packages run on; what the gate exists to catch, a network
whose values FP16 cannot hold (overflow to inf), comes from the rounding of the values and is caught by any
of the three.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..runtime.backends import run_in_batches
from ..train.fft_conv import plain_copy
from ..train.heads import numpy_outputs

ACCUMULATIONS = ("fp32", "fp16")
HEADS = ("out", "cls")  # the modules that decide the redshift and the class: FP32 in an FP16 package


def head_names(model: nn.Module) -> list[str]:
    """The network's head modules (kept FP32 in FP16 packages): its own, or each ensemble member's (members.K.out)."""
    own = [name for name in HEADS if isinstance(getattr(model, name, None), nn.Module)]
    if own:
        return own
    members = getattr(model, "members", None)
    if not isinstance(members, nn.ModuleList):
        return []
    return [f"members.{i}.{name}" for i, member in enumerate(members) for name in head_names(member)]


def fp32_layers(model: nn.Module) -> list[str]:
    """The modules an FP16 package of this network keeps in FP32 (recorded in the package as fnet.fp32_layers)."""
    return head_names(model)


def _in_heads(name: str, heads: list[str]) -> bool:
    """True for a module name inside one of the head modules."""
    return any(name == h or name.startswith(h + ".") for h in heads)


def _to_float32(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the FP32 head: its input arrives in FP16."""
    return tuple(a.float() if torch.is_tensor(a) else a for a in args)


class _MixedPrecision(nn.Module):
    """float32 in, FP16 network body, FP32 head, float32 out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.net(x.half())
        if isinstance(out, tuple):
            return tuple(o if o.dtype == torch.float32 else o.float() for o in out)
        return out if out.dtype == torch.float32 else out.float()  # an FP32 head's output needs no Cast


def mixed_precision(model: nn.Module) -> nn.Module:
    """A copy of the network computing in FP16 except its heads (``.out``, ``.cls``: FP32); float32 input and output.

    A network without them runs wholly in FP16 (its output is cast back to float32).
    """
    net = copy.deepcopy(model).eval().float().cpu().half()
    for head in head_names(net):
        net.get_submodule(head).float().register_forward_pre_hook(_to_float32)
    return _MixedPrecision(net).eval()


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """The network as a traced graph with every BatchNorm that follows a convolution folded into it (float64)."""
    from torch.fx.experimental.optimization import fuse

    try:  # FFT convolutions (training's) as nn.Conv1d: the function the package holds, and traceable
        return fuse(copy.deepcopy(plain_copy(model)).eval().cpu().double())
    except Exception as exc:  # noqa: BLE001  control flow or an op torch.fx cannot trace
        raise ValueError(f"FP16 arithmetic cannot be evaluated for {type(model).__name__}: torch.fx cannot trace "
                         f"it ({type(exc).__name__}: {exc})") from None


def _fp16(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP16 value (overflow -> ±inf), kept in a float32 tensor."""
    return t.half().float()


def _conv_fp16_partials(conv: nn.Conv1d, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """A Conv1d whose running sum is FP16, rounded after every `chunk` products of the reduction."""
    if conv.stride != (1,) or conv.dilation != (1,) or conv.groups != 1 or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str):
        raise ValueError(f"FP16 partial sums are modelled for plain 1-D convolutions only, not {conv}")
    w = conv.weight
    cin, k = w.shape[1], w.shape[2]
    xp = F.pad(x, (conv.padding[0], conv.padding[0]))
    lout = xp.shape[2] - k + 1
    group, taps = min(cin, chunk), max(1, chunk // cin)  # a chunk: `group` channels x `taps` taps
    acc = None
    for t0 in range(0, k, taps):
        t1 = min(k, t0 + taps)
        for c0 in range(0, cin, group):
            part = F.conv1d(xp[:, c0:c0 + group, t0:t1 - 1 + lout], w[:, c0:c0 + group, t0:t1])
            acc = _fp16(part if acc is None else acc + part)
    return acc if conv.bias is None else acc + conv.bias[:, None]


def _linear_fp16_partials(linear: nn.Linear, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """A Linear whose running sum is FP16, rounded after every `chunk` products."""
    acc = None
    for f0 in range(0, linear.in_features, chunk):
        part = x[..., f0:f0 + chunk] @ linear.weight[:, f0:f0 + chunk].T
        acc = _fp16(part if acc is None else acc + part)
    return acc if linear.bias is None else acc + linear.bias


class _Fp16Interpreter(fx.Interpreter):
    """Runs a traced network rounding every value of its FP16 part to FP16; the head and after stay FP32."""

    def __init__(self, graph: fx.GraphModule, heads: list[str], accumulation: str, chunk: int):
        super().__init__(graph)
        self.accumulation, self.chunk = accumulation, chunk
        self.node: fx.Node | None = None  # the node being run (call_module is given its target only)
        # the heads' nodes and everything computed from them: FP32
        self.fp32_nodes: set[fx.Node] = set()
        for node in graph.graph.nodes:
            in_head = node.op == "call_module" and _in_heads(str(node.target), heads)
            if in_head or any(arg in self.fp32_nodes for arg in node.all_input_nodes):
                self.fp32_nodes.add(node)

    def run_node(self, node: fx.Node):
        self.node = node
        out = super().run_node(node)
        if node in self.fp32_nodes or node.op == "output" or not torch.is_tensor(out) \
                or not out.is_floating_point():
            return out
        return _fp16(out)

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if self.accumulation == "fp16" and self.node not in self.fp32_nodes:
            if isinstance(module, nn.Conv1d):
                return _conv_fp16_partials(module, args[0], self.chunk)
            if isinstance(module, nn.Linear):
                return _linear_fp16_partials(module, args[0], self.chunk)
        return super().call_module(target, args, kwargs)


def _batch_size(model: nn.Module, npix: int, memory: float) -> int:
    """Spectra per batch so that a CPU float32 convolution that unfolds its input (c_in·k per pixel) fits `memory`."""
    unfold = max([m.in_channels * m.kernel_size[0] for m in model.modules() if isinstance(m, nn.Conv1d)],
                 default=1) * npix * 4
    return max(1, min(64, int(memory // unfold)))


def emulated_fp16_outputs(model: nn.Module, output_name: str, x: np.ndarray, *, accumulation: str = "fp32",
                          chunk: int = 16, memory: float = 2 * 2 ** 30) -> dict[str, np.ndarray]:
    """The network's outputs on x (n, npix) as FP16 arithmetic gives them (see the module docstring), on the CPU."""
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    heads = head_names(model)
    graph = fold_batchnorm(model).float()
    for name, sub in graph.named_modules():
        if _in_heads(name, heads):
            continue  # the heads keep their FP32 weights
        for tensor in list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False)):
            if tensor.is_floating_point():
                tensor.data = _fp16(tensor.data)
    interpreter = _Fp16Interpreter(graph, heads, accumulation, chunk)

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = interpreter.run(torch.from_numpy(np.ascontiguousarray(batch[:, None, :], dtype=np.float32)))
        return numpy_outputs(out, getattr(model, "head", None), output_name)

    return run_in_batches(run, x, _batch_size(model, x.shape[1], memory))


def device_fp16_outputs(model: nn.Module, output_name: str, x: np.ndarray, device: str = "cuda",
                        batch_size: int = 64) -> dict[str, np.ndarray]:
    """The mixed-precision network (BatchNorm folded, FP16 body, FP32 head) run on a GPU: measured FP16 arithmetic."""
    net = mixed_precision(fold_batchnorm(model).float()).to(device)

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(batch[:, None, :], dtype=np.float32)).to(device))
        return numpy_outputs(out, getattr(model, "head", None), output_name)

    return run_in_batches(run, x, batch_size)


def fp16_arithmetic_outputs(model: nn.Module, output_name: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], str]:
    """(outputs, how): measured on the CUDA GPU when one is present ("device:<name>"), else "emulated-fp16"."""
    if torch.cuda.is_available():
        return device_fp16_outputs(model, output_name, x), f"device:{torch.cuda.get_device_name()}"
    return emulated_fp16_outputs(model, output_name, x), "emulated-fp16"
