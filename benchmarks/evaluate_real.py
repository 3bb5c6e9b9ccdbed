"""Accuracy of a model on every real set in ../shared/data, as reported in the README.

    python benchmarks/evaluate_real.py                       # the embedded default model
    python benchmarks/evaluate_real.py --model other.onnx --out eval-other/

Sets:
- dr16: 67 BOSS quasars of plate 3655 with DR16Q redshifts: as observed, emission lines masked
  (paper Fig. 6), and S/N halved;
- dr14-pk1d: 8 BOSS spectra trimmed to ~3700-4400 A (Lya forest only): a partial-coverage stress
  test, reported separately (ZWARN must flag them);
- desi: the DESI healpix coadd targets listed in the fuji QSO catalog.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet import evaluate as ev  # noqa: E402
from fnet.cli import default_model_path  # noqa: E402
from fnet.runtime.zwarn import ZWarn  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = {
    "dr16": (DATA / "sdss" / "dr16", DATA / "sdss" / "dr16" / "cat_for_clustering_plate3655.fits.gz",
             ("as observed", "lines masked", "S/N halved")),
    "dr14-pk1d (trimmed)": (DATA / "sdss" / "dr14-pk1d", DATA / "sdss" / "dr14-pk1d" / "DRQ_Pk1D.fits", ("as observed",)),
    "desi": (DATA / "desi", DATA / "desi" / "QSO_cat_fuji_dark_healpix.fits.gz", ("as observed",)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--out", default="eval-real")
    args = parser.parse_args()
    predict, info = ev.onnx_predictor(args.model, device="cpu")
    out = Path(args.out)
    summary = {"model": info, "sets": {}}
    lines = []
    for name, (folder, truth, variants) in SETS.items():
        if not folder.is_dir():
            print(f"skip {name}: {folder} not found")
            continue
        spectra, z_true, _ = ev.collect([str(folder)], ev.read_truth(truth))
        reports = [ev.evaluate(predict, spectra, z_true, variant=v, seed=0) for v in variants]
        ev.write_report(reports, out / name.split()[0], info)
        for rep in reports:
            flagged = sum(1 for r in rep["rows"] if r["zwarn"] & ZWarn.LITTLE_COVERAGE)
            summary["sets"][f"{name} / {rep['variant']}"] = {
                "n": rep["n"], "fractions": rep["fractions"], "median_abs_dv": rep["median_abs_dv"],
                "p68_abs_dv": rep["p68_abs_dv"], "catastrophic_rate": rep["catastrophic_rate"],
                "z_err_calibration": rep.get("z_err_calibration"), "n_little_coverage": flagged}
        lines.append(f"## {name}: {len(spectra)} spectra\n" + ev.summary_table(reports))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"model {info['name']} {info['version']} sha256 {info['sha256'][:16]}")
    print("\n\n".join(lines))
    for key, s in summary["sets"].items():
        cal = s.get("z_err_calibration") or {}
        print(f"{key}: Z_ERR calibration: {cal.get('within_1_sigma', float('nan')):.0%} within 1 sigma "
              f"(median Z_ERR {cal.get('median_z_err_kms', float('nan')):.0f} km/s); "
              f"LITTLE_COVERAGE flagged {s['n_little_coverage']}/{s['n']}")


if __name__ == "__main__":
    main()
