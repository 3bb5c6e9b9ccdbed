"""Command-line entry points. Exit codes: 0 all inputs succeeded, 1 some inputs failed, 2 usage error,
3 no catalog written (fnet-run: a crash, an interruption or a write failure).

Heavy modules (torch, onnx) are imported inside the commands that need them, so fnet-run
starts fast and works where torch is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .runtime.constants import EXIT_NO_CATALOG, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, PAPER_GRID
MAX_FAILURE_LINES = 50  # failures echoed to stderr; every one is in the catalog


def default_model_path() -> Path:
    """The model shipped inside the package (fnet/models/default.onnx)."""
    return Path(__file__).resolve().parent / "models" / "default.onnx"


def _fail_usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def provider_parity(package, backend) -> dict | None:
    """The export's parity record for the ONNX Runtime GPU provider this backend runs on, if it recorded one."""
    providers = getattr(backend, "providers", None) or []
    name = ("onnxruntime-tensorrt" if "TensorrtExecutionProvider" in providers else
            "onnxruntime-cuda" if "CUDAExecutionProvider" in providers else None)
    return (package.parity.get("companions") or {}).get(name) if name else None


def _load_package(model: str | None):
    from .runtime.errors import BackendUnavailable, ModelPackageError
    from .runtime.model_package import load_model_package

    path = Path(model) if model else default_model_path()
    if not model and not path.is_file():
        _fail_usage(f"no --model given and the embedded default model {path} is missing from this install")
    try:
        package = load_model_package(path)
    except (ModelPackageError, BackendUnavailable) as exc:  # a bad file, or no ONNX Runtime to read it with
        _fail_usage(str(exc))
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        _fail_usage(f"{path}: cannot load the model: {type(exc).__name__}: {exc}")
    if package.integrity == "none":
        click.echo(f"warning: {path} has no fnet.integrity record (exported before it existed): a corrupted copy "
                   "cannot be detected; re-export it with fnet-export", err=True)
    return package


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "-m", default=None, help="ONNX model package or TensorRT engine [default: embedded model]")
@click.option("--output", "-o", default="fnet_catalog.fits", show_default=True,
              help="catalog path: .fits, .fits.gz, .csv or .parquet")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(1, 65536))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "fft", "tensorrt"]), default="auto",
              show_default=True, help="fft: the package's graph with FFT convolutions (numpy on cpu, CuPy on cuda); "
              "auto: an engine's TensorRT, else the faster of onnxruntime and fft for this model here (measured "
              "once, cached; see docs/models.md)")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="inference threads [default: all cores]")
@click.option("--read-workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="threads reading files ahead of inference")
@click.option("--save-pdf", is_flag=True, help="also store P(z) per row (zbins models) in HDU ZPDF")
@click.option("--resume", is_flag=True,
              help="continue a killed run from its progress file (OUTPUT.fnet-progress) instead of starting over")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on when stderr is a terminal]")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar and no per-failure lines")
@click.option("--priors", default=None, help="also write redrock's redshift-prior file (.fits, HDU PRIORS) from "
              "the catalog: one row per good target (docs/catalog.md)")
@click.option("--priors-flagged", type=click.Choice(["omit", "widen"]), default="omit", show_default=True,
              help="rows with ZWARN bits: left out of the priors, or given a wide (30000 km/s) prior")
@click.option("--priors-function", type=click.Choice(["gaussian", "lorentzien", "tophat"]), default="gaussian",
              show_default=True, help="redrock's prior shape (its spelling)")
@click.option("--ray", default=None, metavar="local|auto|HOST:PORT", help="run on Ray Data (pip install "
              "'fnet-qso[ray]'): local = a new cluster here; auto = RAY_ADDRESS or `ray start`'s; HOST:PORT (README)")
@click.option("--ray-actors", type=click.IntRange(1), default=None, help="--ray inference actors [default: the "
              "cluster's GPUs / --ray-gpus, else its CPUs / 8]")
