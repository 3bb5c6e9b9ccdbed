"""Training checkpoints: atomic save, safe load, and rebuilding the model from one.

A checkpoint is a ``torch.save`` dict (loadable with ``weights_only=True``: only tensors and
plain Python values, RNG states included)::

    format "fnet-checkpoint", version 1
    epoch          completed epochs (resume starts at this epoch index)
    global_step    optimiser steps so far
    model          state_dict of fnet.train.model.FNet
    optimizer, scheduler, scaler   state_dicts (scaler None on CPU)
    config         the full training config (Config.to_dict())
    metadata       what the model package needs: arch, head, grid, normalisation, z_range, name,
                   fnet_version, training (provenance: epochs, seed, best metric, validation summary)
    rng            python / numpy / torch (/ cuda) generator states
    history        list of per-epoch dicts (also written to history.json)
    best           {"metric", "value", "epoch"}

``load_model(path)`` rebuilds the network from ``metadata`` alone (arch + head + grid), so an
exporter needs nothing but the checkpoint file.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.atomic import atomic_path

import fnet

from .model import FNet, build_model
from fnet.runtime.grid import Grid

FORMAT = "fnet-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint atomically (temp file + rename), so a crash never leaves a torn file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by save_checkpoint (weights_only: no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an FNet training checkpoint")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')} (this code reads {VERSION})")
    return state


def model_metadata(config: dict, training: dict | None = None) -> dict:
    """The model-package facts of a run: arch, head, grid, normalisation, z_range, name, provenance."""
    return {
        "name": config.get("name", "fnet"),
        "arch": config["arch"],
        "head": dict(config["head"]),
        "grid": dict(config["grid"]),
        "normalisation": dict(config["normalisation"]),
        "z_range": [float(config["head"]["z_min"]), float(config["head"]["z_max"])],
        "fnet_version": fnet.__version__,
        "training": dict(training or {}),
    }


def load_model(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> tuple[FNet, dict]:
    """The trained network (eval mode, float32, on map_location) and its metadata dict."""
    state = load_checkpoint(checkpoint_path, map_location)
    meta = dict(state["metadata"])
    model = build_model(meta["arch"], meta["head"], Grid.from_dict(meta["grid"]))
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    meta["epoch"] = state.get("epoch")
    meta["best"] = state.get("best")
    meta["config"] = state.get("config")
    return model, meta


def rng_state() -> dict:
    """Python, numpy (legacy global) and torch RNG states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    if "python" in state:
        random.setstate(_to_tuples(state["python"]))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(obj: Any) -> Any:
    return [_to_lists(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


def _to_tuples(obj: Any) -> Any:
    return tuple(_to_tuples(v) for v in obj) if isinstance(obj, (list, tuple)) else obj
