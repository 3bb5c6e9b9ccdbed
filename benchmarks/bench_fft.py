"""FFT backend vs ONNX Runtime CPU, one run, same inputs: spectra/s and |Δv| between them.

    python benchmarks/bench_fft.py            # embedded model and the paper network (random weights), batch 32
    python benchmarks/bench_fft.py --batch 8 --repeats 3
    python benchmarks/bench_fft.py --profile  # also where the FFT backend's time goes (per stage, paper network)
    python benchmarks/bench_fft.py --conv-rule  # measure the FFT/direct cost constants of fnet.runtime.fft_conv
    python benchmarks/bench_fft.py --engines    # the paper network through each installed CPU FFT engine, one run
    python benchmarks/bench_fft.py --lengths    # FFT sizes 4626-5120 (ducc0, torch), then the paper network: old vs new lengths
    python benchmarks/bench_fft.py --precision  # paper network: where the float32 error against float64 comes from

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
from fnet.metrics import velocity_offsets  # noqa: E402


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
    parser.add_argument("--profile", action="store_true", help="where one FFT run of the paper network spends its time")
    parser.add_argument("--conv-rule", action="store_true", help="time single convolutions both ways, fit CONV_RULE")
    parser.add_argument("--engines", action="store_true", help="the paper network through each CPU FFT engine")
    parser.add_argument("--lengths", action="store_true", help="r2c + c2r time of each 7-smooth size 4626..5120")
    parser.add_argument("--precision", action="store_true",
                        help="paper network: |dv| from float64 of ORT, the FFT backend, and its steps in float64")
    args = parser.parse_args()
    if args.lengths:
        lengths(args.batch, args.repeats)
    if args.conv_rule:
        return conv_rule(args.batch)
    from bench_runtime import paper_package

    files = sorted((ROOT.parent / "shared" / "data" / "sdss" / "dr16").glob("spec-*.fits"))
    spectra = [read_spectra(f)[0] for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        if args.lengths:
            return length_rules(load_model_package(paper_package(Path(tmp))), spectra, args.batch, max(args.repeats, 3))
        if args.precision:
            return precision(load_model_package(paper_package(Path(tmp))), spectra[:24])
        if args.engines:
            return engines(load_model_package(paper_package(Path(tmp))), spectra, args.batch, args.repeats)
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
            dv = float(np.max(np.abs(velocity_offsets(a, b))))
            print(f"{name:<30} {r_ort:>14.1f} {r_fft:>8.1f} {r_fft / r_ort:>6.1f} {dv:>14.3f}  {fft.describe()}")
        paper = load_model_package(models[1][1])
        x = prepare_spectra(spectra[: args.batch], paper.grid, paper.normalisation).x
        exact = _exact_paper(x)
        for backend in (open_backend(paper, "cpu"), FftBackend(paper)):
            dv = _dv_from_exact(backend.run(x), exact)
            print(f"paper, {backend.describe():<28} max |dv| from the exact (float64) network: {dv.max():.3f} km/s")
        if args.profile:
            profile(FftBackend(paper), x)
    return 0


def _dv_from_exact(outputs: dict, exact: np.ndarray) -> np.ndarray:
    """|dv| in km/s of the paper network's regression output (z / 7) from the float64 network's."""
    return np.abs(velocity_offsets(7.0 * outputs["z_scaled"][:, 0], 7.0 * exact))


def engines(paper, spectra, batch: int, repeats: int) -> int:
    """Spectra/s of the paper network through the FFT backend with each installed CPU FFT engine, one run."""
    from fnet.runtime.fft_conv import FFT_ENGINES

    x = prepare_spectra(spectra[:batch], paper.grid, paper.normalisation).x
    rows = []
    for first in FFT_ENGINES:
        backend = FftBackend(paper, fft_engine=first)
        rows.append((backend.describe(), *rate(backend.run, x, repeats)))
    exact = _exact_paper(x)  # after the timing: torch's idle threads would compete with the FFT backend's
    print(f"paper network (random weights), batch {batch}, best of {repeats}, one run")
    for name, speed, out in rows:
        dv = _dv_from_exact(out, exact)
        print(f"  {name:<34} {speed:7.1f} spectra/s   max |dv| from float64 {dv.max():.3f} km/s")
    return 0


def profile(backend: FftBackend, x: np.ndarray) -> None:
    """Wall time per stage of one run (FFT, channel mixing, padding copy, direct convolutions, other ops)."""
    from fnet.runtime import fft_conv

    totals: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
        return wrapper
    ops = backend.ops
    ops.rfft, ops.irfft = timed("rfft", ops.rfft), timed("irfft", ops.irfft)
    saved = fft_conv.Conv1d._padded, fft_conv.Conv1d._direct, fft_conv.Conv1d._mix
    fft_conv.Conv1d._padded = timed("zero-padded copy (+fused ReLU)", fft_conv.Conv1d._padded)
    fft_conv.Conv1d._direct = timed("direct (1x1) convolutions", fft_conv.Conv1d._direct)
    fft_conv.Conv1d._mix = timed("mixing", fft_conv.Conv1d._mix)
    backend.plan = [(node, step if node.op_type == "Conv" else timed(f"op {node.op_type}", step))
                    for node, step in backend.plan]
    try:
        backend.run(x)
        totals.clear()
        start = time.perf_counter()
        backend.run(x)
        total = time.perf_counter() - start
    finally:
        fft_conv.Conv1d._padded, fft_conv.Conv1d._direct, fft_conv.Conv1d._mix = saved
    print(f"\nwhere one batch of {len(x)} goes ({total * 1e3:.0f} ms, {len(x) / total:.1f} spectra/s):")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<34} {seconds * 1e3:8.1f} ms  {seconds / total:6.1%}")
    rest = total - sum(totals.values())
    print(f"  {'rest (bias, graph walk, Python)':<34} {rest * 1e3:8.1f} ms  {rest / total:6.1%}")
    _mixing_against_one_gemm(backend, len(x))


def _mixing_against_one_gemm(backend: FftBackend, batch: int) -> None:
    """One core's sgemm on a 32 -> 32 layer's mixing (2,451 (B x 64) x (64 x 64) products) and on one GEMM of
    the same work: whether the mixing is bound by arithmetic or by the number of BLAS calls."""
    rng = np.random.default_rng(0)
    frequencies, width = 2451, 64
    a = rng.standard_normal((frequencies, batch, width)).astype(np.float32)
    w = rng.standard_normal((frequencies, width, width)).astype(np.float32)
    y = np.empty((frequencies, batch, width), np.float32)
    flop = 2.0 * frequencies * batch * width * width
    with backend.ops.blas_limit():
        stacked = _best(lambda: np.matmul(a, w, out=y), 10)
        single = _best(lambda: np.matmul(a.reshape(-1, width), w[0], out=y.reshape(-1, width)), 10)
    print(f"one core's sgemm on one layer's mixing ({flop / 1e9:.2f} GFLOP): {frequencies} small GEMMs "
          f"{flop / stacked / 1e9:.0f} GFLOP/s, one large GEMM {flop / single / 1e9:.0f} GFLOP/s")


def lengths(batch: int, repeats: int) -> None:
    """Forward + inverse real FFT of (batch, 32 channels, n) for each 7-smooth n the paper's layers may use.

    Behind fnet.runtime.fft_conv.next_fast_length: the runtime (ducc0, channels-last) takes the smallest
    even size, training (torch) sizes with at least 2^4 in them; odd sizes are listed to show why not them.
    """
    from fnet.runtime.fft_conv import next_fast_length

    sizes, n = [], 4626
    while n <= 5120:
        sizes.append(next_fast_length(n, twos=0))
        n = sizes[-1] + 1
    timers = {}
    try:
        import ducc0

        def with_ducc(n: int):
            x = np.random.default_rng(0).standard_normal((batch, n, 32)).astype(np.float32)
            z, back = np.empty((batch, n // 2 + 1, 32), np.complex64), np.empty_like(x)
            return lambda: (ducc0.fft.r2c(x, axes=(1,), forward=True, out=z, nthreads=2),
                            ducc0.fft.c2r(z, axes=(1,), lastsize=n, forward=False, inorm=2, out=back, nthreads=2))
        timers[f"ducc0 {ducc0.__version__} (B, n, 32)"] = with_ducc
    except ImportError:
        pass
    try:
        import torch

        def with_torch(n: int):
            x = torch.randn(batch, 32, n)
            return lambda: torch.fft.irfft(torch.fft.rfft(x, dim=-1), n=n, dim=-1)
        timers[f"torch {torch.__version__} (B, 32, n)"] = with_torch
    except ImportError:
        pass
    print(f"batch {batch}, 32 channels; ms for rfft + irfft, best of {max(repeats, 5)} (ns per point)")
    print(f"{'n':>5} {'2^a':>4}  " + "  ".join(f"{name:>34}" for name in timers))
    for n in sizes:
        twos = (n & -n).bit_length() - 1
        cells = []
        for make in timers.values():
            seconds = _best(make(n), max(repeats, 5))
            cells.append(f"{seconds * 1e3:>24.2f} ({seconds / (batch * 32 * n) * 1e9:5.2f} ns)")
        print(f"{n:>5} {twos:>4}  " + "  ".join(cells))


def length_rules(paper, spectra, batch: int, rounds: int) -> int:
    """The paper network through the FFT backend with this version's FFT lengths and with the previous rule, one run.

    Previous rule: the smallest 5-smooth n >= input + both pads (5120 / 4860 / 4800 for the k=500/200/15
    layers); now: fft_conv.fft_length (4900 / 4800 / 4704). Rounds alternate the order; best and median
    seconds per batch are printed.
    """
    from fnet.runtime import fft_conv

    def previous(length: int, k: int, pads: tuple[int, int], twos: int = 1) -> int:
        n = length + sum(pads)
        while not _five_smooth(n):
            n += 1
        return n

    current = fft_conv.fft_length
    x = prepare_spectra(spectra[:batch], paper.grid, paper.normalisation).x
    backend = FftBackend(paper)
    times: dict[str, list[float]] = {"previous (5-smooth >= L + both pads)": [], "current (fft_length)": []}
    try:
        for r in range(rounds + 1):
            for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
                fft_conv.fft_length = previous if name.startswith("previous") else current
                t0 = time.perf_counter()
                backend.run(x)
                if r:  # round 0 warms both up (kernel spectra per length, buffers)
                    times[name].append(time.perf_counter() - t0)
    finally:
        fft_conv.fft_length = current
    print(f"\npaper network, batch {batch}, {rounds} alternating rounds, one run (seconds per batch)")
    for name, t in times.items():
        print(f"  {name:<40} best {min(t):.3f}  median {float(np.median(t)):.3f}  ({batch / min(t):.1f} spectra/s best)")
    return 0


def _five_smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def precision(paper, spectra) -> int:
    """Where the float32 error of the paper network (random weights) comes from: max and 90th percentile |Δv|
    from the float64 network on 24 dr16 + 24 simulated spectra, for ONNX Runtime, the FFT backend, and the
    FFT backend with its convolutions in float64 except for one step (rfft, channel mixing, irfft) or none."""
    from fnet.runtime import fft_conv
    from fnet.runtime.preprocess import prepare_arrays
    from fnet.simulate import QuasarSimulator

    sim = QuasarSimulator(source="auto", seed=7).sample(24)
    x = np.concatenate([prepare_spectra(spectra, paper.grid, paper.normalisation).x,
                        prepare_arrays(sim.loglam, sim.flux, sim.ivar, sim.good, paper.grid, paper.normalisation).x])
    exact = _exact_paper(x)

    def report(name: str, backend) -> None:
        dv = _dv_from_exact(backend.run(x), exact)
        print(f"  {name:<48} max {dv.max():6.3f}  p90 {np.percentile(dv, 90):6.3f} km/s")

    def in_float64(single: str | None):
        def convolve(self, x, n, out_len):  # the FFT convolution in float64, `single` step in float32
            w = np.conj(np.fft.rfft(self.w.astype(np.float64), n=n, axis=-1)).transpose(2, 1, 0)
            padded = np.zeros((x.shape[0], n, self.c_in), np.float32 if single == "rfft" else np.float64)
            padded[:, self.pads[0]:self.pads[0] + x.shape[1]] = np.maximum(x, 0) if self.relu_input else x
            spectrum = np.fft.rfft(padded, axis=1).astype(np.complex64 if single == "rfft" else np.complex128)
            if single == "mixing":
                mixed = np.einsum("bfi,fio->bfo", spectrum.astype(np.complex64), w.astype(np.complex64))
            else:
                mixed = np.einsum("bfi,fio->bfo", spectrum, w)
            if self.bias is not None:
                mixed[:, 0, :] += n * self.bias
            y = np.fft.irfft(mixed.astype(np.complex64 if single == "irfft" else np.complex128), n=n, axis=1)
            return y[:, :out_len].astype(np.float32)
        return convolve

    print(f"paper network (random weights), {len(x)} spectra: |dv| from the float64 network")
    report("onnxruntime CPU (float32)", open_backend(paper, "cpu"))
    report("FFT backend (float32)", FftBackend(paper))
    saved = fft_conv.Conv1d._fft
    try:
        for single in (None, "rfft", "mixing", "irfft"):
            fft_conv.Conv1d._fft = in_float64(single)
            label = "FFT convolutions in float64" + (f", {single} in float32" if single else "")
            report(label, FftBackend(paper))
    finally:
        fft_conv.Conv1d._fft = saved
    return 0


def conv_rule(batch: int) -> int:
    """Time convolutions both ways over the shapes the toolkit's networks use; fit and check CONV_RULE's constants."""
    import math

    from fnet.runtime import fft_conv
    from fnet.runtime.fft_conv import ArrayOps, Conv1d, fft_length

    ops = ArrayOps(np)
    rng = np.random.default_rng(0)
    shapes = [(k, c_in, c_out, length) for length in (578, 1155, 4618) for (c_in, c_out) in ((8, 8), (32, 32), (64, 64))
              for k in (3, 9, 15, 31, 63, 125) if k < length // 4]
    rows = []
    for k, c_in, c_out, length in shapes:
        conv = Conv1d(rng.normal(size=(c_out, c_in, k)).astype(np.float32), None, (k // 2, k - 1 - k // 2), ops)
        x = rng.normal(size=(batch, length, c_in)).astype(np.float32)  # channels-last, as the backend runs
        n = fft_length(length, k, conv.pads)
        with ops.blas_limit():
            t_fft = _best(lambda: conv._fft(x, n, length))
            t_direct = _best(lambda: conv._direct(x, length))
        rows.append((k, c_in, c_out, length, n, t_fft, t_direct))
    # least squares: t_fft = a * (c_in + c_out) n log2 n * B + b * c_in c_out (n/2+1) * B;  t_direct = c * MACs
    A = np.array([[(ci + co) * n * math.log2(n) * batch, ci * co * (n // 2 + 1) * batch] for _, ci, co, _, n, _, _ in rows])
    a, b = np.linalg.lstsq(A, np.array([r[5] for r in rows]), rcond=None)[0]
    macs = np.array([k * ci * co * length * batch for k, ci, co, length, *_ in rows], dtype=float)
    c = float(np.sum(macs * np.array([r[6] for r in rows])) / np.sum(macs ** 2))
    print(f"batch {batch}; per spectrum: COST_FFT_POINT = {a * batch:.3g}, COST_MIX_PAIR = {b * batch:.3g}, "
          f"COST_DIRECT_MAC = {c * batch:.3g} s  (in fnet/runtime/fft_conv.py: {fft_conv.COST_FFT_POINT:.3g}, "
          f"{fft_conv.COST_MIX_PAIR:.3g}, {fft_conv.COST_DIRECT_MAC:.3g})")
    print(f"{'k':>4} {'c_in':>4} {'c_out':>5} {'L':>5} {'fft ms':>8} {'direct ms':>9}  faster  rule")
    wrong = 0
    for k, ci, co, length, n, t_fft, t_direct in rows:
        rule = "fft" if fft_conv.use_fft(k, ci, co, length + k - 1, n) else "direct"
        faster = "fft" if t_fft < t_direct else "direct"
        wrong += rule != faster and abs(t_fft / t_direct - 1) > 0.2
        print(f"{k:>4} {ci:>4} {co:>5} {length:>5} {t_fft * 1e3:>8.2f} {t_direct * 1e3:>9.2f}  {faster:<6}  {rule}"
              + ("" if rule == faster else "  (disagree)"))
    print(f"{wrong} of {len(rows)} shapes where the rule picks the way that is more than 20% slower")
    return 0


def _best(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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
