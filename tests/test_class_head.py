"""The class head (issue #9) on the torch side: every architecture gets it, it trains jointly with the redshift
head, it exports as the graph's second output, and every parity comparator judges class changes too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_shared
from fnet.export.fp16_emulation import emulated_fp16_outputs, fp32_layers
from fnet.export.onnx_export import export_onnx
from fnet.export.parity import TOLERANCES, compare_outputs
from fnet.runtime.backends import open_backend, run_in_batches
from fnet.runtime.grid import Grid
from fnet.runtime.heads import decode, validate_head
from fnet.runtime.model_package import load_model_package
from fnet.train.data import SimulatedStream, class_indices
from fnet.train.evaluate_torch import TorchBackend, reference_outputs
from fnet.train.heads import class_loss, head_loss, make_targets, named_outputs
from fnet.train.model import build_model, count_parameters
from fnet.train.package import PackageInfo

CLASSES = ["QSO", "STAR", "GALAXY"]
ZBINS = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}
WITH_CLASSES = {**ZBINS, "classes": CLASSES, "class_output": "class_logits"}
GRID4 = Grid(3.5522, 4e-4, 1155)
TINY_GRID = Grid(3.5522, 8e-4, 578)
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}


@pytest.mark.parametrize("arch, grid, last_hidden", [("tiny", TINY_GRID, 16), ("lite4x", GRID4, 64),
                                                     ("pooled4x", GRID4, 256)])
def test_every_arch_gets_a_class_head_reading_the_last_hidden_layer(arch, grid, last_hidden):
    torch.manual_seed(0)
    plain, classy = build_model(arch, ZBINS, grid), build_model(arch, WITH_CLASSES, grid)
    # exactly one extra Linear(last hidden -> 3): the body is shared, so the two heads are trained jointly
    assert count_parameters(classy) - count_parameters(plain) == (last_hidden + 1) * 3
    assert not any(k.startswith("cls.") for k in plain.state_dict())  # old checkpoints load unchanged
    out = classy.eval()(torch.zeros(5, 1, grid.npix))
    named = named_outputs(out, classy.head)
    assert named["logits"].shape == (5, 64) and named["class_logits"].shape == (5, 3)
    assert isinstance(plain.eval()(torch.zeros(2, 1, grid.npix)), torch.Tensor)


def test_the_paper_network_gets_one_too():
    with torch.device("meta"):
        paper = build_model("paper", {**WITH_CLASSES, "nbins": 4}, Grid(3.5522, 1e-4, 4618))
    assert paper.cls.in_features == 199 and paper.cls.out_features == 3


@pytest.mark.parametrize("bad, why", [
    ({"classes": ["QSO"]}, "at least 2"), ({"classes": ["QSO", "QSO"]}, "distinct"),
    ({"classes": ["QSO", " STAR"]}, "distinct"), ({"classes": CLASSES, "class_output": "logits"}, "second graph output"),
])
def test_malformed_class_heads_are_refused(bad, why):
    with pytest.raises(ValueError, match=why):
        validate_head({**ZBINS, **bad})


def test_class_labels_map_to_the_head_order_and_unknown_labels_are_refused():
    labels = np.array(["STAR", "QSO", "GALAXY", "QSO"], dtype=object)
    assert class_indices(labels, WITH_CLASSES, 4).tolist() == [1, 0, 2, 0]
    assert class_indices(None, WITH_CLASSES, 3).tolist() == [0, 0, 0]  # quasar-only sources
    assert class_indices(labels, ZBINS, 4).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="WD"):
        class_indices(np.array(["WD"], dtype=object), WITH_CLASSES, 1)


def test_joint_loss_trains_both_heads():
    """A few Adam steps on separable toy inputs: class loss falls and gradients reach the shared body."""
    torch.manual_seed(0)
    net = build_model("tiny", WITH_CLASSES, TINY_GRID)
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 3, 96)
    x = rng.normal(size=(96, 1, TINY_GRID.npix)).astype(np.float32) * 0.1
    x[:, 0, :100] += cls[:, None].astype(np.float32)  # the class is written in the first pixels
    z = np.where(cls == 1, 0.0, 1.0 + cls)
    inputs, target = torch.from_numpy(x), torch.from_numpy(make_targets(z, WITH_CLASSES, 1.0))
    labels = torch.from_numpy(cls)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = net(inputs)
        c_loss = class_loss(out, labels, WITH_CLASSES)
        loss = head_loss(out, target, WITH_CLASSES) + c_loss
        opt.zero_grad()
        loss.backward()
        assert net.features[0].conv1.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(c_loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_simulated_stream_labels_follow_the_simulator(monkeypatch):
    require_shared("templates", "star")
    require_shared("templates", "galaxy")
    stream = SimulatedStream("fnet.simulate:SpectrumMixSimulator", {}, GRID4, NORM, WITH_CLASSES, batch_size=64,
                             steps=1, seed=3, z_sampling="simulator")
    x, target, z, labels = stream.batch(0)
    assert x.shape == (64, 1, GRID4.npix) and labels.shape == (64,)
    names = np.array(CLASSES)[labels.numpy()]
    stars = names == "STAR"
    assert stars.any() and (names == "QSO").any()
    assert np.all(np.abs(z.numpy()[stars]) < 0.003)  # stars at z ~ v/c


@pytest.fixture(scope="module")
def classy_package(tmp_path_factory):
    torch.manual_seed(1)
    net = build_model("tiny", WITH_CLASSES, TINY_GRID).eval()
    x = np.random.default_rng(2).normal(size=(24, TINY_GRID.npix)).astype(np.float32)
    info = PackageInfo("tiny-classes", "0.0.1", "tiny", TINY_GRID, NORM, dict(WITH_CLASSES), (0.0, 7.0),
                       training={"note": "test"})
    path = tmp_path_factory.mktemp("pkg") / "tiny-classes.onnx"
    report = export_onnx(net, info, path, x, check_fft=True)
    return net, path, x, report


def test_export_writes_the_class_output_and_parity_judges_it(classy_package):
    net, path, x, report = classy_package
    assert report.passed and report.frac_class_changed == 0.0 and report.max_abs_dp_class < 1e-5
    assert report.companions["fft"].frac_class_changed == 0.0
    package = load_model_package(path)
    assert package.head["classes"] == CLASSES
    out = run_in_batches(open_backend(package, "cpu").run, x)
    assert set(out) == {"logits", "class_logits"}
    torch_out = TorchBackend(net, "logits").run(x)
    np.testing.assert_allclose(out["class_logits"], torch_out["class_logits"], atol=1e-4)
    p = decode(out, package.head).p_class
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def test_fp16_keeps_the_class_head_fp32(classy_package):
    net, _, x, _ = classy_package
    assert fp32_layers(net) == ["out", "cls"]
    emulated = emulated_fp16_outputs(net, "logits", x)
    exact = reference_outputs(net, "logits", x)
    assert set(emulated) == {"logits", "class_logits"}
    assert np.max(np.abs(emulated["class_logits"] - exact["class_logits"])) < 0.05


def test_a_changed_class_fails_the_gate_even_when_redshifts_agree(classy_package):
    net, _, x, _ = classy_package
    ref = reference_outputs(net, "logits", x)
    flipped = {k: v.copy() for k, v in ref.items()}
    flipped["class_logits"][0] = flipped["class_logits"][0][::-1] * 50  # one spectrum's class changes
    report = compare_outputs(ref, flipped, WITH_CLASSES, reference_name="a", candidate_name="b",
                             tolerance=TOLERANCES["fp32"])
    assert report.max_abs_dv_kms == 0.0 and report.frac_class_changed == pytest.approx(1 / len(x))
    assert not report.passed and "class changed" in report.summary()
    nan = {k: v.copy() for k, v in ref.items()}
    nan["class_logits"][3, 1] = np.nan
    assert compare_outputs(ref, nan, WITH_CLASSES, reference_name="a", candidate_name="b",
                           tolerance=TOLERANCES["fp16"]).n_nonfinite == 1