@click.option("--ray-gpus", type=click.FloatRange(0.01), default=None, help="--ray GPUs per actor [default: 1 if any]")
@click.version_option(__version__, prog_name="fnet")
def run_command(inputs, model, output, batch_size, device, backend, threads, read_workers, save_pdf, resume, progress,
                quiet, **priors):
    """Estimate quasar redshifts for spectra files and write a catalog.

    INPUTS are files, directories (searched recursively), @list.txt files or glob patterns; a name that
    exists as a file is always taken literally. Exit code 0: every input succeeded; 1: some failed (their
    rows say why); 2: usage error, nothing done; 3: no catalog was written (crash or write failure).
    """
    import traceback

    try:
        _run(inputs, model, output, batch_size, device, backend, threads, read_workers, save_pdf, resume, progress,
             quiet, priors)
    except KeyboardInterrupt:
        click.echo("fnet-run: interrupted; no catalog written. Finished inputs are kept: rerun with --resume "
                   "to continue", err=True)
        sys.exit(EXIT_NO_CATALOG)
    except Exception:  # a bug: say so, keep the traceback for the report, and use the documented exit code
        traceback.print_exc()
        click.echo("fnet-run: internal error (a bug: please report the traceback above); no catalog written. "
                   "Finished inputs are kept: rerun with --resume to continue", err=True)
        sys.exit(EXIT_NO_CATALOG)


