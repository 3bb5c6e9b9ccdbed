"""How much error FP16 arithmetic adds to one FNet convolution, per accumulation model (fnet.export.fp16_emulation).

    python benchmarks/fp16_accumulation.py [--n 2] [--unit 2]

The paper network (He-normal weights, BatchNorm at its initial state; untrained: the point is the arithmetic,
not the answer), real DR16 spectra on the paper grid; the input of residual unit `--unit` is computed in
float64, then that unit's k=500 convolution (32 -> 32 channels, a reduction of 16,000 products per output)
is evaluated by each model and compared with float64: relative rms error = rms(y - y64) / rms(y64).

- fp32 accumulation: FP16 input and weights, products summed in FP32, output rounded to FP16 (the gate's model);
- FP16 partial sums in chunks of 16 (one HMMA k-step), and chunk 1 (naive FP16 accumulation).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.export.fp16_emulation import _conv_fp16_partials, _fp16  # noqa: E402
from fnet.runtime.constants import PAPER_GRID as PAPER  # noqa: E402
from fnet.runtime.grid import Grid  # noqa: E402
from fnet.runtime.preprocess import prepare_spectra  # noqa: E402
from fnet.runtime.readers import read_spectra  # noqa: E402
from fnet.train.model import build_model  # noqa: E402

DR16 = ROOT.parent / "shared" / "data" / "sdss" / "dr16"
PAPER_GRID = Grid.from_dict(PAPER)
HEAD = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2, help="real spectra")
    parser.add_argument("--unit", type=int, default=2, help="residual unit whose first (k=500) convolution is measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted(DR16.glob("spec-*.fits"))[:args.n]
    x = prepare_spectra([read_spectra(f)[0] for f in files], PAPER_GRID, NORM).x
    torch.manual_seed(args.seed)
    net = build_model("paper", HEAD, PAPER_GRID).eval().double()
    with torch.inference_mode():
        h = torch.from_numpy(x[:, None, :]).double()
        for unit in net.features[:args.unit - 1]:
            h = unit(h)
        conv = net.features[args.unit - 1].conv1
        y64 = conv(h)
        conv32 = torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0], padding=conv.padding[0])
        conv32.weight.data = _fp16(conv.weight.float())
        conv32.bias.data = _fp16(conv.bias.float())
        h16 = _fp16(h.float())

        def rel(y: torch.Tensor) -> float:
            return float(torch.sqrt(torch.mean((y.double() - y64) ** 2)) / torch.sqrt(torch.mean(y64 ** 2)))

        print(f"unit {args.unit} conv1: {conv.in_channels} -> {conv.out_channels} channels, k={conv.kernel_size[0]}, "
              f"{len(files)} real spectra; input rms {float(h.pow(2).mean().sqrt()):.3g}, "
              f"output rms {float(y64.pow(2).mean().sqrt()):.3g}")
        print(f"{'model':<34} {'rel. rms error':>14} {'seconds':>8}")
        rows = [("fp32 inputs, fp32 accumulation", lambda: F.conv1d(h.float(), conv.weight.float(), conv.bias.float(),
                                                                       padding=conv.padding[0])),
                ("fp16 values, fp32 accumulation", lambda: _fp16(conv32(h16))),
                ("fp16 partial sums, chunks of 16", lambda: _fp16(_conv_fp16_partials(conv32, h16, 16))),
                ("fp16 partial sums, chunk 1", lambda: _fp16(_conv_fp16_partials(conv32, h16, 1)))]
        for name, fn in rows:
            start = time.perf_counter()
            y = fn()
            print(f"{name:<34} {rel(y):>14.3g} {time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
