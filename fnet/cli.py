"""Command-line entry points. Exit codes: 0 all inputs succeeded, 1 some inputs failed, 2 usage error.

Heavy modules (torch, onnx) are imported inside the commands that need them, so fnet-run
starts fast and works where torch is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def default_model_path() -> Path:
    """The model shipped inside the package (fnet/models/default.onnx)."""
    return Path(__file__).resolve().parent / "models" / "default.onnx"


def _fail_usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _load_package(model: str | None):
    from .runtime.errors import ModelPackageError
    from .runtime.model_package import load_model_package

    path = Path(model) if model else default_model_path()
    if not model and not path.is_file():
        _fail_usage(f"no --model given and the embedded default model {path} is missing from this install")
    try:
        return load_model_package(path)
    except ModelPackageError as exc:
        _fail_usage(str(exc))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "-m", default=None, help="ONNX model package or TensorRT engine [default: embedded model]")
@click.option("--output", "-o", default="fnet_catalog.fits", show_default=True,
              help="catalog path: .fits, .fits.gz, .csv or .parquet")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(1, 65536))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="inference threads [default: all cores]")
@click.option("--read-workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="threads reading files ahead of inference")
@click.option("--save-pdf", is_flag=True, help="also store P(z) per row (zbins models) in HDU ZPDF")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on when stderr is a terminal]")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar and no per-failure lines")
@click.version_option(__version__, prog_name="fnet")
def run_command(inputs, model, output, batch_size, device, threads, read_workers, save_pdf, progress, quiet):
    """Estimate quasar redshifts for spectra files and write a catalog.

    INPUTS are files, globs, directories (searched recursively) or @list.txt files.
    Exit code 0 when every input succeeded, 1 when some failed (their rows say why), 2 for usage errors.
    """
    from .runtime.backends import open_backend
    from .runtime.errors import BackendUnavailable
    from .runtime.pipeline import run_catalog

    package = _load_package(model)
    try:
        backend = open_backend(package, device=device, threads=threads)
    except BackendUnavailable as exc:
        _fail_usage(str(exc))
    show_bar = (sys.stderr.isatty() if progress is None else progress) and not quiet
    try:
        catalog, summary = run_catalog(list(inputs), package, backend, batch_size=batch_size,
                                       read_workers=read_workers, progress=show_bar, keep_pdf=save_pdf)
        written = catalog.write(output)
    except ValueError as exc:  # e.g. unknown output extension, missing pyarrow
        _fail_usage(str(exc))
    if not quiet:
        for row in catalog.rows:
            if row["STATUS"] != "ok":
                click.echo(f"failed: {row['MESSAGE']}", err=True)
    click.echo(f"fnet-run: {summary.n_spectra} rows from {summary.n_inputs} inputs in {summary.seconds:.1f} s "
               f"({summary.spectra_per_second:.1f}/s, {summary.backend}); {summary.n_failed} failed; "
               f"catalog {written}", err=True)
    sys.exit(EXIT_SOME_FAILED if summary.n_failed else EXIT_OK)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False)
def info_command(model):
    """Show a model package's metadata (the embedded model when MODEL is omitted)."""
    import json

    package = _load_package(model)
    click.echo(f"model      {package.name} {package.version} ({package.architecture})")
    click.echo(f"file       {package.path}")
    click.echo(f"sha256     {package.sha256}")
    lo, hi = package.grid.wavelength_range
    click.echo(f"grid       {package.grid.npix} pixels, step {package.grid.loglam_step} dex, {lo:.1f}-{hi:.1f} A")
    click.echo(f"normalise  {json.dumps(package.normalisation)}")
    click.echo(f"head       {json.dumps(package.head)}")
    click.echo(f"z range    {package.z_range[0]}-{package.z_range[1]}")
    for key in ("training", "parity"):
        value = getattr(package, key)
        if value:
            click.echo(f"{key:<10} {json.dumps(value, indent=2)}")
