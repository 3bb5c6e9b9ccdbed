"""Run fnet-run over a large fuzz corpus in many modes and print the catalog-contract checks.

    python benchmarks/fuzz_corpus.py                      # ~1,300 inputs from ../shared/data, 12 modes
    python benchmarks/fuzz_corpus.py --per-folder 1 --modes 2   # quick look
    python benchmarks/fuzz_corpus.py --huge               # also a 4 GiB sparse tail and 1 GiB of gzip zeros

Each mode runs the real command line (a subprocess, so a hang is caught by its timeout) on the whole
corpus and checks, with fnet.fuzz.check_contract: a row for every input in input order, no ok row with
a non-finite Z or Z_ERR, a message on every failed row, no message over the cap, container-only
mutants (gzip, link, odd name, zero tail, reordered HDUs) giving exactly their source's Z or failing,
must-fail mutants failing; plus exit code 0/1 (never a traceback, never 3) and no hang.
The corpus is written under --work (default /tmp/fnet-fuzz), never into the repository.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet import fuzz  # noqa: E402
from fnet.runtime.catalog import read_catalog  # noqa: E402
from fnet.runtime.inputs import expand_inputs  # noqa: E402

# (name, extra fnet-run arguments, output suffix, inputs given as the folder instead of an @list)
MODES = [
    ("b64-fits", ["-b", "64"], ".fits", False),
    ("b1-csv", ["-b", "1"], ".csv", False),
    ("b7-parquet", ["-b", "7"], ".parquet", False),
    ("b256-fitsgz", ["-b", "256"], ".fits.gz", False),
    ("folder-b64", ["-b", "64"], ".fits", True),
    ("workers1-b16", ["-b", "16", "--read-workers", "1"], ".fits", False),
    ("workers8-b32", ["-b", "32", "--read-workers", "8"], ".csv", False),
    ("threads1-b64", ["-b", "64", "--threads", "1"], ".parquet", False),
    ("save-pdf", ["-b", "64", "--save-pdf"], ".fits", False),
    ("folder-csv-b3", ["-b", "3"], ".csv", True),
    ("b1000-fits", ["-b", "1000"], ".fits", False),
    ("workers4-b5-pdf", ["-b", "5", "--read-workers", "4", "--save-pdf"], ".fits.gz", False),
]
RUN = "import sys; from fnet.cli import run_command; sys.argv = ['fnet-run'] + sys.argv[1:]; run_command()"


def _rows(path: Path) -> list[dict]:
    table = read_catalog(path)
    names = table.colnames
    return [{n: (str(row[n]) if n in ("SOURCE", "STATUS", "MESSAGE", "FORMAT") else row[n]) for n in names}
            for row in table]


def _huge(work: Path, mutants: list[fuzz.Mutant]) -> None:
    """A DESI coadd with a 4 GiB sparse zero tail and a gzip copy with 1 GiB of zeros after it."""
    import gzip

    src = ROOT.parent / "shared" / "data" / "desi" / "coadd-main-dark-9144.fits"
    data = src.read_bytes()
    sparse = work / "huge-sparse-tail.fits"
    with open(sparse, "wb") as fh:
        fh.write(data)
        fh.truncate(len(data) + (4 << 30))
    packed = work / "huge-gzip-zeros.fits.gz"
    with gzip.open(packed, "wb", compresslevel=1) as fh:
        fh.write(data)
        zeros = bytes(1 << 24)
        for _ in range(64):
            fh.write(zeros)
    original = work / "huge-orig.fits"
    original.write_bytes(data)
    mutants += [fuzz.Mutant(str(original), str(original), "original", fuzz.SAME),
                fuzz.Mutant(str(sparse), str(original), "sparse-4GiB-tail", fuzz.SAME),
                fuzz.Mutant(str(packed), str(original), "gzip-1GiB-zeros", fuzz.SAME)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default="/tmp/fnet-fuzz")
    parser.add_argument("--per-folder", type=int, default=5, help="real source files per data folder")
    parser.add_argument("--modes", type=int, default=len(MODES), help="how many of the 12 modes to run")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per mode before it counts as a hang")
    parser.add_argument("--huge", action="store_true", help="add the 4 GiB / 1 GiB tail files")
    args = parser.parse_args()

    work = Path(args.work)
    t0 = time.perf_counter()
    mutants = fuzz.make_corpus(fuzz.default_sources(args.shared, args.per_folder), work / "corpus", seed=0)
    if args.huge:
        _huge(work / "corpus", mutants)
    listing = fuzz.write_list(mutants, work / "corpus.txt")
    kinds = sorted({m.kind for m in mutants})
    print(f"corpus: {len(mutants)} inputs, {len(kinds)} kinds, made in {time.perf_counter() - t0:.0f} s "
          f"({work / 'corpus'})")
    folder_order = {m.path: m for m in mutants}
    walked = [folder_order[i.path] for i in expand_inputs([str(work / "corpus")]) if i.path in folder_order]

    print(f"{'mode':<18} {'exit':>4} {'inputs':>6} {'rows':>6} {'failed':>6} {'seconds':>8} {'problems':>8}")
    all_ok = True
    for name, extra, suffix, as_folder in MODES[: args.modes]:
        out = work / f"catalog-{name}{suffix}"
        for stale in (out, Path(str(out) + ".fnet-progress")):
            stale.unlink(missing_ok=True)
        inputs = [str(work / "corpus")] if as_folder else [f"@{listing}"]
        cmd = [sys.executable, "-c", RUN, *inputs, "-o", str(out), "-q", *extra]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, stderr = "hang", ""
        seconds = time.perf_counter() - started
        problems = []
        if code not in (0, 1):
            problems.append(f"exit code {code}: {stderr[-400:]}")
        if "Traceback" in stderr:
            problems.append("traceback on stderr")
        rows = _rows(out) if out.exists() else []
        if not out.exists():
            problems.append("no catalog written")
        else:
            expected = walked if as_folder else mutants
            problems += fuzz.check_contract(expected, rows)
        failed = sum(r["STATUS"] != "ok" for r in rows)
        n_inputs = len(walked if as_folder else mutants)
        print(f"{name:<18} {code!s:>4} {n_inputs:>6} {len(rows):>6} {failed:>6} {seconds:>8.1f} {len(problems):>8}")
        for line in problems[:10]:
            print(f"    {line}")
        all_ok &= not problems
    print("contract holds in every mode" if all_ok else "CONTRACT BROKEN (see above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
