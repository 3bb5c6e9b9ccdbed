"""The FNet family (sizes, layout, a real optimiser step) and the heads (targets, decoding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fnet.runtime.grid import Grid
from fnet.runtime.heads import bin_centres, bin_edges, decode
from fnet.train.data import ToySimulator, simulate_prepared
from fnet.train.heads import decode_outputs, head_loss, head_out_features, make_targets
from fnet.train.model import ARCHS, ResidualUnit, build_model, count_macs, count_parameters

PAPER_GRID = Grid(3.5522, 1e-4, 4618)
LITE_GRID = Grid(3.5522, 4e-4, 1155)
REG = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}


def zbins(k: int = 256, z_min: float = 0.0, z_max: float = 7.0) -> dict:
    return {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": z_min, "z_max": z_max, "nbins": k}


@pytest.fixture
def one_thread():
    """Small models: one thread avoids OpenMP barrier stalls when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return build_model("paper", REG, PAPER_GRID)


# ------------------------------------------------------------------------------------------------ paper


def test_paper_parameter_count(paper_model):
    n = count_parameters(paper_model)
    assert abs(n - 10.17e6) <= 0.01e6
    assert n == 10_171_944  # the authors' resnet() with a 1-output head, counted by hand in model.py


def test_paper_macs(paper_model):
    macs = count_macs(paper_model)
    assert abs(macs - 29.3e9) <= 0.2e9
    # by hand: convolutions sum over units of out_len * cout * cin * k, plus the FC layers
    L = 4618

    def unit(ci: int, co: int) -> int:
        return ((L + 1) * co * ci * 500 + (L + 2) * co * co * 200 + L * co * co * 15
                + (L * co * ci if ci != co else 0))

    stages = [(1, 32)] + [(32, 32)] * 4 + [(32, 64), (64, 32), (32, 1)]
    assert macs == sum(unit(a, b) for a, b in stages) + 4618 * 796 + 796 * 199 + 199


def test_paper_layout(paper_model):
    units = [m for m in paper_model.modules() if isinstance(m, ResidualUnit)]
    assert len(units) == 8
    chans = [(u.conv1.in_channels, u.conv1.out_channels) for u in units]
    assert chans == [(1, 32)] + [(32, 32)] * 4 + [(32, 64), (64, 32), (32, 1)]
    for u in units:
        assert (u.conv1.kernel_size, u.conv1.padding) == ((500,), (250,))
        assert (u.conv2.kernel_size, u.conv2.padding) == ((200,), (100,))
        assert (u.conv3.kernel_size, u.conv3.padding) == ((15,), (6,))
        # the authors' shortcut: 1x1 conv where channels change, identity elsewhere, no BN on it
        if u.conv1.in_channels != u.conv1.out_channels:
            assert isinstance(u.shortcut, nn.Conv1d) and u.shortcut.kernel_size == (1,)
        else:
            assert isinstance(u.shortcut, nn.Identity)
    assert not any(isinstance(m, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)) for m in paper_model.modules())
    linears = [m for m in paper_model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4618, 796), (796, 199), (199, 1)]


def test_paper_output_shape_and_length_preserved(paper_model):
    meta = paper_model.features[:2]  # the length arithmetic L+1, L+2, L on real tensors, cheaply
    with torch.no_grad():
        y = meta.eval()(torch.zeros(1, 1, 4618))
    assert y.shape == (1, 32, 4618)
    with torch.device("meta"):
        shell = build_model("paper", REG, PAPER_GRID)  # same network, no memory, instant
    out = shell(torch.empty(2, 1, 4618, device="meta"))
    assert out.shape == (2, 1)


