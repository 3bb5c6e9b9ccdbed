"""Training speed with FFT convolutions (fnet.train.fft_conv) against torch's direct Conv1d, in one run.

    python benchmarks/bench_train_fft.py                       # paper, lite4x, lite4x_w16; off / on / auto
    python benchmarks/bench_train_fft.py --arch lite4x --steps 1          # a smoke test (seconds)
    python benchmarks/bench_train_fft.py --layers              # single layers: direct vs FFT (custom / torch autograd)

A training step is what fnet-train does per batch: forward, regression loss, backward, gradient
clipping at 1000, one Adam step, on random inputs of the arch's npix. Each (arch, mode) gets one
warm-up step and then ``--steps`` timed steps; spectra/s is batch / the fastest step (best-of, so
another process on the machine costs less). The direct paper network trains at ~0.2 spectra/s on 2
cores, so its default is batch 4 and 2 timed steps (about a minute for mode "off"); the table says
which batch and steps each row used. ``--layers`` times forward+backward of each distinct
convolution of the three archs three ways, the measurement behind fft_conv.AUTO_MIN_KERNEL.
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

from fnet.runtime.grid import Grid  # noqa: E402
from fnet.train.fft_conv import AUTO_RULE, convert_convolutions, fft_conv1d, fft_length  # noqa: E402
from fnet.train.heads import head_loss  # noqa: E402
from fnet.train.model import ARCHS, build_model  # noqa: E402

HEAD = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}
NPIX = {1e-4: 4618, 4e-4: 1155}
DEFAULTS = {"paper": (4, 2), "lite4x": (32, 3), "lite4x_w16": (32, 3)}  # (batch, timed steps)
MODES = ("off", "on", "auto")


def step_time(arch: str, mode: str, batch: int, steps: int) -> tuple[float, int]:
    """(fastest of `steps` timed training steps in seconds, number of FFT convolutions) for one arch and mode."""
    spec = ARCHS[arch]
    grid = Grid(3.5522, spec.loglam_step, NPIX[spec.loglam_step])
    torch.manual_seed(0)
    model = build_model(arch, HEAD, grid).train()
    n_fft = convert_convolutions(model, mode, "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)
    x, target = torch.randn(batch, 1, grid.npix), torch.rand(batch, 1)
    best = float("inf")
    for i in range(steps + 1):  # the first step warms up allocator and FFT plans
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = head_loss(model(x), target, HEAD)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
        optimizer.step()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best, n_fft


def _autograd_fft(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """The same FFT convolution left to torch.fft's autograd (what the custom backward is measured against)."""
    k, length = w.shape[-1], x.shape[-1]
    n = fft_length(length, k, p)
    xf = torch.fft.rfft(F.pad(x, (p, 0)), n).permute(2, 0, 1)
    wf = torch.fft.rfft(w, n).conj().permute(2, 1, 0)
    return torch.fft.irfft(torch.matmul(xf, wf).permute(1, 2, 0), n)[..., :length + 2 * p - k + 1] + b[:, None]


def layer_times(archs: list[str], batch: int, repeats: int) -> None:
    """Print forward+backward milliseconds of each distinct convolution of `archs` three ways."""
    print(f"{'arch':<11} {'c_in':>4} {'c_out':>5} {'k':>4} {'pad':>4} {'L':>5} {'B':>3} "
          f"{'direct ms':>10} {'fft ms':>8} {'autograd ms':>12} {'direct/fft':>10}")
    for arch in archs:
        spec = ARCHS[arch]
        length = NPIX[spec.loglam_step]
        b = batch if arch != "paper" else max(1, batch // 4)  # the direct paper layers take seconds each
        with torch.device("meta"):
            model = build_model(arch, HEAD, Grid(3.5522, spec.loglam_step, length))
        layers = sorted({(m.in_channels, m.out_channels, m.kernel_size[0], m.padding[0]) for m in model.modules()
                         if isinstance(m, torch.nn.Conv1d) and m.kernel_size[0] > 1})
        for c_in, c_out, k, p in layers:
            x = torch.randn(b, c_in, length, requires_grad=True)
            w = torch.randn(c_out, c_in, k, requires_grad=True)
            bias = torch.randn(c_out, requires_grad=True)
            times = []
            for fn in (lambda: F.conv1d(x, w, bias, padding=p), lambda: fft_conv1d(x, w, bias, p),
                       lambda: _autograd_fft(x, w, bias, p)):
                best = float("inf")
                for i in range(repeats + 1):
                    t0 = time.perf_counter()
                    y = fn()
                    y.backward(torch.ones_like(y))
                    if i:
                        best = min(best, time.perf_counter() - t0)
                times.append(best * 1e3)
            print(f"{arch:<11} {c_in:>4} {c_out:>5} {k:>4} {p:>4} {length:>5} {b:>3} "
                  f"{times[0]:>10.2f} {times[1]:>8.2f} {times[2]:>12.2f} {times[0] / times[1]:>10.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(DEFAULTS), choices=list(DEFAULTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per (arch, mode) (default: per arch)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 4 for paper, 32 otherwise)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--layers", action="store_true", help="time single convolutions instead of training steps")
    parser.add_argument("--repeats", type=int, default=3, help="--layers: timed repeats per layer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; auto rule: {AUTO_RULE}")
    if args.layers:
        layer_times(args.arch, args.batch or 16, args.repeats)
        return 0
    print("training spectra/s (forward + backward + Adam step, random inputs; best of the timed steps)")
    header = f"{'arch':<11} {'batch':>5} {'steps':>5} " + " ".join(f"{m:>9}" for m in args.modes)
    header += "".join(f" {m + '/off':>9}" for m in args.modes if m != "off" and "off" in args.modes)
    header += f" {'fft convs (auto)':>17}" if "auto" in args.modes else ""
    print(header)
    for arch in args.arch:
        batch = args.batch or DEFAULTS[arch][0]
        steps = max(1, args.steps or DEFAULTS[arch][1])
        rate, n_fft = {}, {}
        for mode in args.modes:
            best, n_fft[mode] = step_time(arch, mode, batch, steps)
            rate[mode] = batch / best
        line = f"{arch:<11} {batch:>5} {steps:>5} " + " ".join(f"{rate[m]:>9.2f}" for m in args.modes)
        line += "".join(f" {rate[m] / rate['off']:>9.1f}" for m in args.modes if m != "off" and "off" in rate)
        line += f" {n_fft['auto']:>17}" if "auto" in n_fft else ""
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
