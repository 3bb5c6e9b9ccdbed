"""FFT backend vs ONNX Runtime CPU, one run, same inputs: spectra/s and |Δv| between them.

    python benchmarks/bench_fft.py            # embedded model and the paper network (random weights), batch 32
    python benchmarks/bench_fft.py --batch 8 --repeats 3
    python benchmarks/bench_fft.py --profile  # also where the FFT backend's time goes (cProfile, paper network)

The paper network is exported with random weights (same cost as a trained one; needs torch for the
export only). Inputs are real dr16 spectra prepared as fnet-run prepares them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fnet.cli import default_model_path  # noqa: E402
from fnet.runtime.backends import open_backend  # noqa: E402
from fnet.runtime.fft_backend import FftBackend  # noqa: E402
from fnet.runtime.heads import decode  # noqa: E402
from fnet.runtime.model_package import load_model_package  # noqa: E402
from fnet.runtime.preprocess import prepare_spectra  # noqa: E402
from fnet.runtime.readers import read_spectra  # noqa: E402


def rate(run, x: np.ndarray, repeats: int) -> tuple[float, dict]:
    """Best-of-repeats spectra/s of run(x) after one warm-up call, and its outputs."""
    out = run(x[:2])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="cProfile one FFT run of the paper network")
    args = parser.parse_args()
    from bench_runtime import paper_package

    files = sorted((ROOT.parent / "shared" / "data" / "sdss" / "dr16").glob("spec-*.fits"))
    spectra = [read_spectra(f)[0] for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        models = [("embedded default (pooled4x)", default_model_path()), ("paper (random weights)", paper_package(Path(tmp)))]
        print(f"batch {args.batch}, best of {args.repeats}, one run")
        print(f"{'model':<30} {'onnxruntime/s':>14} {'fft/s':>8} {'ratio':>6} {'max |dv| km/s':>14}  fft")
        for name, path in models:
            package = load_model_package(path)
            x = prepare_spectra(spectra[: args.batch], package.grid, package.normalisation).x
            ort, fft = open_backend(package, "cpu"), FftBackend(package)
            r_ort, o_ort = rate(ort.run, x, args.repeats)
            r_fft, o_fft = rate(fft.run, x, args.repeats)
            a, b = decode(o_fft, package.head).z, decode(o_ort, package.head).z
            dv = float(np.max(299792.458 * np.abs(a - b) / (1 + b)))
            print(f"{name:<30} {r_ort:>14.1f} {r_fft:>8.1f} {r_fft / r_ort:>6.1f} {dv:>14.3f}  {fft.describe()}")
        paper = load_model_package(models[1][1])
        x = prepare_spectra(spectra[: args.batch], paper.grid, paper.normalisation).x
        exact = _exact_paper(x)
        z = 7.0 * exact
        for backend in (open_backend(paper, "cpu"), FftBackend(paper)):
            dv = 299792.458 * 7.0 * np.abs(backend.run(x)["z_scaled"][:, 0] - exact) / (1 + z)
            print(f"paper, {backend.describe():<28} max |dv| from the exact (float64) network: {dv.max():.3f} km/s")
        if args.profile:
            import cProfile
            import pstats

            fft = FftBackend(paper)
            fft.run(x[:2])
            profile = cProfile.Profile()
            profile.runcall(fft.run, x)
            pstats.Stats(profile).sort_stats("tottime").print_stats(8)
    return 0


def _exact_paper(x: np.ndarray) -> np.ndarray:
    """The paper network of bench_runtime.paper_package (same seed) in float64 torch: the exact reference."""
    import torch

    from fnet.runtime.grid import Grid
    from fnet.train.model import build_model

    torch.manual_seed(0)
    model = build_model("paper", {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0},
                        Grid(3.5522, 1e-4, 4618)).eval().double()
    with torch.no_grad():  # two at a time: torch's float64 CPU convolution unfolds k=500 kernels in memory
        return np.concatenate([model(torch.from_numpy(x[i:i + 2, None, :].astype(np.float64))).numpy()[:, 0]
                               for i in range(0, len(x), 2)])


if __name__ == "__main__":
    sys.exit(main())
