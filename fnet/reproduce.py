"""One command from DR16Q files to the paper's numbers: dataset (paper split) -> training -> test report -> export.

    fnet-reproduce-paper DR16Q_v4.fits /data/sdss/spectra/lite --dr12q DR12Q.fits --work runs/paper-dr16q

This module sits above training and export (it uses both; neither uses it). Every stage is resumable: the dataset builder skips finished shards and training resumes from
its last checkpoint, so re-running the same command after an interruption carries on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .dataset import build_dataset
from .evaluate import evaluate_arrays
from .export.pipeline import export_checkpoint
from .runtime.atomic import atomic_write_text
from .train.config import load_config
from .train.data import shard_set
from .train.evaluate_torch import TorchBackend, checkpoint_package
from .train.loop import train


def shard_overrides(dataset_dir: Path, work_dir: Path) -> list[str]:
    """Config overrides that train on the dataset's train split and validate on its val split."""
    return ["data.source=shards", f"data.shards={dataset_dir}", "data.split=train",
            f"validation.shards={dataset_dir}", "validation.shards_split=val", "validation.n_simulated=0",
            "validation.real_dir=", "validation.real_catalog=", f"train.checkpoint_dir={work_dir / 'train'}"]


def evaluate_test_split(checkpoint: str | Path, dataset_dir: str | Path, batch_size: int = 256) -> dict:
    """Metrics report of a checkpoint on the dataset's test split (the paper's DR16Q-only VI quasars)."""
    model, package = checkpoint_package(checkpoint)
    test = shard_set(dataset_dir, package.grid, package.normalisation, package.head, split="test")
    rep = evaluate_arrays(TorchBackend(model, package.head["output"]).run, test.x, test.z, package.head, batch_size)
    rep["paper_reference"] = {"6000": 0.970, "12000": 0.980, "30000": 0.989}
    return rep


def reproduce_paper(dr16q: str | Path, spectra_roots: Sequence[str | Path], work_dir: str | Path, *,
                    dr12q: str | Path | None = None, config: str = "paper", overrides: Sequence[str] = (),
                    processes: int | None = None, limit: int | None = None, export: bool = True) -> dict:
    """Build the dataset, train the configured model on it, report on the test split and export; returns a summary."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    base = load_config(config, list(overrides)).to_dict()
    dataset_dir = work / "dataset"
    manifest = build_dataset(dr16q, [str(r) for r in spectra_roots], dataset_dir, grid=base["grid"],
                             normalisation=base["normalisation"], split="paper" if dr12q else "random",
                             dr12q_catalog=dr12q, processes=processes, limit=limit)
    cfg = load_config(config, list(overrides) + shard_overrides(dataset_dir, work))
    result = train(cfg)
    best = result.best_checkpoint or result.last_checkpoint
    test_report = evaluate_test_split(best, dataset_dir)
    atomic_write_text(work / "test_report.json", json.dumps(test_report, indent=1))
    summary = {"dataset": {"built": manifest["n_built"], "failed": manifest["n_failed"],
                           "failures": manifest["failures"]},
               "checkpoint": str(best), "test": {k: test_report[k] for k in ("n", "median_abs_dv", "fractions")}}
    if export:
        results = export_checkpoint(best, work / "models", precisions=("fp32", "fp16"), n_simulated=256)
        summary["exports"] = {r.kind: (str(r.path) if r.path else r.error) for r in results}
    atomic_write_text(work / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary
