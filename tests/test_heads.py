"""Head decoding from metadata alone (fnet.runtime.heads): P(z), Z and Z_ERR on synthetic posteriors."""

from __future__ import annotations

import numpy as np
import pytest

from fnet.runtime.heads import ONE_SIGMA_MASS, bin_centres, bin_edges, decode, validate_head

ZBINS = {"kind": "zbins", "z_min": 0.0, "z_max": 7.0, "nbins": 1024}


def gaussian_logits(z: np.ndarray, sigma_u: float, head: dict = ZBINS) -> np.ndarray:
    """Log of a Gaussian posterior in u = ln(1 + z) on the head's bins."""
    u = np.log1p(bin_centres(head))
    return -0.5 * ((u[None, :] - np.log1p(z)[:, None]) / sigma_u) ** 2


def test_zbins_recovers_z_off_the_bin_centres_and_a_gaussian_width():
    z = np.array([0.1234, 1.5, 2.98765, 5.4321])
    du = np.log1p(7.0) / 1024
    decoded = decode({"logits": gaussian_logits(z, 3 * du)}, ZBINS)
    assert np.allclose(decoded.z, z, rtol=0, atol=1e-4 * (1 + z))  # parabola refinement: far below a bin
    assert np.allclose(decoded.z_err / (1 + z), 3 * du, rtol=0.05)  # 68 % half-width of a Gaussian in u
    assert np.allclose(decoded.pdf.sum(axis=1), 1.0, atol=1e-5)


def test_a_second_peak_widens_z_err():
    one = gaussian_logits(np.array([2.0]), 0.002)
    two = np.logaddexp(one, np.log(0.8) + gaussian_logits(np.array([3.5]), 0.002))
    assert decode(two, ZBINS).z_err[0] > 10 * decode(one, ZBINS).z_err[0]


def test_non_finite_logits_give_nan_not_a_bin_edge():
    logits = gaussian_logits(np.array([1.0, 2.0]), 0.01)
    logits[1, 17] = np.nan
    decoded = decode(logits, ZBINS)
    assert np.isfinite(decoded.z[0]) and np.isnan(decoded.z[1]) and np.isnan(decoded.z_err[1])


def test_regression_scales_and_does_not_clip():
    head = {"kind": "regression", "z_min": 0.0, "z_max": 7.0}
    decoded = decode(np.array([[0.5], [1.2]]), head)
    assert decoded.z.tolist() == [3.5, 8.4] and np.all(np.isnan(decoded.z_err)) and decoded.pdf is None


def test_bins_are_uniform_in_velocity():
    edges = bin_edges(ZBINS)
    width = np.diff(np.log1p(edges))
    assert np.allclose(width, width[0]) and edges[0] == 0.0 and edges[-1] == pytest.approx(7.0)
    assert 0.68 < ONE_SIGMA_MASS < 0.69


@pytest.mark.parametrize("head, words", [
    ({"kind": "zbins", "nbins": 2}, "nbins"),
    ({"kind": "zbins", "nbins": 10.5}, "nbins"),
    ({"kind": "zbins", "nbins": 64, "z_max": float("inf")}, "finite"),
    ({"kind": "zbins", "nbins": 64, "spacing": "linear"}, "spacing"),
    ({"kind": "softmax"}, "kind"),
    ({"kind": "regression", "z_min": 3.0, "z_max": 1.0}, "z_min < z_max"),
])
def test_malformed_heads_are_refused(head, words):
    with pytest.raises(ValueError, match=words):
        validate_head(head)


def test_output_width_must_match_nbins():
    with pytest.raises(ValueError, match="expects"):
        decode(np.zeros((2, 100)), ZBINS)
