"""Several trained networks answering as one: the mean of their redshift and class probabilities.

Why: on the few real development spectra this project has, a change of training seed alone moves the
results as much as any change of recipe (docs/models.md). Averaging the posteriors of networks trained
alike with different seeds removes that luck instead of picking the luckiest seed.

The ensemble is an ordinary ``nn.Module`` with the members' head, so export, parity checks and every
backend treat it like one network: its graph outputs are the same names and shapes as one member's.

- zbins head: ``logits = log(mean_k softmax(logits_k) + EPS)``. A softmax of those logits is the mean
  posterior (to within EPS per bin), which is what the runtime decodes into Z, Z_ERR and P(z).
- class head: the same for the class logits.
- regression head: the mean of the scaled redshifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .checkpoint import load_model

# a probability floor that keeps log() finite for bins no member gives any weight (fp32 softmax underflows to 0);
# 1e-30 per bin is ~1e-27 of probability over 1024 bins, nothing any decoded figure can see
EPS = 1e-30
# what the members must share to be averaged: the same input and the same meaning of every output
SHARED_KEYS = ("arch", "head", "grid", "normalisation", "z_range")
# a checkpoint's training provenance that belongs to one run, not to the ensemble (kept per member)
PER_MEMBER = ("seed", "global_step", "best", "validation", "epochs", "params", "macs")


def _mean_probability_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """log of the members' mean softmax (computed in float32 whatever the members' precision)."""
    total = sum(torch.softmax(l.float(), dim=-1) for l in logits)
    return torch.log(total * (1.0 / len(logits)) + EPS)


class Ensemble(nn.Module):
    """K networks with one head, one grid and one normalisation; forward returns what one member would."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two networks, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.head = members[0].head
        self.grid = members[0].grid

    def forward(self, flux: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, npix) -> the averaged head output(s), named and shaped as one member's."""
        outputs = [member(flux) for member in self.members]
        classes = isinstance(outputs[0], tuple)
        z_outputs = [o[0] for o in outputs] if classes else outputs
        if self.head["kind"] == "zbins":
            z = _mean_probability_logits(z_outputs)
        else:
            z = sum(o.float() for o in z_outputs) * (1.0 / len(z_outputs))
        if not classes:
            return z
        return z, _mean_probability_logits([o[1] for o in outputs])


def load_ensemble(checkpoints: Sequence[str | Path], map_location: str | torch.device = "cpu") -> tuple[Ensemble, dict]:
    """The ensemble of these training checkpoints and its metadata (the first member's, plus each member's provenance).

    Members must share architecture, head, grid, normalisation, z range and training data recipe (the
    calibrations an export fits simulate the recipe); they differ in seed (or anything else of training).
    """
    if len(checkpoints) < 2:
        raise ValueError("an ensemble needs at least two checkpoints")
    members, metas = zip(*(load_model(path, map_location) for path in checkpoints))
    first, first_path = metas[0], checkpoints[0]
    for path, meta in zip(checkpoints[1:], metas[1:]):
        for key in SHARED_KEYS:
            if meta.get(key) != first.get(key):
                raise ValueError(f"{path}: its {key} differs from {first_path}'s; an ensemble's members must share "
                                 f"{', '.join(SHARED_KEYS)}")
        data, first_data = (meta.get("config") or {}).get("data"), (first.get("config") or {}).get("data")
        if data != first_data:
            raise ValueError(f"{path}: trained on other data than {first_path} (config 'data' differs); the Z_ERR "
                             "and class-range fits of an export simulate one recipe")
    trainings = [dict(m.get("training") or {}) for m in metas]
    # what the members share stays at the top (data, recipe); what is each one's own goes into its entry, so that
    # nothing in the package reads as if the ensemble had one seed or one validation score
    training = {k: v for k, v in trainings[0].items() if k not in PER_MEMBER}
    if len({t.get("epochs") for t in trainings}) == 1:
        training["epochs"] = trainings[0].get("epochs")
    for key in ("params", "macs"):  # the ensemble's cost is the sum of its members'
        if all(isinstance(t.get(key), (int, float)) for t in trainings):
            training[key] = sum(t[key] for t in trainings)
    training["ensemble"] = [
        {"checkpoint": str(path), "seed": t.get("seed"), "epoch": m.get("epoch"), "best": m.get("best"),
         "validation": t.get("validation")} for path, m, t in zip(checkpoints, metas, trainings)]
    meta = {**first, "training": training, "epoch": None, "best": None,
            "arch": f"{first['arch']} x{len(members)} (ensemble)"}
    return Ensemble(list(members)).to(map_location).eval(), meta
