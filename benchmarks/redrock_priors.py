"""redrock with and without FNet priors on the DESI coadds in ../shared/data/desi (QSO templates only).

    python benchmarks/redrock_priors.py                      # embedded model, all arms and B arm only
    python benchmarks/redrock_priors.py --arms BRZ --json out.json

What it does: fnet-run on the coadds that carry a FIBERMAP (real TARGETIDs) writes a catalog and
``--priors``; then redrock 0.21.0's own zfind runs twice on the same targets, with the two QSO templates
of ../shared/data/templates (rrtemplate-QSO-LOZ/HIZ-v1.1): without priors, and with the FNet priors file
(redrock's ``zfind(..., priors=PATH)``, the code path of ``rrdesi --priors``). rrdesi itself cannot run
here: its reader imports desispec/desiutil, which are not on PyPI; the benchmark builds redrock's Target
objects itself from the coadd HDUs (B/R/Z wavelength, flux, ivar with MASK != 0 set to 0, and the
RESOLUTION diagonals as desispec.resolution.Resolution lays them out). ``--arms B`` repeats the run on the
B arm alone (3600-5800 A): fewer lines, the regime where redrock confuses them and a prior from the full
spectrum matters. Reference redshifts: the fuji QSO catalog (QSO_cat_fuji_dark_healpix), else the DESI
redrock file beside the coadd. Single-threaded (numba and BLAS), about 20-40 s in all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
DESI = DATA / "desi"
TEMPLATES = [DATA / "templates" / "rrtemplate-QSO-LOZ-v1.1.fits", DATA / "templates" / "rrtemplate-QSO-HIZ-v1.1.fits"]
COADDS = ["coadd-main-dark-9144.fits", "coadd-1-80693-thru20210204.fits", "coadd-4-80613-thru20210324.fits"]
C_KMS = 299792.458


def resolution(diagonals: np.ndarray):
    """desispec.resolution.Resolution's layout: row d of (ndiag, nwave) is offset ndiag//2 - d."""
    import scipy.sparse

    ndiag, nwave = diagonals.shape
    offsets = np.arange(ndiag // 2, -(ndiag // 2) - 1, -1)
    return scipy.sparse.dia_matrix((diagonals, offsets), shape=(nwave, nwave))


def read_targets(paths: list[Path], arms: str):
    """redrock Target objects (one per FIBERMAP row) from DESI coadd files."""
    from astropy.io import fits
    from redrock.targets import Spectrum, Target

    targets = []
    for path in paths:
        with fits.open(path, memmap=False) as h:
            for i, tid in enumerate(h["FIBERMAP"].data["TARGETID"]):
                spectra = []
                for arm in arms:
                    ivar = np.where(h[f"{arm}_MASK"].data[i] != 0, 0.0, h[f"{arm}_IVAR"].data[i].astype(np.float64))
                    spectra.append(Spectrum(h[f"{arm}_WAVELENGTH"].data.astype(np.float64),
                                            h[f"{arm}_FLUX"].data[i].astype(np.float64), ivar,
                                            resolution(h[f"{arm}_RESOLUTION"].data[i].astype(np.float64)),
                                            band=arm.lower()))
                targets.append(Target(int(tid), spectra))
    return targets


def run_redrock(paths: list[Path], arms: str, priors: Path | None) -> tuple[dict, float]:
    """{TARGETID: best-fit row} and the seconds zfind took (templates rebinned outside the timing)."""
    import contextlib
    import io

    from redrock.targets import DistTargetsCopy
    from redrock.templates import DistTemplate, Template
    from redrock.zfind import zfind

    with contextlib.redirect_stdout(io.StringIO()):  # redrock prints progress lines
        targets = DistTargetsCopy(read_targets(paths, arms))
        templates = [DistTemplate(Template(str(t)), targets.wavegrids()) for t in TEMPLATES]
        start = time.perf_counter()
        _, zfit = zfind(targets, templates, mp_procs=1, priors=None if priors is None else str(priors))
        seconds = time.perf_counter() - start
    best = zfit[zfit["znum"] == 0]
    return {int(r["targetid"]): {"z": float(r["z"]), "zwarn": int(r["zwarn"]), "deltachi2": float(r["deltachi2"]),
                                 "subtype": str(r["subtype"])} for r in best}, seconds


def references() -> dict[int, tuple[float, str]]:
    from astropy.table import Table

    ref = {int(t): (float(z), "fuji QSO cat") for t, z in
           Table.read(DESI / "QSO_cat_fuji_dark_healpix.fits.gz")[["TARGETID", "Z"]]}
    for r in Table.read(DESI / "redrock-4-80613-thru20210324.fits", hdu="REDSHIFTS"):
        ref.setdefault(int(r["TARGETID"]), (float(r["Z"]), f"DESI redrock {r['SPECTYPE']}"))
    return ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="ONNX model package [default: the embedded one]")
    parser.add_argument("--arms", action="append", default=None, help="arms to fit, e.g. BRZ or B (repeatable)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    arms_list = args.arms or ["BRZ", "B"]
    paths = [DESI / name for name in COADDS]
    if not all(p.exists() for p in paths + TEMPLATES):
        print(f"skipped: the DESI coadds or QSO templates are not in {DATA}")
        return 0
    from astropy.table import Table

    work = Path(tempfile.mkdtemp(prefix="fnet-rr-"))
    catalog, priors = work / "catalog.fits", work / "priors.fits"
    command = [sys.executable, "-c", "from fnet.cli import run_command; run_command()", *map(str, paths),
               "-o", str(catalog), "--priors", str(priors), "--threads", "1", "-q"]
    if args.model:
        command += ["--model", args.model]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    fnet_seconds = time.perf_counter() - start
    print(proc.stderr.strip())
    if proc.returncode not in (0, 1):
        return proc.returncode
    cat = Table.read(catalog, hdu="FNET")
    fnet = {int(r["TARGETID"]): (float(r["Z"]), int(r["ZWARN"])) for r in cat}
    with_prior = set(int(t) for t in Table.read(priors, hdu="PRIORS")["TARGETID"])
    ref = references()

    def dv(z: float, tid: int) -> float:
        return C_KMS * (z - ref[tid][0]) / (1 + ref[tid][0]) if tid in ref else float("nan")

    report = {"fnet_run_seconds": round(fnet_seconds, 2), "priors": str(priors), "runs": {}}
    print(f"fnet-run (catalog + priors, {len(cat)} rows): {fnet_seconds:.1f} s; "
          f"{len(with_prior)} of {len(fnet)} targets have a prior")
    for arms in arms_list:
        plain, t_plain = run_redrock(paths, arms, None)
        prior, t_prior = run_redrock(paths, arms, priors)
        rows = []
        print(f"\narms {arms}: redrock zfind {t_plain:.1f} s without priors, {t_prior:.1f} s with")
        print(f"{'TARGETID':>18} {'z_ref':>7} {'source':<22} {'FNet z':>7} {'dv':>7} {'prior':>5} | "
              f"{'rr z':>7} {'dv':>8} {'ZWARN':>5} {'dchi2':>8} | {'rr+prior z':>10} {'dv':>8} {'ZWARN':>5} {'dchi2':>8}")
        for tid, (fz, fw) in fnet.items():
            a, b = plain[tid], prior[tid]
            zr, src = ref.get(tid, (float("nan"), "-"))
            print(f"{tid:>18} {zr:7.4f} {src:<22} {fz:7.4f} {dv(fz, tid):7.0f} {'yes' if tid in with_prior else 'no':>5} | "
                  f"{a['z']:7.4f} {dv(a['z'], tid):8.0f} {a['zwarn']:5d} {a['deltachi2']:8.1f} | "
                  f"{b['z']:10.4f} {dv(b['z'], tid):8.0f} {b['zwarn']:5d} {b['deltachi2']:8.1f}")
            rows.append({"targetid": tid, "z_ref": zr, "ref": src, "fnet_z": fz, "fnet_zwarn": fw,
                         "has_prior": tid in with_prior, "redrock": a, "redrock_priors": b})
        report["runs"][arms] = {"seconds_without": round(t_plain, 2), "seconds_with": round(t_prior, 2), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
