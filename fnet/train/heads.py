"""Training side of the heads: label transforms and losses. Decoding is fnet.runtime.heads.decode.

- regression: target = (z - z_min) / (z_max - z_min), loss = MSE (the paper's objective).
- zbins: target = the bin holding ln(1 + z) (cross-entropy on a class index), or, with
  ``label_sigma`` > 0 (in bins), a Gaussian over the bin centres centred on the exact ln(1 + z)
  and normalised to sum 1 (cross-entropy with probability targets). The soft target keeps
  the sub-bin position of z, which the runtime's parabolic peak refinement then recovers, and
  stops neighbouring bins from being punished as hard as a catastrophic miss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fnet.runtime.heads import Decoded, decode, validate_head

__all__ = ["validate_head", "head_out_features", "make_targets", "head_loss", "decode_outputs", "Decoded"]


def head_out_features(head: dict) -> int:
    """Width of the network's last layer for this head."""
    head = validate_head(head)
    return 1 if head["kind"] == "regression" else head["nbins"]


def make_targets(z: np.ndarray, head: dict, label_sigma: float = 0.0) -> np.ndarray:
    """Training targets from true z: (n, 1) float32 (regression), (n,) int64 or (n, K) float32 (zbins)."""
    head = validate_head(head)
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    z = np.clip(z, head["z_min"], head["z_max"])
    if head["kind"] == "regression":
        return ((z - head["z_min"]) / (head["z_max"] - head["z_min"])).astype(np.float32)[:, None]
    k = head["nbins"]
    u_min, u_max = np.log1p(head["z_min"]), np.log1p(head["z_max"])
    pos = (np.log1p(z) - u_min) / (u_max - u_min) * k  # continuous position in bins, 0..K
    if label_sigma <= 0:
        return np.clip(np.floor(pos), 0, k - 1).astype(np.int64)
    centres = np.arange(k) + 0.5
    w = np.exp(-0.5 * ((centres[None, :] - pos[:, None]) / label_sigma) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def head_loss(outputs: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
    """Mean loss over the batch: MSE on scaled z (regression) or cross-entropy over bins (zbins)."""
    outputs = outputs.float()  # losses in fp32 even under autocast
    if head["kind"] == "regression":
        return F.mse_loss(outputs, targets.float().view_as(outputs))
    if targets.dtype == torch.int64:
        return F.cross_entropy(outputs, targets)
    return F.cross_entropy(outputs, targets.float())


def decode_outputs(outputs: torch.Tensor, head: dict) -> Decoded:
    """Decode a batch of network outputs with the runtime's numpy decoder (no drift by construction)."""
    return decode({head["output"]: outputs.detach().float().cpu().numpy()}, head)
