"""Reading a file with a long tail after its last HDU: seconds and peak RSS, each in a fresh process.

    python benchmarks/bench_tails.py          # a DESI coadd + 4 GiB sparse zero tail, and + 1 GiB of zeros gzipped

The files are made under /tmp from ../shared/data/desi/coadd-main-dark-9144.fits (the sparse one takes
no disk space) and removed afterwards.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "desi" / "coadd-main-dark-9144.fits"
CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from fnet.runtime.readers import read_spectra
t0 = time.perf_counter()
spectra = read_spectra(sys.argv[1])
print(json.dumps({{"seconds": time.perf_counter() - t0, "spectra": len(spectra), "note": (spectra[0].notes or ["-"])[-1],
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> int:
    data = SOURCE.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        sparse, packed, plain = Path(tmp) / "tail.fits", Path(tmp) / "tail.fits.gz", Path(tmp) / "plain.fits"
        plain.write_bytes(data)
        with open(sparse, "wb") as fh:
            fh.write(data)
            fh.truncate(len(data) + (4 << 30))
        with gzip.open(packed, "wb", compresslevel=1) as fh:
            fh.write(data)
            zeros = bytes(1 << 24)
            for _ in range(64):
                fh.write(zeros)
        print(f"{'file':<34} {'seconds':>8} {'peak RSS MB':>12}  note")
        for name, path in (("DESI coadd as is", plain), ("+ 4 GiB sparse zero tail", sparse),
                           ("+ 1 GiB of zeros, gzip", packed)):
            proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(path)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name:<34} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}  {r['note'][:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
