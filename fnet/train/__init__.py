"""PyTorch training for FNet: model family, heads, config, data streams, training loop, checkpoints.

    from fnet.train import load_config, train, load_model
    result = train(load_config("lite4x_zbins", ["train.epochs=2"]))
    model, metadata = load_model(result.best_checkpoint)

The runtime (fnet.runtime) never imports this package; a trained model reaches it only through the
exported model package (ONNX + metadata: arch, head, grid, normalisation). Names are imported lazily
so that importing one part does not pull in the others. Building datasets (no torch) is fnet.dataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "config", "load_config": "config",
    "build_model": "model", "count_macs": "model", "count_parameters": "model", "ARCHS": "model",
    "train": "loop", "TrainResult": "loop",
    "load_model": "checkpoint", "load_checkpoint": "checkpoint",
    "Ensemble": "ensemble", "load_ensemble": "ensemble",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