def test_he_normal_conv_init(paper_model):
    w = paper_model.features[1].conv2.weight.detach()  # 32 x 32 x 200, fan_out = 32 * 200
    assert float(w.std()) == pytest.approx(np.sqrt(2.0 / (32 * 200)), rel=0.05)
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow
def test_paper_adam_step_reduces_loss_on_cpu():
    """One Adam step of the paper network on CPU, batch 2, repeated batch: the loss goes down."""
    torch.manual_seed(0)
    model = build_model("paper", REG, PAPER_GRID).train()
    x, z = simulate_prepared(ToySimulator(seed=3), 2, PAPER_GRID, {"scheme": "zscore_minmax"}, (0.5, 5.0),
                             np.random.default_rng(1))
    x = torch.from_numpy(x)[:, None, :]
    y = torch.from_numpy(make_targets(z, REG))
    # Adam's first step moves every one of the 10 M weights by ~lr; 1e-6 is a small step here
    # (the gradient norm at He init is ~2e3), larger ones overshoot on a batch of two.
    opt = torch.optim.Adam(model.parameters(), lr=1e-6, weight_decay=1e-5)
    out = model(x)
    assert out.shape == (2, 1)
    loss0 = head_loss(out, y, model.head)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = head_loss(model(x), y, model.head)
    assert loss1.item() < 0.9 * loss0.item()


# ------------------------------------------------------------------------------------------------ reduced


def test_lite4x_sizes_as_documented():
    m = build_model("lite4x", REG, LITE_GRID)
    assert count_parameters(m) == 413_953
    assert count_macs(m) == 116_867_508
    mz = build_model("lite4x", zbins(512), LITE_GRID)
    assert count_parameters(mz) == 413_953 + 65 * 511
    w16 = build_model("lite4x_w16", REG, LITE_GRID)
    assert (count_parameters(w16), count_macs(w16)) == (713_025, 461_689_428)


def test_lite4x_forward_shape_and_kernels(one_thread):
    m = build_model("lite4x", zbins(512), LITE_GRID).eval()
    with torch.no_grad():
        out = m(torch.randn(3, 1, 1155))
    assert out.shape == (3, 512)
    assert m.features[0].conv1.kernel_size == (125,) and m.features[0].conv3.kernel_size == (4,)
    assert m.metadata() == {"arch": "lite4x", "head": m.head, "grid": LITE_GRID.to_dict()}


def test_build_model_checks_grid_and_arch():
    with pytest.raises(ValueError, match="loglam_step"):
        build_model("lite4x", REG, PAPER_GRID)
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet50", REG, PAPER_GRID)
    with pytest.raises(ValueError, match="change the length"):
        ResidualUnit(1, 4, (5, 3, 3), (2, 1, 0))
    assert set(ARCHS) >= {"paper", "lite4x", "tiny"}


# ------------------------------------------------------------------------------------------------ heads


def gaussian_logits(centre_z: np.ndarray, sigma_bins: float, head: dict) -> np.ndarray:
    """Logits of a posterior Gaussian in u = ln(1+z), centred anywhere inside a bin."""
    k = head["nbins"]
    u_min, u_max = np.log1p(head["z_min"]), np.log1p(head["z_max"])
    du = (u_max - u_min) / k
    u_c = u_min + du * (np.arange(k) + 0.5)
    u0 = np.log1p(np.asarray(centre_z))[:, None]
    return -0.5 * ((u_c[None, :] - u0) / (sigma_bins * du)) ** 2


def test_regression_decode_maps_unit_interval_to_z_range():
    head = dict(REG, z_min=0.5, z_max=6.5)
    d = decode(np.array([[0.0], [1.0], [0.5]], np.float32), head)
    np.testing.assert_allclose(d.z, [0.5, 6.5, 3.5], atol=1e-6)
    assert np.isnan(d.z_err).all() and d.pdf is None
    # named outputs work the same
    assert decode({"z_scaled": np.array([[1.0]])}, head).z[0] == pytest.approx(6.5)


def test_bins_are_uniform_in_log1p_z():
    head = zbins(100, 0.0, 7.0)
    c, e = bin_centres(head), bin_edges(head)
    assert c.shape == (100,) and e.shape == (101,)
    assert e[0] == pytest.approx(0.0) and e[-1] == pytest.approx(7.0)
    np.testing.assert_allclose(np.diff(np.log1p(c)), np.log(8.0) / 100, rtol=1e-9)


