"""fnet-export: training checkpoints to parity-checked ONNX packages and TensorRT engines (fnet.export.pipeline)."""

from __future__ import annotations

import sys

import click

from ..runtime.constants import EXIT_NO_CATALOG, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE


def _fail_usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--name", default=None, help="model name [default: the training run's name]")
@click.option("--model-version", default="0.1.0", show_default=True)
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16"]),
              default=("fp32", "fp16"), show_default=True)
@click.option("--tensorrt", is_flag=True, help="also build TensorRT engines (needs tensorrt and a GPU)")
@click.option("--max-batch", type=click.IntRange(1), default=256, show_default=True, help="TensorRT profile")
@click.option("--parity-spectra", multiple=True, help="real spectra (files, folders, globs) for the parity check")
@click.option("--n-simulated", type=click.IntRange(0), default=256, show_default=True,
              help="simulated spectra added to the parity set")
@click.option("--force", is_flag=True, help="write artefacts even when parity fails (the report says FAIL)")
@click.option("--fft/--no-fft", default=True, show_default=True,
              help="also check the FP32 package through the FFT backend (fnet-run --backend fft)")
@click.option("--calibrate-z-err", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="fit the Z_ERR factor on N freshly simulated spectra (0: none)")
@click.option("--fit-class-z-range", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="class head: measure each class's training redshift range on N simulated spectra; the "
                   "decoder then drops a class at a Z training never had it (0: none)")
@click.option("--z-err-floor-kms", type=click.FloatRange(0, 1e5), default=0.0, show_default=True, metavar="V",
              help="add V km/s to Z_ERR in quadrature: the scatter of real reference redshifts, which no P(z) holds "
                   "(fit it with benchmarks/z_err_floor.py; 0: none)")
def export_command(checkpoints, out_dir, name, model_version, precisions, tensorrt, max_batch, parity_spectra,
                   n_simulated, force, fft, calibrate_z_err, fit_class_z_range, z_err_floor_kms):
    """Export a training CHECKPOINT to ONNX model packages (and TensorRT engines), each parity-checked.

    Several CHECKPOINTS (same recipe, other seeds) make one ensemble package: its P(z) and class probabilities
    are the mean of theirs (fnet.train.ensemble).

    An artefact whose redshifts differ from PyTorch's beyond tolerance is not written (exit code 1); one
    that cannot be built at all (ONNX export, TensorRT parse or build error) is reported and exit code is 3.
    """
    from .pipeline import export_checkpoint, export_summary

    if tensorrt:
        from .tensorrt_build import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            _fail_usage(f"--tensorrt: {why}")
    try:
        results = export_checkpoint(list(checkpoints), out_dir, precisions=precisions, tensorrt=tensorrt,
                                    parity_spectra=parity_spectra, n_simulated=n_simulated, model_version=model_version,
                                    name=name, force=force, max_batch=max_batch, fft=fft,
                                    calibrate_z_err=calibrate_z_err, class_z_range_spectra=fit_class_z_range,
                                    z_err_floor_kms=z_err_floor_kms)
    except ValueError as exc:
        _fail_usage(str(exc))
    text, outcome = export_summary(results)
    click.echo(text, err=True)
    sys.exit({"broken": EXIT_NO_CATALOG, "failed": EXIT_SOME_FAILED, "ok": EXIT_OK}[outcome])
