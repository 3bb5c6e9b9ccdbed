"""Training side of the heads: label transforms and losses. Decoding is fnet.runtime.heads.decode.

- regression: target = (z - z_min) / (z_max - z_min), loss = MSE (the paper's objective).
- class head (optional, ``head["classes"]``): cross-entropy on the class index, added to the redshift
  loss with weight ``loss.class_weight``; the redshift loss keeps every class's true z (galaxies' z,
  stars' z ~ v/c), so one network gives both.
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

from fnet.runtime.heads import Decoded, decode, has_classes, validate_head

__all__ = ["validate_head", "head_out_features", "class_count", "named_outputs", "numpy_outputs", "make_targets",
           "head_loss", "class_loss", "decode_outputs", "Decoded"]


def head_out_features(head: dict) -> int:
    """Width of the network's last layer for this head."""
    head = validate_head(head)
    return 1 if head["kind"] == "regression" else head["nbins"]


def class_count(head: dict) -> int:
    """Number of classes of the head's class head (0 without one)."""
    return len(validate_head(head).get("classes") or [])


def named_outputs(outputs: torch.Tensor | tuple, head: dict) -> dict[str, torch.Tensor]:
    """A network's forward result as {graph output name: tensor}: the redshift output, plus the class logits."""
    if isinstance(outputs, (tuple, list)):
        if not has_classes(head) or len(outputs) != 2:
            raise ValueError(f"network returned {len(outputs)} outputs for head {head!r}")
        return {head["output"]: outputs[0], head["class_output"]: outputs[1]}
    if has_classes(head):
        raise ValueError("head has classes but the network returned one output")
    return {head["output"]: outputs}


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


def head_loss(outputs: torch.Tensor | tuple, targets: torch.Tensor, head: dict) -> torch.Tensor:
    """Mean redshift loss over the batch: MSE on scaled z (regression) or cross-entropy over bins (zbins)."""
    if isinstance(outputs, (tuple, list)):
        outputs = named_outputs(outputs, head)[head["output"]]
    outputs = outputs.float()  # losses in fp32 even under autocast
    if head["kind"] == "regression":
        return F.mse_loss(outputs, targets.float().view_as(outputs))
    if targets.dtype == torch.int64:
        return F.cross_entropy(outputs, targets)
    return F.cross_entropy(outputs, targets.float())


def class_loss(outputs: torch.Tensor | tuple, class_index: torch.Tensor, head: dict) -> torch.Tensor:
    """Mean cross-entropy of the class head (0 for a network without one)."""
    if not has_classes(head):
        return torch.zeros(())
    logits = named_outputs(outputs, head)[head["class_output"]].float()
    return F.cross_entropy(logits, class_index.long().to(logits.device))


def numpy_outputs(outputs: torch.Tensor | tuple, head: dict | None, output_name: str) -> dict[str, np.ndarray]:
    """A forward result as {graph output name: float32 array}, as a backend's run returns it.

    A tuple (a class-head network) is named by its head; a single tensor is `output_name` (networks without
    a head dict, e.g. test nets, have only that one).
    """
    if isinstance(outputs, (tuple, list)):
        named = named_outputs(outputs, head)
    else:
        named = {output_name: outputs}
    return {k: v.detach().float().cpu().numpy() for k, v in named.items()}


def decode_outputs(outputs: torch.Tensor | tuple, head: dict) -> Decoded:
    """Decode a batch of network outputs with the runtime's numpy decoder (no drift by construction)."""
    return decode(numpy_outputs(outputs, head, head["output"]), head)
