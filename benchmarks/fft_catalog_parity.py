"""fnet-run --backend fft against --backend onnxruntime on every real file in ../shared/data, torch not importable.

    python benchmarks/fft_catalog_parity.py                 # embedded model, all files (a few minutes)
    python benchmarks/fft_catalog_parity.py --paper 80      # also the paper network (random weights) on 80 dr16 files

Both runs go through the fnet-run command in a child process where `import torch` raises, and the two
catalogs are compared row by row: same sources and order, same STATUS and ZWARN, and the largest
|Δv| = c |Z_fft - Z_ort| / (1 + Z_ort) over the rows both fitted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fnet.runtime.catalog import read_catalog  # noqa: E402

BLOCKER = "raise ImportError('torch is deliberately unavailable here')\n"


def run_torch_free(inputs: list[str], model: Path | None, output: Path, backend: str, blocked: Path) -> float:
    """fnet-run in a child process that cannot import torch; returns its wall time."""
    args = [*inputs, "-o", str(output), "--backend", backend, "--quiet"] + (["--model", str(model)] if model else [])
    script = ("import sys\ntry:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    sys.exit('torch imported')\n"
              f"from fnet.cli import run_command\nrun_command({args!r})\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(ROOT)]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1) or not output.is_file():  # 1: a catalog with failed rows (unreadable files)
        raise SystemExit(f"fnet-run --backend {backend} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def compare(a: Path, b: Path) -> dict:
    """Row-by-row agreement of two catalogs of the same inputs."""
    ca, cb = read_catalog(a), read_catalog(b)
    same_rows = len(ca) == len(cb) and list(ca["SOURCE"]) == list(cb["SOURCE"])
    status_a, status_b = (np.char.strip(np.asarray(c["STATUS"]).astype(str)) for c in (ca, cb))
    ok = (status_a == "ok") & (status_b == "ok")
    za, zb = np.asarray(ca["Z"], float)[ok], np.asarray(cb["Z"], float)[ok]
    dv = 299792.458 * np.abs(za - zb) / (1 + zb)
    return {"rows": len(ca), "same_rows": same_rows, "fitted": int(ok.sum()),
            "same_status": bool(np.array_equal(status_a, status_b)),
            "same_zwarn": bool(np.array_equal(np.asarray(ca["ZWARN"]), np.asarray(cb["ZWARN"]))),
            "max_abs_dv_kms": float(dv.max()) if dv.size else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", type=int, default=0, metavar="N", help="also the paper network on N dr16 files")
    args = parser.parse_args()
    data = ROOT.parent / "shared" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "blocked" / "torch").mkdir(parents=True)
        (tmp / "blocked" / "torch" / "__init__.py").write_text(BLOCKER)
        jobs = [("embedded default (pooled4x)", None, [str(data)])]
        if args.paper:
            from bench_runtime import paper_package  # the export needs torch: done here, before the torch-free runs

            files = sorted((data / "sdss" / "dr16").glob("spec-*.fits"))[: args.paper]
            jobs.append(("paper (random weights)", paper_package(tmp), [str(f) for f in files]))
        for name, model, inputs in jobs:
            times = {b: run_torch_free(inputs, model, tmp / f"{b}.fits", b, tmp / "blocked") for b in ("onnxruntime", "fft")}
            result = compare(tmp / "fft.fits", tmp / "onnxruntime.fits")
            print(f"{name}: {result['rows']} rows ({result['fitted']} fitted by both), same rows and order: "
                  f"{result['same_rows']}, same STATUS: {result['same_status']}, same ZWARN: {result['same_zwarn']}, "
                  f"max |dv| {result['max_abs_dv_kms']:.4f} km/s; wall time onnxruntime {times['onnxruntime']:.1f} s, "
                  f"fft {times['fft']:.1f} s (torch not importable in either run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
