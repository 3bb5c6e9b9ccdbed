"""Issue #9's targets on the real development sets in ../shared/data, for one or more model packages.

    python benchmarks/classes_targets.py                          # the embedded default model
    python benchmarks/classes_targets.py --model a.onnx --model b.onnx --json out.json

Every spectrum goes through fnet-run's own prediction path (fnet.evaluate.make_predict: readers,
preprocessing, backend, head decoding, ZWARN, class columns). Nothing here is fitted: these spectra
are only ever evaluated on (models are trained and Z_ERR-calibrated on simulated spectra only). The one
exception is a package's Z_ERR floor (fnet-export --z-err-floor-kms), fitted on real reference redshifts:
for such a package the DR16 Z_ERR row says so, and benchmarks/z_err_floor.py gives the held-out share.

Sets (../shared/data/README.md):
- dr16: the 67 plate-3655 quasars with a DR16Q Z (cat_for_clustering_plate3655): within 6000 km/s,
  median |dv|, SPECTYPE QSO, fraction within 1 Z_ERR;
- lamost: the 176 LAMOST DR1 stars: SPECTYPE STAR;
- sdss/mixed: the F star (sdss2) and the hot white dwarf (sample_spectrum) STAR; the 16 usable galaxies
  (pipeline CLASS GALAXY, ZWARNING != 6) GALAXY and z within 1000 km/s; the five low-z AGN (CLASS QSO,
  z 0.05-0.25) within 6000 km/s or flagged, none catastrophic with ZWARN 0;
- desi: the coadd galaxy with a redrock GALAXY redshift (z 0.369).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.evaluate import onnx_predictor  # noqa: E402
from fnet.evaluate.truth import load_sample  # noqa: E402
from fnet.metrics import velocity_offsets  # noqa: E402
from fnet.runtime.model_package import load_model_package  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STARS_IN_MIXED = ("sdss2.fits", "sample_spectrum.fits")  # F3/F5V and WDhotter: the unambiguous SDSS stars


def _predict(predict, sample) -> dict:
    """Z, Z_ERR, ZWARN, SPECTYPE and |dv| for a sample."""
    p = predict(sample.spectra)
    z = np.asarray(p.z, dtype=np.float64)
    return {"z": z, "z_err": np.asarray(p.z_err, dtype=np.float64), "zwarn": np.asarray(p.zwarn),
            "spectype": np.asarray(p.spectype()) if p.p_class is not None else np.full(len(z), ""),
            "dv": np.abs(velocity_offsets(z, sample.z_true)),
            "files": [Path(s.source).name for s in sample.spectra]}


def _truth_scatter_note(r: dict, z_true: np.ndarray) -> str:
    """How far the DR16Q Z itself scatters (against the BOSS pipeline's Z of the same spectra), and the share within
    1 Z_ERR that an exact Z_ERR would show against a truth with that scatter: the 1-sigma test measures both."""
    from astropy.io import fits
    from math import erf, sqrt

    spall = fits.getdata(DATA / "sdss" / "dr16" / "spAll-plate3655.fits")
    pipeline = {f"spec-{p:04d}-{m}-{f:04d}.fits": z for p, m, f, z in
                zip(spall["PLATE"], spall["MJD"], spall["FIBERID"], spall["Z"])}
    keep = [i for i, name in enumerate(r["files"]) if name in pipeline]
    dv = velocity_offsets(np.array([pipeline[r["files"][i]] for i in keep]), z_true[keep])
    sigma = 1.4826 * np.median(np.abs(dv - np.median(dv)))
    err = velocity_offsets(z_true + r["z_err"], z_true)  # Z_ERR in km/s
    exact = {s: np.mean([erf(e / sqrt(2 * (e * e + s * s))) for e in err]) for s in (100.0, 150.0, 200.0)}
    return (f"pipeline Z vs DR16Q Z on {len(keep)} of them: robust sigma {sigma:.0f} km/s; an exact Z_ERR (median "
            f"{np.median(err):.0f} km/s) against a truth scattering by 100 / 150 / 200 km/s shows "
            + " / ".join(f"{v:.1%}" for v in exact.values()) + " within 1 Z_ERR")


def targets(model: str) -> dict:
    """Every target of issue #9 for one package: measured value, target, pass."""
    predict, info = onnx_predictor(model)
    out: dict = {"model": info, "targets": []}

    def add(name: str, value, goal: str, ok: bool | None, detail: str = "") -> None:
        # ok None: the figure cannot judge the target (in-sample), so neither pass nor miss is claimed
        out["targets"].append({"target": name, "value": value, "goal": goal, "pass": None if ok is None else bool(ok),
                               "detail": detail})

    dr16 = load_sample([str(DATA / "sdss" / "dr16")], DATA / "sdss" / "dr16" / "cat_for_clustering_plate3655.fits.gz")
    r = _predict(predict, dr16)
    n = len(r["z"])
    add(f"dr16 quasars within 6000 km/s (n={n})", round(float(np.mean(r["dv"] < 6000)), 4), ">= 0.97",
        np.mean(r["dv"] < 6000) >= 0.97)
    add("dr16 median |dv| km/s", round(float(np.median(r["dv"])), 1), "<= 230", np.median(r["dv"]) <= 230)
    n_qso = int(np.sum(r["spectype"] == "QSO"))
    add("dr16 SPECTYPE QSO", f"{n_qso}/{n}", ">= 66/67", n_qso >= n - 1)
    within = np.abs(r["z"] - dr16.z_true) < r["z_err"]
    floor = load_model_package(model).head.get("z_err_floor_kms")
    note = _truth_scatter_note(r, dr16.z_true)
    ok = 0.60 <= np.mean(within) <= 0.76
    if floor:  # fitted on real reference redshifts, maybe these: only a held-out share says anything
        note = (f"IN-SAMPLE if its Z_ERR floor ({floor:.0f} km/s) was fitted on these spectra: the held-out share is "
                "benchmarks/z_err_floor.py's; " + note)
        ok = None
    add("dr16 within 1 Z_ERR", round(float(np.mean(within)), 4), "0.60-0.76", ok, note)

    lamost = load_sample([str(DATA / "lamost" / "dr1")], DATA / "lamost" / "dr1" / "truth.csv")
    r = _predict(predict, lamost)
    n_star = int(np.sum(r["spectype"] == "STAR"))
    add(f"LAMOST stars SPECTYPE STAR (n={len(r['z'])})", round(n_star / len(r["z"]), 4), ">= 0.98",
        n_star / len(r["z"]) >= 0.98, json.dumps(dict(zip(*np.unique(r["spectype"], return_counts=True))),
                                                 default=int) + "; not STAR: " +
        ", ".join(f"{f}: {t} z={z:.4f} ZWARN {w}" for f, t, z, w in
                  zip(r["files"], r["spectype"], r["z"], r["zwarn"]) if t != "STAR"))

    mixed = load_sample([str(DATA / "sdss" / "mixed")], DATA / "sdss" / "mixed" / "truth.csv")
    r = _predict(predict, mixed)
    files = np.array(r["files"])
    classes, zwarning = np.asarray(mixed.classes), np.asarray(mixed.zwarning)
    stars = np.isin(files, STARS_IN_MIXED)
    add("SDSS F star + white dwarf STAR", f"{int(np.sum(r['spectype'][stars] == 'STAR'))}/{int(stars.sum())}",
        "2/2", np.all(r["spectype"][stars] == "STAR"), ", ".join(f"{f}: {t}" for f, t in
                                                                   zip(files[stars], r["spectype"][stars])))
    gal = (classes == "GALAXY") & (zwarning != 6)
    n_gal = int(np.sum(r["spectype"][gal] == "GALAXY"))
    add(f"SDSS galaxies GALAXY (n={int(gal.sum())})", f"{n_gal}/{int(gal.sum())}", ">= 15/16", n_gal >= 15,
        ", ".join(f"{f}: {t} z={z:.4f} (true {zt:.4f})" for f, t, z, zt in
                  zip(files[gal], r["spectype"][gal], r["z"][gal], mixed.z_true[gal])))
    gal_z = float(np.mean(r["dv"][gal] < 1000))
    add("SDSS galaxies z within 1000 km/s", round(gal_z, 4), ">= 0.80", gal_z >= 0.80)
    agn = (classes == "QSO") & (mixed.z_true >= 0.04) & (mixed.z_true <= 0.26)
    good = (r["dv"][agn] < 6000) | (r["zwarn"][agn] != 0)
    silent = int(np.sum((r["dv"][agn] >= 6000) & (r["zwarn"][agn] == 0)))
    add(f"low-z AGN within 6000 km/s or flagged (n={int(agn.sum())})", f"{int(good.sum())}/{int(agn.sum())}",
        "all; none catastrophic with ZWARN 0", good.all() and silent == 0,
        ", ".join(f"{f}: z={z:.4f} (true {zt:.4f}, {dv:.0f} km/s) ZWARN {w} {t}" for f, z, zt, dv, w, t in
                  zip(files[agn], r["z"][agn], mixed.z_true[agn], r["dv"][agn], r["zwarn"][agn], r["spectype"][agn])))

    desi = load_sample([str(DATA / "desi" / "coadd-4-80613-thru20210324.fits")],
                       DATA / "desi" / "redrock-4-80613-thru20210324.fits")
    r = _predict(predict, desi)
    gal = np.asarray(desi.classes) == "GALAXY"
    ok = gal.any() and np.all(r["spectype"][gal] == "GALAXY") and np.all(r["dv"][gal] < 1000)
    add("DESI coadd galaxy GALAXY, z within 1000 km/s", ", ".join(
        f"{t} z={z:.4f} (redrock {zt:.4f}, {dv:.0f} km/s)" for t, z, zt, dv in
        zip(r["spectype"][gal], r["z"][gal], desi.z_true[gal], r["dv"][gal])), "GALAXY, < 1000 km/s", ok)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None, help="package(s) [default: the embedded model]")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    from fnet.cli import default_model_path

    results = [targets(m) for m in (args.model or [str(default_model_path())])]
    for res in results:
        print(f"\n## {res['model']['name']} ({res['model']['model']})")
        for t in res["targets"]:
            verdict = {True: "PASS", False: "MISS", None: "N/A "}[t["pass"]]
            print(f"{verdict}  {t['target']:<52} {t['value']!s:<14} target {t['goal']}")
            if t["detail"] and not t["pass"]:
                print(f"      {t['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
