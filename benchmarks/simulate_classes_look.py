"""Quick look: simple summary statistics of simulated stars, galaxies and low-z AGN next to real ones.

    python benchmarks/simulate_classes_look.py [--n 400] [--seed 0]

A sanity report only. Nothing in fnet.simulate is fitted to the real spectra compared here (../shared/data/sdss/mixed
and ../shared/data/lamost/dr1), and nothing here feeds back into it. Both sides are measured by the same code on
the observed (noisy, masked) spectra: median S/N per pixel, two observed-frame colour ratios (mean f_λ 4000-5000 Å
over 6000-7000 Å, and 6000-7000 Å over 7500-8500 Å), rest-frame equivalent widths (Hα, Hβ, [O II]; emission > 0)
and the narrow 4000 Å break (f_λ), each at the object's true / catalogue redshift.

Caveats: LAMOST DR1 fluxes are only relatively calibrated (colours indicative); the real SDSS galaxies are bright
main-sample objects (S/N far above a quasar target list's), the simulated ones are at quasar-target magnitudes;
the real sets are tiny (a handful per row), so only gross disagreements mean anything.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.runtime.readers import read_spectra  # noqa: E402
from fnet.simulate import SpectrumMixSimulator  # noqa: E402
from fnet.simulate.paths import resolve_data_dir  # noqa: E402
from fnet.simulate.restframe import HALPHA, HBETA, OII, d4000, equivalent_width  # noqa: E402

STAR_GROUPS = ("A", "F", "G", "K", "M")


def measure(lam: np.ndarray, flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, z: float) -> dict[str, float]:
    """Summary statistics of one observed spectrum (good pixels only)."""
    lam, flux, ivar = lam[good], flux[good], ivar[good]
    out = {"snr": float(np.median(flux * np.sqrt(ivar))) if len(flux) else np.nan}

    def band(lo, hi):
        sel = (lam > lo) & (lam < hi)
        return float(np.mean(flux[sel])) if sel.sum() > 50 else np.nan

    with np.errstate(divide="ignore", invalid="ignore"):
        out["B/R"] = band(4000, 5000) / band(6000, 7000)
        out["R/I"] = band(6000, 7000) / band(7500, 8500)
    rest = lam / (1.0 + z)
    out["EW_Ha"] = float(equivalent_width(rest, flux, HALPHA)[0])
    out["EW_Hb"] = float(equivalent_width(rest, flux, HBETA)[0])
    out["EW_OII"] = float(equivalent_width(rest, flux, OII)[0])
    out["EW_Ha_broad"] = float(equivalent_width(rest, flux, HALPHA, half=60.0, side=(80.0, 160.0))[0])
    out["D4000"] = float(d4000(rest, flux)[0])
    return out


def measure_batch(b, rows) -> list[dict[str, float]]:
    lam = 10**b.loglam
    return [measure(lam, b.flux[i], b.ivar[i], b.good[i], float(b.z[i])) for i in rows]


def measure_files(paths_z: list[tuple[Path, float]]) -> list[dict[str, float]]:
    out = []
    for path, z in paths_z:
        s = read_spectra(path)[0]
        if s.good.sum() < 500:
            continue
        out.append(measure(10**s.loglam, s.flux, s.ivar, s.good, z))
    return out


def summary(rows: list[dict[str, float]], key: str) -> str:
    v = np.array([r[key] for r in rows], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return "-".center(26)
    if len(v) < 3:
        return f"{np.median(v):7.2f} {'':11s} (N={len(v):3d})"
    lo, med, hi = np.percentile(v, [16, 50, 84])
    return f"{med:7.2f} [{lo:6.2f},{hi:6.2f}] (N={len(v):3d})"


def table(title: str, real: list[dict], sim: list[dict], keys: tuple[str, ...]) -> None:
    print(f"\n{title}")
    print(f"  {'quantity':12s} {'real: median [16%, 84%]':30s} {'simulated: median [16%, 84%]':30s}")
    for k in keys:
        print(f"  {k:12s} {summary(real, k):30s} {summary(sim, k):30s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="simulated objects per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = resolve_data_dir()
    if root is None:
        print("no ../shared/data: nothing to compare")
        return 0

    # real sets (read only; nothing is fitted to them)
    lam_rows = list(csv.DictReader(open(root / "lamost/dr1/truth.csv")))
    lamost = {g: measure_files([(root / "lamost/dr1" / r["file"], float(r["Z"])) for r in lam_rows
                                if r["SUBCLASS"][:1] == g]) for g in STAR_GROUPS}
    mixed = list(csv.DictReader(open(root / "sdss/mixed/truth.csv")))
    ok = [r for r in mixed if r["ZWARNING"] in ("0", "")]
    # NGC3073 is labelled STAR A0 by the pipeline but is a galaxy at z ≈ 0.004 (shared README): counted as galaxy
    gal = [(root / "sdss/mixed" / r["file"], float(r["Z"])) for r in ok
           if r["CLASS"] == "GALAXY" or r["file"].startswith("NGC3073")]
    agn = [(root / "sdss/mixed" / r["file"], float(r["Z"])) for r in ok if r["CLASS"] == "QSO" and float(r["Z"]) < 0.3]
    sdss_stars = [(r["SUBCLASS"], root / "sdss/mixed" / r["file"], float(r["Z"])) for r in ok
                  if r["CLASS"] == "STAR" and not r["file"].startswith("NGC3073")]

    # simulated (same seed each run)
    sim_s = SpectrumMixSimulator(seed=args.seed, mix={"STAR": 1}).sample(args.n)

    print("Simulated vs real: summary statistics measured identically on both (nothing fitted to the real sets)")
    keys_star = ("snr", "B/R", "R/I", "EW_Ha", "EW_Hb")
    for g in STAR_GROUPS:
        rows = np.nonzero(sim_s.params["subtype"] == g)[0]
        table(f"STAR {g}: LAMOST DR1 {g} stars vs simulated {g} stars", lamost[g], measure_batch(sim_s, rows),
              keys_star)
    for sub, path, z in sdss_stars:
        group = "WD" if sub.startswith("WD") else sub[:1]
        rows = np.nonzero(sim_s.params["subtype"] == group)[0]
        table(f"STAR {sub} ({path.name}, SDSS) vs simulated {group} stars", measure_files([(path, z)]),
              measure_batch(sim_s, rows), keys_star)
    v = np.abs(sim_s.params["v_kms"])
    v_real = np.abs([float(r["Z"]) * 299792.458 for r in lam_rows])
    print(f"\n  |v_r| km/s: LAMOST median {np.median(v_real):.0f} (90%: {np.percentile(v_real, 90):.0f}); "
          f"simulated median {np.median(v):.0f} (90%: {np.percentile(v, 90):.0f})")

    # galaxies and AGN are simulated AT THE REAL OBJECTS' REDSHIFTS (20 per object; galaxies below the simulator's
    # z >= 0.005 are drawn at 0.005): observed-frame colours then compare like with like. Conditioning on z is not
    # fitting: no spectrum of these sets enters the simulator.
    keys_gal = ("snr", "B/R", "R/I", "EW_Ha", "EW_Hb", "EW_OII", "D4000")
    real_g = measure_files(gal)
    zg = np.repeat(np.maximum([z for _, z in gal], 0.005), 20)
    sim_g = SpectrumMixSimulator(seed=args.seed + 1, mix={"GALAXY": 1}).sample(len(zg), z=zg)
    sim_gm = measure_batch(sim_g, range(len(zg)))
    table(f"GALAXY: sdss/mixed galaxies (z 0.003-0.40, median {np.median(zg):.3f}) vs simulated galaxies "
          "(default subtype mix) at the same redshifts", real_g, sim_gm, keys_gal)
    for name, rows in (("real", real_g), ("simulated", sim_gm)):
        ha = np.array([r["EW_Ha"] for r in rows])
        ha = ha[np.isfinite(ha)]
        print(f"  {name:9s}: share with EW(Hα) > 5 Å (emission): {np.mean(ha > 5):.2f} of {len(ha)}")
    sub = sim_g.params["subtype"]
    for s_ in sorted(set(sub)):
        rows = [m for m, k in zip(sim_gm, sub) if k == s_]
        print(f"  simulated {s_:12s} ({len(rows):3d}): EW(Hα) {summary(rows, 'EW_Ha')}  "
              f"D4000 {summary(rows, 'D4000')}")
    free = SpectrumMixSimulator(seed=args.seed + 3, mix={"GALAXY": 1}).sample(args.n)
    print(f"  simulated galaxy z when drawn by the simulator: median {np.median(free.z):.2f}, 16-84% "
          f"{np.percentile(free.z, 16):.2f}-{np.percentile(free.z, 84):.2f}")

    keys_agn = ("snr", "B/R", "R/I", "EW_Ha_broad", "EW_Hb", "D4000")
    za = np.repeat([z for _, z in agn], 40)
    sim_a = SpectrumMixSimulator(seed=args.seed + 2, mix={"AGN": 1}).sample(len(za), z=za)
    table("AGN: sdss/mixed QSO at z < 0.3 vs simulated AGN+host at the same redshifts", measure_files(agn),
          measure_batch(sim_a, range(len(za))), keys_agn)
    f = sim_a.params["host_fraction"]
    print(f"  simulated host fraction at 5100 Å: median {np.median(f):.2f}, 16-84% "
          f"{np.percentile(f, 16):.2f}-{np.percentile(f, 84):.2f}; "
          f"log L5100 median {np.median(sim_a.params['log_l5100']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
