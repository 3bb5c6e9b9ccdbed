"""The fnet-bench command: every backend on the same network and inputs, one table, optionally one JSON record."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from .. import __version__
from ..runtime.backends import run_in_batches
from ..runtime.errors import ModelPackageError
from ..runtime.model_package import ModelPackage, load_model_package
from ..runtime.preprocess import prepare_spectra
from .backends import BACKEND_NAMES, DEFAULT_NAMES, REFERENCES, Skipped, Subject, backend_device, open_named
from .measure import (PARITY_N, io_throughput, latency, load_spectra, machine_info, max_abs_dv, repeat_to,
                      simulated_pool, spectra_files)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_BATCH_SIZES = (1, 64)


class UsageProblem(Exception):
    """A refusal before any measurement (exit 2); the message names the option or file."""


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", default=None, help="ONNX model package or TensorRT engine [default: embedded model]")
@click.option("--arch", default=None, help="benchmark a network by name (paper, lite4x, pooled4x, tiny...) instead")
@click.option("--random-weights", is_flag=True, help="with --arch: seeded random weights (the speed of a trained one)")
@click.option("--backend", "-B", "backends", multiple=True, type=click.Choice(BACKEND_NAMES),
              help="repeatable [default: every backend available here]")
@click.option("--batch-size", "-b", "batch_sizes", multiple=True, type=click.IntRange(1, 65536),
              help="repeatable [default: 1 and 64]")
@click.option("--engine", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TensorRT engine for tensorrt-engine [default: built here from the package, needs TensorRT and a GPU]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="where the torch backends run (auto: CUDA when torch sees a GPU)")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads [default: all cores]")
@click.option("--spectra", "spectra", multiple=True,
              help="real spectra files (files, folders, globs, @lists; repeatable): the inputs, and read + "
                   "preprocess throughput [default: 64 simulated quasars]")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True, help="untimed calls first")
@click.option("--repeats", type=click.IntRange(1), default=1000, show_default=True,
              help="most timed calls per backend and batch size")
@click.option("--seconds", type=click.FloatRange(0), default=5.0, show_default=True,
              help="stop timing a backend and batch size after this long (never before 3 calls)")
@click.option("--seed", type=int, default=0, show_default=True, help="random weights and simulated inputs")
@click.option("--parity-n", type=click.IntRange(1), default=PARITY_N, show_default=True,
              help="spectra every backend runs for the parity column (fewer: a faster float64 reference on a CPU)")
@click.option("--json", "json_path", default=None, help="also write the results here as JSON")
@click.version_option(__version__, prog_name="fnet")
def bench_command(model, arch, random_weights, backends, batch_sizes, engine, device, threads, spectra, warmup,
                  repeats, seconds, seed, parity_n, json_path):
    """Latency benchmark: spectra/s, p50/p99 latency per batch and Δv parity of every backend, same inputs.

    Exit code 0: every backend measured or skipped as unavailable here; 1: a backend failed while
    running (its line says why); 2: refused before measuring (usage, model, output).
    """
    try:
        code = _bench(model, arch, random_weights, list(backends), list(dict.fromkeys(batch_sizes)), engine, device,
                      threads, list(spectra), warmup, repeats, seconds, seed, json_path, parity_n)
    except UsageProblem as exc:
        click.echo(f"error: {exc}", err=True)
        code = EXIT_USAGE
    sys.exit(code)


def _bench(model, arch, random_weights, names, batch_sizes, engine, device, threads, spectra, warmup, repeats,
           seconds, seed, json_path, parity_n: int = PARITY_N) -> int:
    """fnet-bench's work; returns the exit code."""
    if json_path:
        _check_output(Path(json_path))
    explicit = bool(names)
    names = names or list(DEFAULT_NAMES)
    batch_sizes = batch_sizes or list(DEFAULT_BATCH_SIZES)
    with tempfile.TemporaryDirectory(prefix="fnet-bench-") as tmp:
        subject = _subject(model, arch, random_weights, engine, device, seed, Path(tmp))
        package = subject.package
        io, inputs = None, f"{PARITY_N} simulated quasars (seed {seed})"
        if spectra:
            try:
                files = spectra_files(spectra)
                loaded, problems = load_spectra(files)
            except ValueError as exc:
                raise UsageProblem(str(exc)) from None
            pool = prepare_spectra(loaded, package.grid, package.normalisation).x
            inputs = f"{len(pool)} spectra from {len(files) - len(problems)} files"
            _progress(f"read + preprocess throughput on {len(files)} files")
            io = io_throughput(files, loaded, problems, package, repeats, seconds)
        else:
            pool = simulated_pool(package, max(PARITY_N, parity_n), seed)
        parity_x = pool[:parity_n]
        reference = next((r for r in REFERENCES if not r.startswith("torch") or subject.torch_model is not None), None)
        rows, outputs, skipped, failed = _measure(names, explicit, reference, subject, pool, parity_x, batch_sizes,
                                                  threads, warmup, repeats, seconds)
    if not rows:
        for f in failed:
            click.echo(f"{f['backend']}: {f['error']}", err=True)
        if failed:
            return EXIT_FAILED
        reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
        raise UsageProblem(f"nothing was measured: no requested backend can run here ({reasons})")
    ref_out = outputs.get(reference)
    _finish_rows(rows, outputs, ref_out, reference, package)
    settings = dict(warmup=warmup, repeats=repeats, seconds=seconds, threads=threads, seed=seed,
                    torch_device=subject.torch_device)
    record = _record(subject, arch, inputs, len(parity_x), reference if ref_out is not None else None, rows,
                     skipped, failed, io, settings)
    click.echo(render(record, explicit))
    if json_path:
        from ..runtime.atomic import atomic_write_text

        atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
        _progress(f"results written to {json_path}")
    return EXIT_FAILED if failed else EXIT_OK