def test_zbins_decode_recovers_known_z_within_a_fraction_of_a_bin():
    head = zbins(512)
    du = np.log(8.0) / 512
    rng = np.random.default_rng(0)
    z_true = rng.uniform(0.2, 6.5, 200)
    d = decode(gaussian_logits(z_true, 2.0, head), head)
    err_bins = np.abs(np.log1p(d.z) - np.log1p(z_true)) / du
    assert err_bins.max() < 0.05  # parabolic refinement is exact for a log-Gaussian posterior
    # argmax alone would be off by up to half a bin
    assert d.pdf.shape == (200, 512)
    np.testing.assert_allclose(d.pdf.sum(axis=1), 1.0, rtol=1e-5)


def test_zbins_z_err_tracks_posterior_width():
    head = zbins(512)
    du = np.log(8.0) / 512
    z = np.full(3, 2.0)
    widths = []
    for sigma in (2.0, 4.0, 8.0):
        d = decode(gaussian_logits(z, sigma, head), head)
        expected = (1 + 2.0) * np.sinh(sigma * du)  # half-width of the 68% interval, in z
        assert d.z_err[0] == pytest.approx(expected, rel=0.06)
        widths.append(d.z_err[0])
    assert widths[0] < widths[1] < widths[2]
    # a second, equal peak far away makes Z_ERR large (the 68% window must span both)
    bimodal = np.logaddexp(gaussian_logits(np.array([1.0]), 2.0, head), gaussian_logits(np.array([3.0]), 2.0, head))
    d2 = decode(bimodal, head)
    assert d2.z_err[0] > 0.5


def test_zbins_decode_edge_and_nan_rows():
    head = zbins(64)
    logits = np.full((2, 64), -50.0)
    logits[0, 0] = 10.0  # all mass in the first bin: no refinement, z at its centre
    logits[1, 5] = np.nan
    d = decode(logits, head)
    assert d.z[0] == pytest.approx(bin_centres(head)[0])
    assert 0 < d.z_err[0] < (1 + d.z[0]) * np.log(8.0) / 64  # below one bin width
    assert np.isnan(d.z[1]) and np.isnan(d.z_err[1])


def test_label_smoothing_sums_to_one_and_centres_on_z():
    head = zbins(128)
    z = np.array([0.0, 1.234, 3.0, 7.0, 9.0])  # 9.0 is clipped to z_max
    soft = make_targets(z, head, label_sigma=1.5)
    assert soft.shape == (5, 128) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    hard = make_targets(z, head)
    assert hard.dtype == np.int64
    np.testing.assert_array_equal(hard[1:3], soft[1:3].argmax(axis=1))
    assert hard[3] == hard[4] == 127 and hard[0] == 0
    # the soft target's peak decodes back to z
    d = decode(np.log(soft[1:3] + 1e-30), head)
    np.testing.assert_allclose(d.z, z[1:3], rtol=2e-3)


def test_regression_targets_and_loss():
    t = make_targets(np.array([0.0, 3.5, 7.0]), REG)
    np.testing.assert_allclose(t[:, 0], [0.0, 0.5, 1.0])
    loss = head_loss(torch.tensor([[0.0], [0.5], [1.5]]), torch.from_numpy(t), REG)
    assert float(loss) == pytest.approx(0.25 / 3)
    assert head_out_features(REG) == 1 and head_out_features(zbins(40)) == 40


def test_training_decode_is_the_runtime_decode():
    head = zbins(96)
    logits = torch.randn(7, 96) * 3
    a = decode_outputs(logits, head)
    b = decode({"logits": logits.numpy()}, head)
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(a.z_err, b.z_err)


def test_pooled4x_sizes_and_shapes(one_thread):
    model = build_model("pooled4x", zbins(1024), LITE_GRID)
    assert count_parameters(model) == 1_043_664  # documented in fnet/configs/default_model.yaml and docs/models.md
    assert abs(count_macs(model) / 1e6 - 36.2) < 0.1
    out = model.eval()(torch.zeros(3, 1, LITE_GRID.npix))
    assert out.shape == (3, 1024)
    with pytest.raises(ValueError, match="sized for loglam_step"):
        build_model("pooled4x", zbins(64), PAPER_GRID)