def _run(inputs, model, output, batch_size, device, backend_name, threads, read_workers, save_pdf, resume, progress,
         quiet, priors):
    """fnet-run's work; every refusal before the run exits 2, a catalog that cannot be written exits 3."""
    import os
    from glob import escape as glob_escape

    from .runtime.backends import open_backend
    from .runtime.catalog import PdfSource, check_output_path, write_catalog
    from .runtime.errors import BackendUnavailable
    from .runtime.inputs import iter_inputs
    from .runtime.journal import InputsDigest, JournalMismatch, RunJournal, journal_paths, run_fingerprint
    from .runtime.pipeline import Predictor, RunSummary, provenance_header, run_items

    try:  # refuse an unwritable output before hours of work, not after
        suffix = check_output_path(output)
    except ValueError as exc:
        _fail_usage(str(exc))
    out_path = Path(output)
    for stale in out_path.parent.glob(f".{glob_escape(out_path.name)}.*.part"):
        stale.unlink(missing_ok=True)  # left by a run killed while writing this catalog
    package = _load_package(model)
    if save_pdf and package.head["kind"] != "zbins":
        _fail_usage(f"--save-pdf: {package.path} has a {package.head['kind']} head, which gives no P(z)")
    if save_pdf and not suffix.startswith(".fit"):
        _fail_usage(f"--save-pdf: P(z) is stored as FITS HDUs; write a .fits catalog, not {suffix}")
    own_files = [output, *journal_paths(output)]
    if priors["priors"]:  # redrock's prior file: checked now, written from the finished catalog
        from .runtime.priors import check_priors_path, write_priors

        try:
            own_files.append(check_priors_path(priors["priors"], own_files))
        except ValueError as exc:
            _fail_usage(str(exc))
    out_real = {os.path.realpath(p) for p in own_files}
    # Inputs are expanded twice, as a stream (10^7 paths need not fit in memory): once here to check them
    # and fingerprint the run, once to run them.
    digest = InputsDigest()
    for item in iter_inputs(list(inputs), exclude=own_files):
        if os.path.realpath(item.path) in out_real:
            _fail_usage(f"{item.path}: is both an input and the output (or its progress or priors file); "
                        "refusing to overwrite an input")
        digest.add(item.path)
    try:
        if priors["ray"]:  # Ray Data: the backends live in actors on the cluster (ray imported only here)
            from .runtime.ray_run import RayBackend
            backend = RayBackend(priors["ray"], package, device=device, threads=threads, backend=backend_name,
                                 actors=priors["ray_actors"], gpus_per_actor=priors["ray_gpus"], quiet=quiet)
        else:
            backend = open_backend(package, device=device, threads=threads, backend=backend_name)
    except BackendUnavailable as exc:
        _fail_usage(str(exc))
    if package.parity.get("passed") is False:
        click.echo(f"fnet-run: WARNING: {package.path} failed its parity check at export (written with --force): "
                   "its redshifts are not vouched for; the catalog header says PARITY = FAIL", err=True)
    checked = provider_parity(package, backend)
    if checked is not None and not checked.get("passed", True):
        click.echo(f"fnet-run: WARNING: {backend.describe()} failed this package's parity check at export "
                   f"({checked.get('candidate')}: max |dv| {checked.get('max_abs_dv_kms', float('nan')):.3g} km/s): "
                   "use --device cpu or --backend tensorrt with an engine built by fnet-export", err=True)
    choice = getattr(backend, "choice", None)
    if choice:  # --backend auto measured (or remembered) which backend is faster for this model here
        times = ", ".join(f"{k} {v:.3g} s" for k, v in sorted(choice["seconds_per_batch"].items()))
        click.echo(f"fnet-run: --backend auto chose {backend.describe()} ({times} per batch of {choice['batch']}, "
                   f"measured {choice['measured']}; delete {choice['cache']} to measure again)", err=True)
    predictor = Predictor(package, backend)
    nbins = len(predictor.centres) if save_pdf else None
    fingerprint = run_fingerprint(digest, package.sha256, nbins)
    journal_file = journal_paths(output)[0]
    if not resume and journal_file.exists():
        click.echo(f"fnet-run: {journal_file} from an earlier run is replaced (use --resume to continue it)", err=True)
    try:
        journal = RunJournal(output, fingerprint, resume=resume)
    except JournalMismatch as exc:
        _fail_usage(str(exc))
    except OSError as exc:
        _fail_usage(f"{journal_file}: cannot write the progress file: {exc.strerror or exc}")
    if journal.resumed:
        click.echo(f"fnet-run: resuming: {journal.n_done} of {digest.count} inputs already done", err=True)
    show_bar = (sys.stderr.isatty() if progress is None else progress) and not quiet
    shown = [0]

    def report(row: dict) -> None:
        if quiet or row["STATUS"] == "ok":
            return
        shown[0] += 1
        if shown[0] <= MAX_FAILURE_LINES:
            click.echo(f"failed: {row['MESSAGE']}", err=True)
        elif shown[0] == MAX_FAILURE_LINES + 1:
            click.echo("failed: ... further failures are listed only in the catalog", err=True)

    n_resumed, rows_before = journal.n_done, journal.n_rows
    second = InputsDigest()

    def stream():
        for item in iter_inputs(list(inputs), exclude=own_files):
            second.add(item.path)
            yield item

    skipped, seconds = getattr(backend, "run_items", run_items)(  # --ray: RayBackend runs the inputs on the cluster
        stream(), predictor, journal, start=journal.n_done, total=digest.count, batch_size=batch_size,
        read_workers=read_workers, progress=show_bar, on_row=report)
    journal.close()
    if second.hexdigest() != digest.hexdigest():
        click.echo(f"warning: the inputs changed during the run ({digest.count} files when it started, "
                   f"{second.count} at the end): the catalog lists what was read", err=True)
    summary = RunSummary(n_inputs=second.count, n_files_failed=journal.n_files_failed, n_spectra=journal.n_rows,
                         n_failed=journal.n_failed, seconds=seconds, backend=backend.describe(), n_skipped=skipped,
                         n_resumed=n_resumed)
    pdf = PdfSource(predictor.centres, journal.pdf_chunks) if nbins else None
    try:
        written = write_catalog(output, journal.rows, {**provenance_header(package, summary),
                                                       **getattr(backend, "header", {})}, pdf)  # --ray: RUNNER
    except OSError as exc:
        click.echo(f"fnet-run: cannot write the catalog {output}: {exc.strerror or exc}. Every row is kept in "
                   f"{journal.path}: free the space (or fix the folder) and rerun with --resume to write it", err=True)
        sys.exit(EXIT_NO_CATALOG)
    if priors["priors"]:
        try:
            click.echo(write_priors(written, priors["priors"], function=priors["priors_function"],
                                    flagged=priors["priors_flagged"]).describe(), err=True)
        except OSError as exc:  # the catalog is written; the journal stays so --resume writes both again
            click.echo(f"fnet-run: cannot write the priors file {priors['priors']}: {exc.strerror or exc}; the "
                       f"catalog {written} is written: rerun with --resume to write both", err=True)
            sys.exit(EXIT_NO_CATALOG)
    journal.remove()
    rate = (journal.n_rows - rows_before) / seconds if seconds > 0 else float("nan")  # this session's rows
    click.echo(f"fnet-run: {summary.n_spectra} rows from {summary.n_inputs} inputs in {seconds:.1f} s "
               f"({rate:.1f}/s, {summary.backend}); {summary.n_failed} failed"
               + (f"; {n_resumed} inputs from the resumed run" if n_resumed else "")
               + (f"; {skipped} earlier catalogs in folders skipped" if skipped else "")
               + f"; catalog {written}", err=True)
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
    click.echo(f"integrity  {'graph and metadata checksums match' if package.integrity == 'checked' else 'no record'}")
    lo, hi = package.grid.wavelength_range
    click.echo(f"grid       {package.grid.npix} pixels, step {package.grid.loglam_step} dex, {lo:.1f}-{hi:.1f} A")
    click.echo(f"normalise  {json.dumps(package.normalisation)}")
    click.echo(f"head       {json.dumps(package.head)}")
    click.echo(f"z range    {package.z_range[0]}-{package.z_range[1]}")
    fp32_layers = package.metadata.get("fnet.fp32_layers")  # an FP16 package's layers kept in FP32 (its head)
    click.echo(f"precision  {package.metadata.get('fnet.precision', 'fp32')}"
               + (f", FP32 layers {fp32_layers}" if fp32_layers else ""))
    for key in ("training", "parity"):
        value = getattr(package, key)
        if value:
            click.echo(f"{key:<10} {json.dumps(value, indent=2)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False))
@click.argument("spectra_root", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="dataset folder")
@click.option("--split", type=click.Choice(["random", "paper"]), default="random", show_default=True,
              help="paper: DR12Q rows train/val, the other visually inspected DR16Q quasars test")
@click.option("--dr12q", "dr12q_catalog", type=click.Path(exists=True, dir_okay=False), default=None,
              help="DR12Q catalog for --split paper")
@click.option("--z-column", default="auto", show_default=True, help="auto: Z_VI where > 0, else Z")
@click.option("--loglam-start", type=float, default=PAPER_GRID["loglam_start"], show_default=True)
@click.option("--loglam-step", type=float, default=PAPER_GRID["loglam_step"], show_default=True,
              help="4e-4 for the lite4x models")
@click.option("--npix", type=int, default=PAPER_GRID["npix"], show_default=True, help="1155 for the lite4x models")
@click.option("--normalisation", type=click.Choice(["ivar_unit_norm", "zscore_minmax"]), default="ivar_unit_norm",
              show_default=True)
@click.option("--shard-size", type=click.IntRange(1), default=4096, show_default=True)
@click.option("--processes", type=click.IntRange(1), default=None, help="[default: all cores]")
@click.option("--limit", type=click.IntRange(1), default=None, help="only the first N catalog rows (trial runs)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def build_dataset_command(catalog, spectra_root, out_dir, split, dr12q_catalog, z_column, loglam_start, loglam_step,
                          npix, normalisation, shard_size, processes, limit, seed, quiet):
    """Build sharded, memory-mapped training arrays from a DR12Q/DR16Q-style CATALOG and spectra folders.

    Resumable: re-running skips finished shards. Rows that cannot be built are listed in failures.csv.
    """
    from .dataset import build_dataset

    if split == "paper" and not dr12q_catalog:
        _fail_usage("--split paper needs --dr12q CATALOG")
    norm = {"scheme": normalisation, "clip": 10.0} if normalisation == "ivar_unit_norm" else {"scheme": normalisation}
    manifest = build_dataset(catalog, list(spectra_root), out_dir,
                             grid={"loglam_start": loglam_start, "loglam_step": loglam_step, "npix": npix},
                             normalisation=norm, z_column=z_column, split=split, dr12q_catalog=dr12q_catalog,
                             shard_size=shard_size, processes=processes, limit=limit, seed=seed,
                             progress=not quiet and sys.stderr.isatty())
    click.echo(f"fnet-build-dataset: {out_dir}: {manifest['n_built']} spectra built, {manifest['n_failed']} failed "
               f"{json_dumps(manifest['failures'])} (listed in {manifest['failures_file']})", err=True)


def json_dumps(value) -> str:
    """Compact JSON for one-line summaries."""
    import json

    return json.dumps(value, separators=(",", ":"), default=str)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(1), default=16, show_default=True, help="number of quasars")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--source", type=click.Choice(["auto", "templates", "parametric", "mixed"]), default="auto",
              show_default=True, help="auto: real-template mix when ../shared/data is found, else parametric")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="folder with templates/ and sdss/ (default: $FNET_SHARED_DATA or ../shared/data)")
