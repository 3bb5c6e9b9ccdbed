"""Row by row, what two fnet-run catalogs of the same inputs share and where they differ.

    git show 51bf365:fnet/models/default.onnx > /tmp/2.1.0.onnx          # the default before its Z_ERR floor
    SETS="../shared/data/lamost/dr1 ../shared/data/sdss/dr16 ../shared/data/sdss/mixed ../shared/data/desi \
          ../shared/data/sdss/dr14-pk1d"
    fnet-run $SETS -o a.fits --model /tmp/2.1.0.onnx && fnet-run $SETS -o b.fits
    python benchmarks/compare_catalogs.py a.fits b.fits --json out.json

For every column both hold: identical or not (NaN equal to NaN); for a float column that differs, the ratio b / a
over the rows where both are finite and a is not 0 (min, median, max).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.runtime.catalog import read_catalog  # noqa: E402


def compare(a_path: str, b_path: str) -> dict:
    """{column: {"identical": bool, and for differing floats "ratio_min/median/max"}}, with the row counts."""
    a, b = read_catalog(a_path), read_catalog(b_path)
    if len(a) != len(b) or list(a["SOURCE"]) != list(b["SOURCE"]):
        raise SystemExit(f"{a_path} and {b_path} are not catalogs of the same inputs in the same order")
    out: dict = {"rows": len(a), "columns": {}}
    for name in [c for c in a.colnames if c in b.colnames]:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        floats = x.dtype.kind == "f" and y.dtype.kind == "f"
        same = bool(np.array_equal(x, y, equal_nan=True) if floats else np.array_equal(x, y))
        entry: dict = {"identical": same}
        if floats and not same:
            ok = np.isfinite(x) & np.isfinite(y) & (x != 0)
            r = y[ok] / x[ok]
            entry.update(rows_compared=int(ok.sum()), ratio_min=float(r.min()), ratio_median=float(np.median(r)),
                         ratio_max=float(r.max()))
        out["columns"][name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = compare(args.a, args.b)
    print(f"{result['rows']} rows")
    for name, entry in result["columns"].items():
        extra = (f"  b/a {entry['ratio_min']:.3g}-{entry['ratio_max']:.3g}, median {entry['ratio_median']:.3g} "
                 f"({entry['rows_compared']} rows)" if "ratio_median" in entry else "")
        print(f"{name:<12} {'identical' if entry['identical'] else 'differs'}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps({"a": args.a, "b": args.b, **result}, indent=1))


if __name__ == "__main__":
    main()
