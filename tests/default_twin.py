"""The embedded default model rebuilt as a torch network from its own ONNX weights (for tests that need PyTorch's
answer on the shipped model: parity gates, FP16 arithmetic).

The package holds its convolutions with BatchNorm folded in: they are loaded into the convolutions and the
BatchNorms set to the identity, which is the same function. An ensemble package ("pooled4x x3 (ensemble)",
fnet.train.ensemble) is rebuilt member by member: its graph holds the members' layers in that order.
"""

from __future__ import annotations

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from fnet.cli import default_model_path
from fnet.runtime.model_package import ModelPackage, load_model_package
from fnet.train.ensemble import Ensemble
from fnet.train.model import build_model


def default_model_twin() -> tuple[nn.Module, ModelPackage]:
    """(the shipped default model as an eval-mode torch network, its package)."""
    package = load_model_package(default_model_path())
    graph = onnx.load(str(default_model_path())).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    arch, n_members = package.architecture.split()[0], len(package.training.get("ensemble") or [None])
    members = [build_model(arch, package.head, package.grid).eval() for _ in range(n_members)]
    convs = [m for net in members for m in net.features if isinstance(m, nn.Conv1d)]
    linears = [m for net in members
               for m in [m for m in net.fc if isinstance(m, nn.Linear)] + [net.out] + ([net.cls] if net.cls is not None else [])]
    nodes = [n for n in graph.node if n.op_type == "Conv"], [n for n in graph.node if n.op_type == "Gemm"]
    assert len(nodes[0]) == len(convs) and len(nodes[1]) == len(linears)
    with torch.no_grad():
        for node, layer in zip(nodes[0] + nodes[1], convs + linears):
            transposed = any(a.name == "transB" and a.i == 0 for a in node.attribute)
            layer.weight.copy_(weights[node.input[1]].T if transposed else weights[node.input[1]])
            layer.bias.copy_(weights[node.input[2]])
        for bn in (m for net in members for m in net.features if isinstance(m, nn.BatchNorm1d)):
            bn.weight.fill_(1)
            bn.bias.zero_()
            bn.running_mean.zero_()
            bn.running_var.fill_(1 - bn.eps)
    return (members[0] if n_members == 1 else Ensemble(members).eval()), package