@click.option("--z-min", type=float, default=0.0, show_default=True)
@click.option("--z-max", type=float, default=5.0, show_default=True)
@click.option("--z-dist", type=click.Choice(["uniform", "dr16q"]), default="dr16q", show_default=True)
def simulate_command(out_dir, n, seed, source, data_dir, z_min, z_max, z_dist):
    """Write simulated quasars as genuine BOSS-format files: OUT_DIR/spectra/spec-*.fits and OUT_DIR/truth.fits.

    Every file is marked SIMULATD = T in its headers. Useful for demos, tests and checking a model.
    """
    import shutil

    from .simulate.sdss_writer import write_simulated_set

    out = Path(out_dir)
    truth = write_simulated_set(out / "spectra", n, seed, source=source, data_dir=data_dir,
                                z_range=(z_min, z_max), z_dist=z_dist)
    final = out / "truth.fits"
    shutil.move(str(truth), final)  # keep the spectra folder spectra-only, so fnet-run can take it whole
    click.echo(f"fnet-simulate: {n} spectra in {out / 'spectra'}, truth catalog {final}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a config value, e.g. --set optim.lr=1e-3 --set train.epochs=20 (repeatable)")
def train_command(config, overrides):
    """Train a model from a YAML CONFIG file or a shipped config name; resumes from the run's last checkpoint.

    Shipped configs (fnet/configs): paper (the paper, a GPU job), paper_zbins, lite4x_zbins and
    lite4x_regression (about 1 h on 2 CPU cores), default_model (the embedded model's recipe), smoke (seconds).
    """
    from .train.loop import train

    try:
        result = train(config, list(overrides))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    best = "n/a" if result.best_value is None else f"{result.best_value:.4g}"
    click.echo(f"fnet-train: best {result.best_metric} = {best} at epoch {result.best_epoch}; "
               f"checkpoints in {result.checkpoint_dir}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True)
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False),
              help="true redshifts: PLATE/MJD/FIBERID, TARGETID or file (+ROW) columns; Z_VI/Z/Z_TRUE; CLASS/SPECTYPE")
