"""Tiny ONNX model packages built with onnx.helper, following the real metadata contract.

The network is a single linear map of the normalised spectrum, so a test can recompute the
expected outputs with numpy from the runtime's own preprocessing and compare them exactly. A head with
``classes`` adds a second linear map to (N, len(classes)) class logits (weights: linear_weights(seed + 1)
times class_scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fnet.runtime.grid import Grid
from fnet.runtime.model_package import build_metadata
from fnet.runtime.onnx_wire import stamp_integrity

PAPER_GRID = Grid(3.5522, 1e-4, 4618)


def linear_weights(npix: int, nout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic weights (npix, nout) and bias (nout,) of the tiny model."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1.0 / np.sqrt(npix), size=(npix, nout)).astype(np.float32),
            rng.normal(0, 0.1, size=nout).astype(np.float32))


def make_tiny_model(path: Path, head: dict, grid: Grid = PAPER_GRID,
                    normalisation: dict | None = None, seed: int = 0, z_range=(0.0, 7.0),
                    quality: dict | None = None, integrity: bool = True, class_scale: float = 1.0,
                    class_graph: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """Write a linear ONNX model package (input 'flux' (N,1,npix)) with the given head.

    class_graph=False leaves the class output out of the graph (a broken package); `metadata` overrides keys.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    normalisation = normalisation or {"scheme": "ivar_unit_norm", "clip": 10.0}
    nout = 1 if head["kind"] == "regression" else int(head["nbins"])
    out_name = head.get("output", "z_scaled" if head["kind"] == "regression" else "logits")
    w, b = linear_weights(grid.npix, nout, seed)
    nodes = [
        helper.make_node("Flatten", ["flux"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], [out_name]),
    ]
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", nout])]
    initializers = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if head.get("classes") and class_graph:
        name, ncls = head.get("class_output", "class_logits"), len(head["classes"])
        wc, bc = linear_weights(grid.npix, ncls, seed + 1)
        nodes.append(helper.make_node("Gemm", ["flat", "WC", "BC"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", ncls]))
        initializers += [numpy_helper.from_array(wc * np.float32(class_scale), "WC"),
                         numpy_helper.from_array(bc * np.float32(class_scale), "BC")]
    graph = helper.make_graph(
        nodes, "tiny_fnet",
        [helper.make_tensor_value_info("flux", TensorProto.FLOAT, ["N", 1, grid.npix])],
        outputs, initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = build_metadata(model_name="tiny-linear", model_version="0.0-test", architecture="linear-test",
                          grid=grid, normalisation=normalisation, head=head, z_range=z_range,
                          quality=quality, training={"note": "test fixture, not trained"})
    meta.update(metadata or {})
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.write_bytes(stamp_integrity(data) if integrity else data)
    return path


def patch_export_with_tiny_network(monkeypatch, head: dict, **meta):
    """Make fnet.export.pipeline.export_checkpoint load a seeded untrained `tiny` torch network (on a 578-pixel grid)
    with this head, whatever checkpoint path it is given; meta adds to (or replaces) the checkpoint metadata.
    Returns (network, metadata). Needs torch (the caller skips without it)."""
    import torch

    from fnet.export import pipeline
    from fnet.train.model import build_model

    grid = Grid(3.5522, 8e-4, 578)
    torch.manual_seed(0)
    net = build_model("tiny", head, grid).eval()
    metadata = {"name": "tiny", "arch": "tiny", "grid": grid.to_dict(), "normalisation": {"scheme": "ivar_unit_norm"},
                "head": dict(head), "z_range": [0.0, 7.0], "training": {}, **meta}
    monkeypatch.setattr(pipeline, "load_model", lambda path: (net, dict(metadata)))
    return net, metadata