def _measure(names: list[str], explicit: bool, reference: str | None, subject: Subject, pool: np.ndarray,
             parity_x: np.ndarray, batch_sizes: list[int], threads, warmup: int, repeats: int, seconds: float):
    """Open, check and time every backend in turn: (rows, parity outputs by backend, skipped, failed)."""
    rows, outputs, skipped, failed = [], {}, [], []
    for name in dict.fromkeys(names + ([reference] if reference and reference not in names else [])):
        timed = name in names  # the reference is run for parity even when it is not benchmarked
        _progress(f"{name}: opening" + ("" if timed else " (parity reference only, not timed)"))
        try:
            backend = open_named(name, subject, threads, batch_sizes, parity_x)
        except Skipped as exc:
            # listed: reported on its own line (asked for by name, or the parity reference); else in one note
            why = str(exc) + ("" if timed else " (it was to be the parity reference)")
            skipped.append({"backend": name, "reason": why, "listed": explicit or not timed})
            continue
        except Exception as exc:  # noqa: BLE001  a backend's own failure: one line for it, the run goes on
            failed.append({"backend": name, "error": f"could not start: {type(exc).__name__}: {exc}"})
            continue
        try:
            # one batch of the fixed parity spectra; also every backend's first (warm-up) call
            outputs[name] = run_in_batches(backend.run, parity_x, len(parity_x))
            for size in batch_sizes if timed else []:
                _progress(f"{name}: batch {size}")
                stats = latency(backend.run, repeat_to(pool, size), warmup, repeats, seconds)
                rows.append({"backend": name, "device": backend_device(name, subject), "batch_size": size,
                             **stats, "describe": backend.describe()})
        except Exception as exc:  # noqa: BLE001  same: name the backend, keep the others' results
            failed.append({"backend": name, "error": f"failed while running: {type(exc).__name__}: {exc}"})
            rows = [r for r in rows if r["backend"] != name]
            outputs.pop(name, None)
        finally:
            del backend  # frees its GPU memory before the next backend starts
    return rows, outputs, skipped, failed


def _progress(message: str) -> None:
    click.echo(f"fnet-bench: {message}", err=True)