@click.option("--model", "-m", default=None, help="ONNX package [default: embedded model]")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="evaluate a torch training checkpoint instead of an ONNX package")
@click.option("--z-column", default="auto", show_default=True)
@click.option("--out-dir", "-o", default="fnet_eval", show_default=True, type=click.Path(file_okay=False))
@click.option("--variant", "variants", multiple=True,
              type=click.Choice(["as observed", "lines masked", "S/N halved"]), default=("as observed",),
              show_default=True, help="repeatable: paper Fig. 6 line masking, halved S/N")
@click.option("--all-variants", is_flag=True, help="as observed, lines masked and S/N halved")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--truth-class", type=click.Choice(["auto", "none", "QSO", "STAR", "GALAXY"], case_sensitive=False),
              default="auto", show_default=True, help="truth classes: auto = CLASS/SPECTYPE column, QSO for quasar "
              "catalogs (DR12Q/DR16Q/QSO_cat), else none; a name gives every row that class")
@click.option("--exclude-truth-zwarning", is_flag=True, help="leave out spectra whose truth ZWARNING/ZWARN is not 0")
def eval_command(inputs, truth, model, checkpoint, z_column, out_dir, variants, all_variants, device, seed,
                 truth_class, exclude_truth_zwarning):
    """Measure accuracy on spectra with known redshifts: Δv fractions, median |Δv|, per-z table, plots.

    Writes OUT_DIR/report.json and one PNG per variant; prints a summary table. With a class head and truth
    classes: a confusion matrix, completeness/purity with 95% Wilson intervals and z accuracy per true class.
    """
    from . import evaluate as ev

    try:
        sample = ev.load_sample(list(inputs), truth, z_column, truth_class, exclude_truth_zwarning)
    except ValueError as exc:
        _fail_usage(str(exc))
    if checkpoint:
        from .train.evaluate_torch import torch_predictor

        predict, info = torch_predictor(checkpoint)
    else:
        package_path = model or str(default_model_path())
        predict, info = ev.onnx_predictor(package_path, device=device)
    chosen = ("as observed", "lines masked", "S/N halved") if all_variants else variants
    reports = ev.evaluate_sample(predict, sample, chosen, seed=seed)
    click.echo(ev.summary_text(reports, info, sample, ev.write_report(reports, out_dir, info)))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("dr16q", type=click.Path(exists=True, dir_okay=False))
@click.argument("spectra_root", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--dr12q", type=click.Path(exists=True, dir_okay=False), default=None,
              help="DR12Q catalog: enables the paper's split (DR12Q train/val, later DR16Q VI quasars test)")
@click.option("--work", "work_dir", default="runs/paper-dr16q", show_default=True, type=click.Path(file_okay=False))
@click.option("--config", default="paper", show_default=True, help="config file or shipped name")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="config overrides (repeatable)")
@click.option("--processes", type=click.IntRange(1), default=None, help="dataset build processes [default: all]")
@click.option("--limit", type=click.IntRange(1), default=None, help="only the first N catalog rows (trial runs)")
@click.option("--no-export", is_flag=True)
def reproduce_command(dr16q, spectra_root, dr12q, work_dir, config, overrides, processes, limit, no_export):
    """Reproduce the paper from DR16Q: build the dataset, train, report on the test split, export. Resumable."""
    from .reproduce import reproduce_paper

    summary = reproduce_paper(dr16q, spectra_root, work_dir, dr12q=dr12q, config=config, overrides=overrides,
                              processes=processes, limit=limit, export=not no_export)
    click.echo(json_dumps(summary))
