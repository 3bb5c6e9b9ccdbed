"""Backends (fnet.runtime.backends): one interface, fixed batch shape, device choice refused cleanly."""

from __future__ import annotations

import numpy as np
import pytest

from fnet.runtime.backends import OnnxRuntimeBackend, open_backend
from fnet.runtime.errors import BackendUnavailable
from fnet.runtime.model_package import load_model_package
from tiny_models import linear_weights, make_tiny_model

ZBINS = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 32}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return load_model_package(make_tiny_model(tmp_path_factory.mktemp("m") / "t.onnx", ZBINS))


def test_outputs_are_the_linear_map_for_any_batch_length(package):
    backend = open_backend(package, "cpu")
    w, b = linear_weights(package.grid.npix, 32)
    x = np.random.default_rng(0).normal(size=(13, package.grid.npix)).astype(np.float32)
    for n in (1, 5, 8, 13):  # below, at and above the fixed CPU batch of 8: padding never leaks out
        out = backend.run(x[:n])["logits"]
        assert out.shape == (n, 32) and out.dtype == np.float32
        assert np.allclose(out, x[:n] @ w + b, atol=1e-4)


def test_a_row_does_not_depend_on_its_batch(package):
    backend = open_backend(package, "cpu")
    x = np.random.default_rng(1).normal(size=(20, package.grid.npix)).astype(np.float32)
    whole = backend.run(x)["logits"]
    assert np.array_equal(whole[7], backend.run(x[7:8])["logits"][0])
    assert np.array_equal(whole[3:11], backend.run(x[3:11])["logits"])


def test_unavailable_devices_are_refused_with_the_reason(package):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the refusal path cannot be exercised here")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        open_backend(package, "cuda")
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):
        open_backend(package, "tensorrt")
    assert isinstance(open_backend(package, "auto"), OnnxRuntimeBackend)
