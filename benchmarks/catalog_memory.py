"""Peak memory of fnet-run's catalog path at 10^4..10^7 rows: the journal and the streaming writers.

    python benchmarks/catalog_memory.py                       # 1e5 and 1e6 rows, stub model; 1e4 rows, real model
    python benchmarks/catalog_memory.py --rows 10000000 --formats .fits

Each measurement runs in a fresh subprocess and reports its peak RSS (getrusage ru_maxrss):

- ``stub``: the real pipeline (run_items: input order, pending inputs, the run journal) and the real
  writers, with a synthetic reader (one 4,600-pixel spectrum per input, made once) and a predictor that
  returns a schema row without computing anything: what the catalog path costs per row;
- ``real``: the same with the embedded model's preprocessing and ONNX Runtime inference.

Memory must not grow with the number of rows: rows live on disk in OUTPUT.fnet-progress, the
writers hold 8,192 rows at a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(rows: int, mode: str, suffix: str, work: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import fnet.runtime.pipeline as pipeline
    from fnet.cli import default_model_path
    from fnet.runtime.backends import open_backend
    from fnet.runtime.catalog import make_row, write_catalog
    from fnet.runtime.inputs import InputItem
    from fnet.runtime.journal import RunJournal, run_fingerprint
    from fnet.runtime.model_package import load_model_package
    from fnet.runtime.spectrum import Spectrum

    loglam = 3.5530 + 1e-4 * np.arange(4600)
    rng = np.random.default_rng(0)
    flux = 5 + rng.normal(0, 1, loglam.size)
    template = Spectrum(source="", row=0, loglam=loglam, flux=flux, ivar=np.ones_like(flux),
                        good=np.ones(flux.size, bool), format="synthetic", meta={"PLATE": 1, "MJD": 2, "FIBERID": 3})

    def read(path):  # one spectrum per input, sharing the template's arrays (the reader is not measured)
        return [Spectrum(source=path, row=0, loglam=template.loglam, flux=template.flux, ivar=template.ivar,
                         good=template.good, format="synthetic", meta=dict(template.meta))]

    pipeline.read_spectra = read
    package = load_model_package(default_model_path())
    predictor = pipeline.Predictor(package, open_backend(package, "cpu"))
    if mode == "stub":
        def rows_only(spectra):
            return [(make_row(dict(SOURCE=s.source, ROW=0, FORMAT=s.format, Z=2.0, Z_ERR=0.01, ZWARN=0,
                                   STATUS="ok", MESSAGE="")), None) for s in spectra]
        predictor.rows = rows_only
    def items():  # a stream, as fnet-run expands its inputs
        return (InputItem(f"/survey/spectra/plate-{i // 1000:05d}/spec-{i:08d}.fits") for i in range(rows))

    out = Path(work) / f"catalog-{mode}-{rows}{suffix}"
    journal = RunJournal(out, run_fingerprint((i.path for i in items()), package.sha256, None))
    t0 = time.perf_counter()
    pipeline.run_items(items(), predictor, journal, total=rows, batch_size=64, read_workers=1)
    journal.close()
    t_run = time.perf_counter() - t0
    rss_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    write_catalog(out, journal.rows, {"FNETVER": "bench"})
    t_write = time.perf_counter() - t0
    size = journal.path.stat().st_size
    journal.remove()
    result = {"rows": rows, "mode": mode, "format": suffix, "run_s": round(t_run, 1), "write_s": round(t_write, 1),
              "peak_rss_mb_after_run": round(rss_run), "journal_mb": round(size / 2**20),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "catalog_mb": round(out.stat().st_size / 2**20)}
    out.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=None)
    parser.add_argument("--mode", choices=["stub", "real"], default=None)
    parser.add_argument("--formats", nargs="*", default=[".fits", ".csv", ".parquet"])
    parser.add_argument("--work", default="/tmp/fnet-memory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(_child(args.rows[0], args.mode, args.formats[0], args.work)))
        return 0
    plan = ([(n, args.mode or "stub") for n in args.rows] if args.rows else
            [(10**4, "real"), (10**5, "stub"), (10**6, "stub")])
    print(f"{'rows':>9} {'mode':<5} {'format':<9} {'run s':>7} {'write s':>8} {'peak RSS MB':>12} {'journal MB':>11} "
          f"{'catalog MB':>11}")
    for rows, mode in plan:
        for suffix in args.formats:
            proc = subprocess.run([sys.executable, __file__, "--child", "--rows", str(rows), "--mode", mode,
                                   "--formats", suffix, "--work", args.work], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:])
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{r['rows']:>9} {r['mode']:<5} {r['format']:<9} {r['run_s']:>7} {r['write_s']:>8} "
                  f"{r['peak_rss_mb']:>12} {r['journal_mb']:>11} {r['catalog_mb']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
