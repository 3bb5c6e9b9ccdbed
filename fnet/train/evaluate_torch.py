"""Evaluate a torch checkpoint through the runtime's own prediction path (same preprocessing and decoding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime.backends import Backend
from ..runtime.model_package import ModelPackage
from .checkpoint import load_model
from .package import package_info


class TorchBackend(Backend):
    """The runtime Backend interface over a torch model, so checkpoints and ONNX files are judged alike."""

    def __init__(self, model: torch.nn.Module, output: str, device: str = "cpu"):
        self.model = model.eval().float().to(device)
        self.output = output
        self.device = device
        self.name = f"torch[{device}]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Forward pass in float32 without gradients."""
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x[:, None, :])).to(self.device))
        return {self.output: out.float().cpu().numpy()}


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
