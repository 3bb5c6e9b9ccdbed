"""Ensembles (fnet.train.ensemble): several checkpoints exported as one package whose posteriors are the mean of
theirs, parity-checked and run by every CPU backend like any package."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from fnet.runtime.grid import Grid  # noqa: E402
from fnet.runtime.heads import decode  # noqa: E402
from fnet.train.checkpoint import model_metadata, save_checkpoint  # noqa: E402
from fnet.train.model import build_model  # noqa: E402

GRID = Grid(3.5522, 8e-4, 578)
HEAD = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64,
        "classes": ["QSO", "STAR", "GALAXY"], "class_output": "class_logits"}
DATA = {"source": "simulate", "simulator_class": "fnet.simulate:SpectrumMixSimulator",
        "simulator": {"mix": {"QSO": 0.5, "STAR": 0.3, "GALAXY": 0.2}}, "z_range": [0.0, 7.0]}


def _checkpoint(path, seed: int, head: dict = HEAD, data: dict = DATA, grid: Grid = GRID):
    """A `tiny` network with seeded random weights (and moved BatchNorm statistics) saved as a training checkpoint."""
    torch.manual_seed(seed)
    net = build_model("tiny", head, grid)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    config = {"name": "tiny-classes", "arch": "tiny", "head": dict(head), "grid": grid.to_dict(),
              "normalisation": {"scheme": "ivar_unit_norm"}, "data": data}
    save_checkpoint(path, {"epoch": 3, "model": net.eval().state_dict(), "config": config, "best": {"epoch": 3},
                           "metadata": model_metadata(config, {"seed": seed})})
    return path, net.eval()


def _members(tmp_path, n: int = 3):
    return [_checkpoint(tmp_path / f"m{i}.pt", seed=100 + i) for i in range(n)]


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_the_ensemble_posteriors_are_the_mean_of_its_members(tmp_path):
    from fnet.train.ensemble import load_ensemble

    members = _members(tmp_path)
    ensemble, meta = load_ensemble([p for p, _ in members])
    x = torch.randn(5, 1, GRID.npix)
    with torch.no_grad():
        logits, class_logits = (t.numpy() for t in ensemble(x))
        outs = [net(x) for _, net in members]
    p_mean = np.mean([_softmax(o[0].numpy()) for o in outs], axis=0)
    c_mean = np.mean([_softmax(o[1].numpy()) for o in outs], axis=0)
    np.testing.assert_allclose(_softmax(logits), p_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_softmax(class_logits), c_mean, rtol=1e-5, atol=1e-7)
    # the runtime decodes it like one network: its P(z) is the members' mean
    decoded = decode({"logits": logits, "class_logits": class_logits}, HEAD)
    assert decoded.z.shape == (5,) and np.all(np.isfinite(decoded.z_err))
    assert [m["seed"] for m in meta["training"]["ensemble"]] == [100, 101, 102]
    assert "seed" not in meta["training"] and meta["epoch"] is None  # no member's own provenance passes for the whole
    assert meta["arch"] == "tiny x3 (ensemble)"


def test_a_regression_ensemble_averages_the_redshifts(tmp_path):
    from fnet.train.ensemble import load_ensemble

    head = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
    paths, nets = zip(*(_checkpoint(tmp_path / f"r{i}.pt", seed=i, head=head) for i in range(2)))
    ensemble, _ = load_ensemble(paths)
    x = torch.randn(4, 1, GRID.npix)
    with torch.no_grad():
        np.testing.assert_allclose(ensemble(x).numpy(), (nets[0](x) + nets[1](x)).numpy() / 2, rtol=1e-5, atol=1e-7)


def test_members_that_do_not_share_input_head_or_recipe_are_refused_by_name(tmp_path):
    from fnet.train.ensemble import load_ensemble

    first, _ = _checkpoint(tmp_path / "a.pt", seed=1)
    other_grid, _ = _checkpoint(tmp_path / "grid.pt", seed=2, grid=Grid(3.5522, 8e-4, 600))
    other_head, _ = _checkpoint(tmp_path / "head.pt", seed=3, head={**HEAD, "nbins": 32})
    other_data, _ = _checkpoint(tmp_path / "data.pt", seed=4, data={**DATA, "simulator": {}})
    for path, what in ((other_grid, "grid"), (other_head, "head"), (other_data, "other data")):
        with pytest.raises(ValueError, match=f"{path.name}.*{what}"):
            load_ensemble([first, path])
    with pytest.raises(ValueError, match="at least two"):
        load_ensemble([first])


def test_fnet_export_writes_one_ensemble_package_that_every_cpu_backend_runs_alike(tmp_path):
    from fnet.export.command import export_command
    from fnet.runtime.backends import open_backend
    from fnet.runtime.fft_backend import FftBackend
    from fnet.runtime.model_package import load_model_package
    from fnet.train.ensemble import load_ensemble

    members = _members(tmp_path)
    paths = [str(p) for p, _ in members]
    out = tmp_path / "pkg"
    result = CliRunner().invoke(export_command, [*paths, "-o", str(out), "--n-simulated", "32", "--name", "tiny-ens"])
    assert result.exit_code == 0, result.output
    assert "onnx-fp32" in result.output and "onnx-fp16" in result.output and "fft-fp32" in result.output
    package = load_model_package(out / "tiny-ens-fp32.onnx")
    assert package.architecture == "tiny x3 (ensemble)"
    assert [m["checkpoint"] for m in package.training["ensemble"]] == paths
    fp16 = load_model_package(out / "tiny-ens-fp16.onnx")
    assert fp16.metadata["fnet.fp32_layers"].count("members.") == 6  # every member's redshift and class head
    x = np.random.default_rng(0).normal(size=(6, GRID.npix)).astype(np.float32)
    ensemble, _ = load_ensemble(paths)
    with torch.no_grad():
        ref_logits, ref_class = (t.numpy() for t in ensemble(torch.from_numpy(x[:, None, :])))
    for backend in (open_backend(package, "cpu"), FftBackend(package)):
        got = backend.run(x)
        np.testing.assert_allclose(_softmax(got["logits"]), _softmax(ref_logits), atol=2e-5)
        np.testing.assert_allclose(_softmax(got["class_logits"]), _softmax(ref_class), atol=2e-5)
