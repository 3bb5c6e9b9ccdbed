"""fnet-run single-process vs `--ray local` with 1 and 2 inference actors on the same files, and Ray's overhead.

    python benchmarks/bench_ray.py                       # 320 simulated spec files (fnet.simulate)
    python benchmarks/bench_ray.py --n 1000 --batch-size 64
    python benchmarks/bench_ray.py --spectra '../shared/data/sdss/dr16/spec-*.fits'

Each end-to-end run is a fresh `fnet-run` process, timed from start to exit (imports, model load, Ray start-up
and shutdown included); "run s" is fnet-run's own figure for the inputs alone (its summary line). Overhead, in
this process: Ray start-up (ray.init of a local cluster with the machine's CPUs, plus the probe task that opens
the backend on a worker), the fixed cost of one Dataset (a one-file run: actor start, model load, pipeline
drain), the per-batch cost of the Ray pipeline itself (the same blocks and batches with the work replaced by
identity functions), and the same files again on the warm cluster (worker processes started: what a long run
sees after its first seconds). Needs `pip install 'fnet-qso[ray]'`. Run it on an idle machine: it uses every
core.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fnet_run(files_arg: list[str], out: Path, extra: list[str]) -> dict:
    cmd = ["fnet-run", *files_arg, "-o", str(out), "-q", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = re.search(r"(\d+) rows from (\d+) inputs in ([\d.]+) s", done.stderr)
    return {"wall_s": wall, "run_s": float(found.group(3)), "rows": int(found.group(1)),
            "inputs": int(found.group(2))}


def overheads(files: list[str], batch_size: int) -> dict:
    """Ray start-up, one Dataset's fixed cost, and the pipeline's own cost per batch, measured in this process."""
    import ray

    from fnet.cli import default_model_path
    from fnet.runtime import ray_run
    from fnet.runtime.model_package import load_model_package

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_init = time.perf_counter() - t0
    package = load_model_package(default_model_path())
    t0 = time.perf_counter()
    backend = ray_run.RayBackend("auto", package, threads=1, actors=1, quiet=True)
    t_probe = time.perf_counter() - t0

    from fnet.runtime.inputs import InputItem
    from fnet.runtime.pipeline import MemorySink, Predictor

    def one_run(paths: list[str]) -> float:
        t = time.perf_counter()
        backend.run_items([InputItem(p) for p in paths], Predictor(package, None), MemorySink(False),
                          batch_size=batch_size)
        return time.perf_counter() - t

    one_file = min(one_run(files[:1]) for _ in range(2))
    warm = {}  # every file again, the cluster and its worker processes already up
    for actors in (1, 2):
        backend = ray_run.RayBackend("auto", package, threads=1, actors=actors, quiet=True)
        warm[actors] = one_run(files)

    class Identity:
        def __call__(self, batch):
            return batch

    n_blocks = max(1, -(-len(files) // ray_run.FILES_PER_TASK))
    ds = ray.data.from_items([{"i": i, "rec": b"x" * 5000} for i in range(len(files))], override_num_blocks=n_blocks)
    ds = ds.map_batches(lambda b: b, batch_size=None, batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(Identity, batch_size=batch_size, batch_format="numpy", num_cpus=0.5,
                        compute=ray.data.ActorPoolStrategy(size=1))
    t = time.perf_counter()
    n_batches = sum(1 for _ in ds.iter_batches(batch_size=None))
    t_empty = time.perf_counter() - t
    t = time.perf_counter()
    ds2 = ray.data.from_items([{"i": 0, "rec": b"x"}]).map_batches(lambda b: b, batch_size=None, num_cpus=1)
    ds2 = ds2.map_batches(Identity, batch_size=batch_size, num_cpus=0.5, compute=ray.data.ActorPoolStrategy(size=1))
    list(ds2.iter_batches(batch_size=None))
    t_empty_one = time.perf_counter() - t
    ray.shutdown()
    return {"ray_init_s": t_init, "probe_s": t_probe, "one_file_dataset_s": one_file, "warm_run_s": warm,
            "identity_pipeline_s": t_empty, "identity_one_row_s": t_empty_one, "actor_batches": n_batches,
            "per_batch_ms": 1e3 * (t_empty - t_empty_one) / max(1, n_batches - 1),
            "ray_version": ray.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=320, help="simulated spec files (without --spectra)")
    parser.add_argument("--spectra", default=None, help="a glob of real files instead")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fnet-bench-ray-") as tmp:
        tmp = Path(tmp)
        if args.spectra:
            files = sorted(glob.glob(args.spectra))
        else:
            from fnet.simulate import write_simulated_set

            write_simulated_set(tmp / "sim", n=args.n, seed=1)
            files = sorted(str(p) for p in (tmp / "sim").glob("spec-*.fits"))
        listing = tmp / "inputs.txt"
        listing.write_text("\n".join(os.path.abspath(f) for f in files) + "\n")
        files_arg = [f"@{listing}"]
        b = ["--batch-size", str(args.batch_size)]
        runs = {}
        for name, out, extra in (
                ("single process (defaults: 2 read threads, all-core inference)", "single", []),
                ("single process, --threads 1", "single1", ["--threads", "1"]),
                ("--ray local, 1 actor", "ray1", ["--ray", "local", "--ray-actors", "1"]),
                ("--ray local, 2 actors", "ray2", ["--ray", "local", "--ray-actors", "2"])):
            runs[name] = fnet_run(files_arg, tmp / f"{out}.fits", b + extra)
        from fnet.runtime.catalog import read_catalog

        ref = np.asarray(read_catalog(tmp / "single1.fits")["Z"])
        for name, out in zip(runs, ("single", "single1", "ray1", "ray2")):
            z = np.asarray(read_catalog(tmp / f"{out}.fits")["Z"])
            ok = np.isfinite(ref)
            runs[name]["max_dv_kms"] = float(np.max(299792.458 * np.abs(z[ok] - ref[ok]) / (1 + ref[ok]), initial=0))
        over = overheads(files, args.batch_size)

    n = len(files)
    print(f"{n} files ({'simulated' if not args.spectra else args.spectra}), batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, Ray {over['ray_version']}, embedded model, ONNX Runtime CPU")
    print(f"{'run':<62} {'wall s':>7} {'files/s':>8} {'run s':>6} {'run files/s':>11} {'max|dv| km/s':>12}")
    for name, r in runs.items():
        print(f"{name:<62} {r['wall_s']:7.2f} {n / r['wall_s']:8.1f} {r['run_s']:6.2f} {n / r['run_s']:11.1f} "
              f"{r['max_dv_kms']:12.3g}")
    print(f"Ray start-up: ray.init {over['ray_init_s']:.2f} s + backend probe task {over['probe_s']:.2f} s; one "
          f"Dataset's fixed cost (a 1-file run: actors, model load, drain) {over['one_file_dataset_s']:.2f} s; "
          f"pipeline cost per batch {over['per_batch_ms']:.1f} ms ({over['actor_batches']} batches of "
          f"{args.batch_size} in {over['identity_pipeline_s']:.2f} s with identity stages, "
          f"{over['identity_one_row_s']:.2f} s for one row)")
    print("warm cluster (worker processes already started, in this process): "
          + ", ".join(f"{a} actor{'s' if a > 1 else ''} {t:.2f} s ({n / t:.1f} files/s)"
                      for a, t in over["warm_run_s"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"n_files": n, "batch_size": args.batch_size, "runs": runs,
                                               "overhead": over, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
