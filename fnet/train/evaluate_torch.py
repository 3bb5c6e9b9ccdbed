"""Evaluate a torch checkpoint through the runtime's own prediction path (same preprocessing and decoding)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..runtime.backends import Backend
from ..runtime.model_package import ModelPackage
from .checkpoint import load_model
from .heads import numpy_outputs
from .package import package_info


class TorchBackend(Backend):
    """The runtime Backend interface over a torch model, so checkpoints and ONNX files are judged alike."""

    def __init__(self, model: torch.nn.Module, output: str, device: str = "cpu", float64: bool = False,
                 head: dict | None = None):
        # float64: the exact function the artefacts approximate, for parity references (on a copy: the caller's
        # model stays float32)
        self.model = (copy.deepcopy(model).double() if float64 else model.float()).eval().to(device)
        self.dtype = torch.float64 if float64 else torch.float32
        self.output = output
        # the graph output names of a class-head network come from its head (model.head when not given)
        self.head = head if head is not None else getattr(model, "head", None)
        self.device = device
        self.name = f"torch[{device}{',fp64' if float64 else ''}]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Forward pass without gradients (in float32, or float64 for a parity reference); float32 outputs."""
        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(x[:, None, :])).to(self.device, self.dtype)
            out = self.model(inputs)
        return numpy_outputs(out, self.head, self.output)


def reference_outputs(model: torch.nn.Module, output: str, x: np.ndarray, memory: float = 2 * 2 ** 30,
                      device: str = "cpu") -> dict:
    """The parity reference: the network in float64 (its own rounding is not what a parity check should measure).

    Batches are sized so that torch's float64 CPU convolution, which unfolds each k-tap input (c_in·k values
    per output pixel), stays within `memory` bytes: 1-2 spectra at a time for the paper network.
    """
    unfold = max([m.in_channels * m.kernel_size[0] for m in model.modules() if isinstance(m, torch.nn.Conv1d)],
                 default=1) * x.shape[1] * 8
    from ..runtime.backends import run_in_batches

    backend = TorchBackend(model, output, device=device, float64=True)
    return run_in_batches(backend.run, x, max(1, min(64, int(memory // unfold))))


def checkpoint_package(checkpoint: str | Path) -> tuple[torch.nn.Module, ModelPackage]:
    """The network and a ModelPackage built from the checkpoint's metadata, as an export would write it."""
    model, meta = load_model(checkpoint)
    info = package_info(meta, model_version=f"checkpoint-epoch-{meta.get('epoch')}")
    return model, ModelPackage.from_metadata(Path(checkpoint), info.metadata("fp32"))


def torch_predictor(checkpoint: str | Path, device: str = "cpu", batch_size: int = 64):
    """(predict, info) for fnet.evaluate from a training checkpoint."""
    from ..evaluate import make_predict

    model, package = checkpoint_package(checkpoint)
    backend = TorchBackend(model, package.head["output"], device)
    return make_predict(package, backend, batch_size), {"checkpoint": str(checkpoint), "name": package.name,
                                                        "version": package.version, "backend": backend.name}
