"""Z_ERR calibration: the factor that makes 68.3 % of simulated quasars fall within 1 Z_ERR.

Why: the zbins decoder's Z_ERR is the 68 % half-width of P(z). A network trained with Gaussian label
smoothing learns posteriors at least as wide as the smoothing, so that width overstates its real error
(measured for the first default model: 88 % of the DR16 quasars within 1 Z_ERR instead of 68 %). Z_ERR
feeds redrock priors and users' cuts, so fnet-export can store one factor ``head["z_err_scale"]``.

Honesty: the factor is fitted on freshly simulated spectra from the training run's own simulator, with a
seed used nowhere else (not the training stream, not the validation set, never real spectra), and only
on objects simulated as quasars (the class that Z_ERR's promise is made for). It is one number: the
68.27th percentile of |z_pred - z_true| / Z_ERR. Real spectra are then the held-out check.
"""

from __future__ import annotations

import numpy as np
import torch

from fnet.runtime.grid import Grid
from fnet.runtime.heads import ONE_SIGMA_MASS, decode

from .data import QUASAR, make_simulator, simulate_labelled
from .evaluate_torch import TorchBackend

CALIBRATION_SEED = 0xCA11B  # distinct from every training and validation seed in fnet/configs


def _simulated_batches(sim, n: int, batch_size: int, seed: int, grid: Grid, normalisation: dict,
                       z_range: tuple[float, float], z_sampling: str = "simulator"):
    """(x, z, spectype) for n simulated spectra in batches; batch i draws from SeedSequence([seed, i])."""
    for i, start in enumerate(range(0, n, batch_size)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        yield simulate_labelled(sim, min(batch_size, n - start), grid, normalisation, z_range, rng, z_sampling)


def fit_z_err_scale(model: torch.nn.Module, head: dict, grid: Grid, normalisation: dict, simulator_class: str,
                    simulator_options: dict, n: int = 2000, z_range: tuple[float, float] = (0.0, 7.0),
                    seed: int = CALIBRATION_SEED, batch_size: int = 256) -> dict:
    """{"z_err_scale", "n_quasars", "within_1_sigma_before", "within_1_sigma_after", ...} on n simulated spectra."""
    if head["kind"] != "zbins":
        raise ValueError("Z_ERR calibration needs a zbins head (a regression head gives no Z_ERR)")
    sim = make_simulator(simulator_class, simulator_options, seed)
    backend = TorchBackend(model, head["output"], head=head)
    unscaled = {k: v for k, v in head.items() if k != "z_err_scale"}
    ratios = []
    for x, z_true, spectype in _simulated_batches(sim, n, batch_size, seed, grid, normalisation, z_range):
        decoded = decode(backend.run(x), unscaled)
        quasar = np.asarray(spectype, dtype=object) == QUASAR
        ok = quasar & np.isfinite(decoded.z_err) & (decoded.z_err > 0)
        ratios.append(np.abs(decoded.z[ok] - z_true[ok]) / decoded.z_err[ok])
    r = np.concatenate(ratios)
    if r.size < 50:
        raise ValueError(f"only {r.size} simulated quasars with a Z_ERR: too few to calibrate")
    scale = float(np.quantile(r, ONE_SIGMA_MASS))
    return {"z_err_scale": scale, "n_quasars": int(r.size), "n_simulated": int(n), "seed": int(seed),
            "simulator": simulator_class, "within_1_sigma_before": float(np.mean(r < 1.0)),
            "within_1_sigma_after": float(np.mean(r < scale))}


CLASS_RANGE_SEED = 0xC1A55  # distinct from every training, validation and calibration seed
# A class's range leaves out this share of its simulated spectra at each end: the quasar redshift prior has a
# flat floor down to z = 0 that puts 1 in 2500 quasars below z 0.02, and a class the network saw once in thousands
# of spectra at some redshift is not one it learnt there. The extremes of a sample would also move with its seed.
CLASS_RANGE_TAIL = 0.001


def fit_class_z_range(classes: list[str], simulator_class: str, simulator_options: dict, grid: Grid,
                      normalisation: dict, n: int = 4000, z_range: tuple[float, float] = (0.0, 7.0),
                      z_sampling: str = "simulator", seed: int = CLASS_RANGE_SEED,
                      batch_size: int = 500) -> dict:
    """{"ranges": {class: [lo, hi]}, "n_simulated", "counts", "tail", "seed"} from n spectra of the run's own simulator.

    Why: the head's ``class_z_range`` (fnet.runtime.heads) lets the decoder drop a class at a redshift where
    training (almost) never showed it. Measured, not assumed: lo and hi are the CLASS_RANGE_TAIL and
    1 - CLASS_RANGE_TAIL quantiles of each class's redshifts among n fresh draws of the training simulator (same
    options, z range and sampling; a seed used nowhere else). No network and no real spectrum is involved.
    """
    sim = make_simulator(simulator_class, simulator_options, seed)
    zs, kinds = [], []
    for _x, z_batch, spectype in _simulated_batches(sim, n, batch_size, seed, grid, normalisation, z_range, z_sampling):
        zs.append(z_batch)  # the inputs _x are not kept: 20,000 of them would hold ~90 MB for nothing
        kinds.append(np.asarray(spectype, dtype=object))
    z, kind = np.concatenate(zs), np.concatenate(kinds)
    counts = {c: int(np.sum(kind == c)) for c in classes}
    missing = [c for c in classes if counts[c] < 20]
    if missing:
        raise ValueError(f"{n} simulated spectra hold fewer than 20 of {missing}: too few to measure their "
                         "redshift range (raise N)")
    ranges = {c: [float(q) for q in np.quantile(z[kind == c], [CLASS_RANGE_TAIL, 1.0 - CLASS_RANGE_TAIL])]
              for c in classes}
    return {"ranges": ranges, "n_simulated": int(n), "counts": counts, "tail": CLASS_RANGE_TAIL, "seed": int(seed),
            "simulator": simulator_class}
