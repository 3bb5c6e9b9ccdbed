"""The torch side of fnet-bench: a network with random weights exported to a package, and torch eager backends.

Imported only when a run needs torch (--arch, or a torch backend), so fnet-bench on a package
(--model) works where torch is not installed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..export.onnx_export import export_graph, set_metadata
from ..runtime.backends import Backend
from ..runtime.errors import BackendUnavailable
from ..runtime.grid import Grid
from ..train.evaluate_torch import TorchBackend, reference_outputs
from ..train.model import ARCHS, POOLED, build_model
from ..train.package import PackageInfo

# A random-weights network is judged on speed and parity only, so the head is the paper's (one output,
# smooth in the weights: a float rounding moves z a little, never to another bin as an argmax could).
HEAD = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
NORMALISATION = {"scheme": "zscore_minmax"}
PAPER_GRID = Grid(3.5522, 1e-4, 4618)
GRID_4X = Grid(3.5522, 4e-4, 1155)  # the embedded model's grid


def arch_grid(arch: str) -> Grid:
    """The grid an arch was sized for: 1e-4 dex the paper grid, 4e-4 the 4x grid; an any-step arch the paper grid."""
    spec = POOLED.get(arch) or ARCHS.get(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(list(ARCHS) + list(POOLED))}")
    return GRID_4X if spec.loglam_step is not None and abs(spec.loglam_step / 4e-4 - 1) < 1e-6 else PAPER_GRID


def random_weights_package(arch: str, workdir: Path, seed: int = 0) -> tuple[torch.nn.Module, Path]:
    """Build `arch` with seeded random weights (eval mode) and export it as an FP32 package, as bench_runtime does."""
    grid = arch_grid(arch)
    torch.manual_seed(seed)
    model = build_model(arch, HEAD, grid).eval()
    path = Path(workdir) / f"{arch}-random-weights.onnx"
    info = PackageInfo(f"{arch}-random-weights", "bench", arch, grid, dict(NORMALISATION), dict(HEAD), (0.0, 7.0),
                       training={"note": f"random weights (torch seed {seed}), for fnet-bench only"})
    export_graph(model, path, grid.npix, HEAD["output"], "fp32")
    set_metadata(path, info.metadata("fp32"))
    return model, path


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU."""
    return bool(torch.cuda.is_available())


class TorchBf16Backend(Backend):
    """Torch eager in bfloat16 weights and arithmetic on CUDA, float32 in and out like every backend."""

    def __init__(self, model: torch.nn.Module, output: str, device: str = "cuda"):
        self.model = copy.deepcopy(model).eval().to(device=device, dtype=torch.bfloat16)
        self.output, self.device = output, device
        self.name = f"torch[{device},bf16]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Forward pass without gradients; the copy back to the host is part of the call (it synchronises)."""
        with torch.inference_mode():
            flux = torch.from_numpy(np.ascontiguousarray(x[:, None, :], dtype=np.float32))
            out = self.model(flux.to(self.device).to(torch.bfloat16))
        return {self.output: out.float().cpu().numpy()}


class Float64Reference(Backend):
    """The torch network in float64, in memory-sized batches: the parity reference (exact up to float64 rounding)."""

    def __init__(self, model: torch.nn.Module, output: str, device: str = "cpu"):
        self.model, self.output, self.device = model, output, device
        self.name = f"torch[{device},fp64]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of the float64 network (float32 arrays, as every backend returns)."""
        return reference_outputs(self.model, self.output, x, device=self.device)


def torch_backend(model: torch.nn.Module, output: str, device: str, bf16: bool = False,
                  threads: int | None = None) -> Backend:
    """Torch eager on cpu or cuda: fp32 (TF32 off, so "fp32" means fp32 and it can be the parity reference) or bf16."""
    if threads:
        torch.set_num_threads(int(threads))
    if device == "cuda":  # cuDNN autotuning: each batch shape's fastest kernels, found during the untimed warm-up
        torch.backends.cudnn.benchmark = True
    if bf16:
        if device != "cuda":
            raise BackendUnavailable("torch-bf16 runs on CUDA only (torch sees no GPU, or --device cpu)")
        return TorchBf16Backend(model, output, device)
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    backend = TorchBackend(copy.deepcopy(model), output, device)
    backend.name = f"torch[{device},fp32]"
    return backend