def _check_output(path: Path) -> None:
    """Refuse a --json path that cannot be written before minutes of measuring, not after."""
    if path.is_dir():
        raise UsageProblem(f"--json {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise UsageProblem(f"--json {path}: folder {path.parent} does not exist")


def _subject(model, arch, random_weights, engine, device, seed, tmp: Path) -> Subject:
    """The package (and torch network) to benchmark, from --model or --arch --random-weights."""
    if arch and model:
        raise UsageProblem("give --model or --arch, not both")
    if random_weights and not arch:
        raise UsageProblem("--random-weights goes with --arch NAME (a --model package has its own weights)")
    if arch and not random_weights:
        raise UsageProblem(f"--arch {arch}: add --random-weights (there are no trained weights for a bare "
                           "architecture; random ones cost the same time)")
    subject = Subject(package=None, engine=Path(engine) if engine else None, workdir=tmp, torch_device="cpu")
    if arch:
        try:
            from .torch_net import cuda_available, random_weights_package
        except ImportError as exc:
            raise UsageProblem(f"--arch needs torch and onnx to build and export the network ({exc}); "
                               "or benchmark a package with --model") from None
        has_cuda = cuda_available()
        if device == "cuda" and not has_cuda:
            raise UsageProblem("--device cuda: torch sees no CUDA GPU here")
        subject.torch_device = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
        _progress(f"building {arch} with random weights (seed {seed}) and exporting it to ONNX")
        try:
            subject.torch_model, path = random_weights_package(arch, tmp, seed)
        except ValueError as exc:  # unknown arch, or an arch that refuses the grid
            raise UsageProblem(f"--arch {arch}: {exc}") from None
        subject.package = _load(path)
    else:
        from ..cli import default_model_path

        subject.package = _load(Path(model) if model else default_model_path())
    if subject.engine is not None:
        engine_package = _load(subject.engine)
        if not engine_package.is_engine:
            raise UsageProblem(f"--engine {engine}: not a TensorRT engine (.engine, .plan or .trt)")
        if engine_package.grid != subject.package.grid:
            raise UsageProblem(f"--engine {engine}: its grid ({engine_package.grid.npix} pixels, step "
                               f"{engine_package.grid.loglam_step}) is not the model's ({subject.package.grid.npix}, "
                               f"{subject.package.grid.loglam_step}): it was built from another network")
    return subject


def _load(path: Path) -> ModelPackage:
    """A model package, or a refusal naming the file."""
    try:
        return load_model_package(path)
    except ModelPackageError as exc:
        raise UsageProblem(str(exc)) from None
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        raise UsageProblem(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from None


def _finish_rows(rows: list[dict], outputs: dict, ref_out: dict | None, reference: str | None,
                 package: ModelPackage) -> None:
    """Add parity (max |Δv| against the reference) and the ratio to the slowest backend at the same batch size."""
    for row in rows:
        out = outputs.get(row["backend"])
        row["max_abs_dv_kms"] = None if ref_out is None or out is None else max_abs_dv(out, ref_out, package.head)
        row["reference"] = row["backend"] == reference and ref_out is not None
    for size in {r["batch_size"] for r in rows}:
        same = [r for r in rows if r["batch_size"] == size]
        slowest = min(r["spectra_per_s"] for r in same)
        for r in same:
            r["ratio_to_slowest"] = r["spectra_per_s"] / slowest


def _record(subject: Subject, arch, inputs: str, n_parity: int, reference, rows, skipped, failed, io,
            settings: dict) -> dict:
    """The JSON record: machine, what was measured, results, and what could not run."""
    p = subject.package
    model = {"name": p.name, "architecture": p.architecture, "path": None if arch else str(p.path),
             "random_weights": bool(arch), "npix": p.grid.npix, "loglam_step": p.grid.loglam_step,
             "head": p.head["kind"], "precision": p.metadata.get("fnet.precision", "fp32")}
    return {"machine": machine_info(), "model": model, "inputs": inputs, "reference": reference,
            "parity_spectra": n_parity, "settings": settings, "results": rows, "skipped": skipped, "failed": failed,
            "io": io}


def render(record: dict, explicit: bool) -> str:
    """The text report: a header, one aligned table, then one line per skipped or failed backend."""
    m, model, s = record["machine"], record["model"], record["settings"]
    gpu = ", ".join(m["gpu"]) if m["gpu"] else "no GPU"
    weights = "random weights" if model["random_weights"] else model["path"]
    ref = record["reference"]
    lines = [f"{model['name']} ({model['architecture']}, {model['npix']} pixels, {model['head']} head, {weights})",
             f"inputs: {record['inputs']}; machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores, {gpu}",
             f"spectra/s = batch / p50 latency; latency = one call on one batch, host arrays in and out, "
             f"timed after {s['warmup']} warm-up calls",
             f"max |dv| = parity against {ref or 'no reference (none could run)'} on the first "
             f"{record['parity_spectra']} inputs; x slowest = spectra/s over the slowest at that batch size", ""]
    header = ("backend", "device", "batch", "spectra/s", "p50 ms", "p99 ms", "x slowest", "max |dv| km/s", "calls")
    table = [header] + [(r["backend"], r["device"], str(r["batch_size"]), _num(r["spectra_per_s"]),
                         _num(r["latency_p50_ms"]), _num(r["latency_p99_ms"]), f"{r['ratio_to_slowest']:.2f}",
                         "ref" if r["reference"] else ("-" if r["max_abs_dv_kms"] is None
                                                       else f"{r['max_abs_dv_kms']:.3g}"),
                         str(r["timed_calls"])) for r in sorted(record["results"], key=lambda r: r["batch_size"])]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    listed = [x for x in record["skipped"] if x["listed"]]
    for x in listed:
        lines.append(f"{x['backend']}: skipped: {x['reason']}")
    quiet = [x["backend"] for x in record["skipped"] if not x["listed"]]
    if quiet:
        lines.append(f"note: skipped (cannot run here or on this model): {', '.join(quiet)} "
                     "(name one with --backend to see why)")
    for f in record["failed"]:
        lines.append(f"{f['backend']}: {f['error']}")
    io = record["io"]
    if io:
        lines.append(f"read + preprocess on {io['files']} files ({io['spectra']} spectra): read "
                     f"{_num(io['read_files_per_s'])} files/s, preprocess {_num(io['preprocess_spectra_per_s'])} "
                     f"spectra/s, both {_num(io['read_preprocess_files_per_s'])} files/s"
                     + (f"; {io['unreadable_files']} unreadable, first: {io['first_problem']}"
                        if io["unreadable_files"] else ""))
    return "\n".join(lines)


def _num(value: float) -> str:
    """Three significant digits or more, no exponent for ordinary magnitudes."""
    if not np.isfinite(value):
        return str(value)
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value >= 0.01 else f"{value:.2e}"
