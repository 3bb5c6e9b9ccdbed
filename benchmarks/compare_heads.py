"""Regression (the paper's MSE on scaled z) vs the redshift-bin head, same network, same budget, same data.

    python benchmarks/compare_heads.py --pairs pooled4x:regression lite4x:zbins lite4x:regression \\
        --epochs 5 --steps 160 --batch 128 --out runs/compare

Each pair trains with fnet-train (the classes_pooled4x recipe, that of the 2.0.0 default, constant learning
rate, identical seed and simulated data stream), then its final checkpoint is evaluated on the 67 real DR16 quasars
through the runtime's own prediction path. Prints one table and writes compare.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.evaluate import collect, evaluate, read_truth  # noqa: E402
from fnet.train.evaluate_torch import torch_predictor  # noqa: E402
from fnet.train.loop import train  # noqa: E402

DR16 = ROOT.parent / "shared" / "data" / "sdss" / "dr16"
GRIDS = {"pooled4x": "{loglam_start: 3.5522, loglam_step: 0.0004, npix: 1155}",
         "lite4x": "{loglam_start: 3.5522, loglam_step: 0.0004, npix: 1155}",
         "paper": "{loglam_start: 3.5522, loglam_step: 0.0001, npix: 4618}"}
HEADS = {"regression": "{kind: regression, output: z_scaled, z_min: 0.0, z_max: 7.0}",
         "zbins": "{kind: zbins, output: logits, spacing: log1p, z_min: 0.0, z_max: 7.0, nbins: 1024}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["pooled4x:regression", "pooled4x:zbins"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args()
    spectra, z_true, _ = collect([str(DR16)], read_truth(DR16 / "cat_for_clustering_plate3655.fits.gz"))
    rows = []
    for pair in args.pairs:
        arch, head = pair.split(":")
        run_dir = Path(args.out) / f"{arch}_{head}"
        t0 = time.perf_counter()
        result = train("classes_pooled4x", [
            f"arch={arch}", f"head={HEADS[head]}", f"grid={GRIDS[arch]}", "schedule.kind=constant",
            f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch}",
            f"train.checkpoint_dir={run_dir}", "validation.real_dir=", "validation.real_catalog=",
            f"name=compare-{arch}-{head}", f"loss.label_sigma={1.0 if head == 'zbins' else 0.0}"])
        minutes = (time.perf_counter() - t0) / 60
        predict, _ = torch_predictor(result.last_checkpoint)
        rep = evaluate(predict, spectra, z_true)
        rows.append({"arch": arch, "head": head, "spectra_seen": args.epochs * args.steps * args.batch,
                     "minutes": minutes, "n": rep["n"], "fractions": {k: v["fraction"] for k, v in rep["fractions"].items()},
                     "median_abs_dv": rep["median_abs_dv"]})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "compare.json").write_text(json.dumps(rows, indent=1))
    print(f"{'arch':<10}{'head':<12}{'spectra':>9}{'min':>6}{'<6000':>8}{'<12000':>8}{'<30000':>8}{'median|dv|':>12}")
    for r in rows:
        med = r["median_abs_dv"] if r["median_abs_dv"] is not None else float("inf")
        f = r["fractions"]
        print(f"{r['arch']:<10}{r['head']:<12}{r['spectra_seen']:>9}{r['minutes']:>6.1f}{f['6000']:>8.1%}"
              f"{f['12000']:>8.1%}{f['30000']:>8.1%}{med:>12.0f}")


if __name__ == "__main__":
    main()
