"""Runtime throughput on real files, every stage in one run so the ratios are comparable.

    python benchmarks/bench_runtime.py                      # embedded model, ../shared/data/sdss/dr16
    python benchmarks/bench_runtime.py --paper              # also the paper-size network (random weights)
    python benchmarks/bench_runtime.py --device cuda --batch-size 256

Stages: reading (files -> Spectrum), preprocessing (rebin + normalise), inference (backend only),
and the whole fnet-run pipeline (reading overlapped with inference). Prints spectra/s per stage
and writes a JSON record with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.cli import default_model_path  # noqa: E402
from fnet.runtime.backends import open_backend  # noqa: E402
from fnet.runtime.model_package import load_model_package  # noqa: E402
from fnet.runtime.pipeline import run_catalog  # noqa: E402
from fnet.runtime.preprocess import prepare_spectra  # noqa: E402
from fnet.runtime.readers import read_spectra  # noqa: E402


def best_of(fn, repeats: int) -> float:
    """Fastest wall time of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def paper_package(tmp: Path) -> Path:
    """Export the paper architecture with random weights (same cost as the trained one)."""
    import torch

    from fnet.export.onnx_export import export_graph, set_metadata
    from fnet.train.package import PackageInfo
    from fnet.runtime.grid import Grid
    from fnet.train.model import build_model

    grid = Grid(3.5522, 1e-4, 4618)
    head = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
    torch.manual_seed(0)
    model = build_model("paper", head, grid).eval()
    path = tmp / "paper-random.onnx"
    info = PackageInfo("paper-random-weights", "bench", "paper", grid, {"scheme": "zscore_minmax"}, head, (0.0, 7.0))
    export_graph(model, path, grid.npix, "z_scaled", "fp32")
    set_metadata(path, info.metadata("fp32"))
    return path


def bench_model(model_path: Path, files: list[Path], device: str, batch_size: int, threads: int | None,
                repeats: int) -> dict:
    """Per-stage throughput for one model package on the given files."""
    package = load_model_package(model_path)
    backend = open_backend(package, device=device, threads=threads)
    spectra = [s for f in files for s in read_spectra(f)]
    n = len(spectra)
    t_read = best_of(lambda: [read_spectra(f) for f in files], repeats)
    t_prep = best_of(lambda: prepare_spectra(spectra, package.grid, package.normalisation), repeats)
    x = prepare_spectra(spectra, package.grid, package.normalisation).x
    backend.run(x[:batch_size])  # warm-up: session initialisation, kernel selection

    def infer():
        for i in range(0, n, batch_size):
            backend.run(x[i:i + batch_size])
    t_infer = best_of(infer, repeats)
    t_all = best_of(lambda: run_catalog([str(f) for f in files], package, backend, batch_size=batch_size), repeats)
    return {"model": package.name, "architecture": package.architecture, "backend": backend.describe(),
            "n_spectra": n, "batch_size": batch_size,
            "read_per_s": n / t_read, "preprocess_per_s": n / t_prep, "inference_per_s": n / t_infer,
            "pipeline_per_s": n / t_all}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sdss" / "dr16"))
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--paper", action="store_true", help="also benchmark the paper-size network")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-files", type=int, default=16, help="files for the paper network (0.5 spectra/s on CPU)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    files = sorted(Path(args.data).glob("spec-*.fits"))
    if not files:
        sys.exit(f"no spec-*.fits files in {args.data}")
    models = [Path(args.model)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper:
            models.append(paper_package(Path(tmp)))
        rows = [bench_model(m, files if i == 0 else files[:args.paper_files], args.device, args.batch_size,
                            args.threads, args.repeats if i == 0 else 1) for i, m in enumerate(models)]
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"{len(files)} files from {args.data}; {machine['cpus']} CPUs; batch {args.batch_size}")
    print(f"{'model':<28}{'backend':<22}{'read/s':>9}{'prep/s':>9}{'infer/s':>10}{'pipeline/s':>12}")
    for r in rows:
        print(f"{r['model']:<28}{r['backend']:<22}{r['read_per_s']:>9.0f}{r['preprocess_per_s']:>9.0f}"
              f"{r['inference_per_s']:>10.1f}{r['pipeline_per_s']:>12.1f}")
    if len(rows) == 2:
        print(f"paper / {rows[0]['model']} inference time ratio: "
              f"{rows[0]['inference_per_s'] / rows[1]['inference_per_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
