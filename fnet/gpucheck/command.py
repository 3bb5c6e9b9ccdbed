"""The fnet-gpu-check command line: run the job, or rebuild the files it split into parts."""

from __future__ import annotations

import sys

import click

from .. import __version__


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--minutes", type=click.FloatRange(0.5, 24 * 60), default=15.0, show_default=True,
              help="wall-clock budget of the whole job")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="folder for everything the job writes (checkpoint, packages, parity, bench JSON, log)")
@click.option("--toy", is_flag=True, help="toy size even on a GPU (a quick check of the job itself)")
@click.option("--eval-spectra", default=None, type=click.Path(exists=True, file_okay=False),
              help="real spectra folder: also fnet-eval the trained package against the embedded default")
@click.option("--eval-truth", default=None, type=click.Path(exists=True, dir_okay=False),
              help="truth catalog for --eval-spectra")
@click.option("--join", "join_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="instead of a job: rebuild the files a job folder split into parts (checked by sha256)")
@click.option("--to", "join_to", default=None, type=click.Path(file_okay=False),
              help="with --join: write the rebuilt files here [default: the job folder]")
@click.version_option(__version__, prog_name="fnet")
def gpu_check_command(minutes, out_dir, toy, eval_spectra, eval_truth, join_dir, join_to):
    """Train the paper network, export FP32/FP16 through the parity gate, benchmark every GPU backend, in M minutes.

    On a machine without a CUDA GPU the same steps run at toy size and the GPU steps are skipped with
    their reasons. No file written is over 16 MiB: larger ones are split (manifest.json; --join rebuilds).
    Exit code 0 when the job ran to its end (each step's own result is in summary.json), 2 on a usage error.
    """
    if join_dir:
        from .parts import join_parts

        try:
            written = join_parts(join_dir, join_to)
        except ValueError as exc:
            click.echo(f"fnet-gpu-check: {exc}", err=True)
            sys.exit(2)
        click.echo(f"rebuilt {len(written)} files" + "".join(f"\n  {w}" for w in written))
        return
    if not out_dir:
        raise click.UsageError("give --out DIR (or --join DIR)")
    if bool(eval_spectra) != bool(eval_truth):
        raise click.UsageError("--eval-spectra and --eval-truth go together")
    from .job import GpuCheck

    job = GpuCheck(out_dir, minutes, toy=toy, log=lambda line: click.echo(line, err=True),
                   eval_set=(eval_spectra, eval_truth) if eval_spectra else None)
    summary = job.run()
    for step in summary["steps"]:
        click.echo(f"{step['name']:12s} {step['status']:8s} {step['seconds']:7.1f} s  {step['detail']}")
