"""fnet-run --ray (issue #11): on a local 2-CPU Ray cluster the catalog is the single-process run's, row for row.

Generated spectra (fnet.simulate) plus broken inputs; the real spPlate file joins in when ../shared/data is there
(its 20 fibers then span several inference batches). Tests that need Ray skip with a reason when it is not
installed (`pip install 'fnet-qso[ray]'`); the import-isolation and not-installed tests run without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from conftest import SHARED_DATA
from fnet.cli import EXIT_NO_CATALOG, EXIT_SOME_FAILED, EXIT_USAGE, run_command
from fnet.runtime.catalog import catalog_columns, header_classes, read_catalog
from fnet.runtime.journal import RunJournal

C_KMS = 299792.458


def has_ray() -> bool:
    try:
        import ray.data
    except ImportError:
        return False
    return ray.data is not None


needs_ray = pytest.mark.skipif(not has_ray(), reason="Ray Data is not installed (pip install 'fnet-qso[ray]')")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """40 simulated spec files, three broken inputs among them, and the real spPlate file when present."""
    from fnet.simulate import write_simulated_set

    root = tmp_path_factory.mktemp("ray-inputs")
    write_simulated_set(root / "sim", n=40, seed=5, z_range=(0.5, 4.0))
    files = sorted(str(p) for p in (root / "sim").glob("spec-*.fits"))
    (root / "empty.fits").write_bytes(b"")
    (root / "not-fits.fits").write_text("this is not a FITS file\n" * 100)
    files[7:7] = [str(root / "empty.fits")]
    files[20:20] = [str(root / "not-fits.fits"), str(root / "missing.fits")]
    plate = SHARED_DATA / "sdss" / "formats" / "spPlate-4055-55359-0020.fits"
    if plate.exists():
        files.insert(30, str(plate))
    return files


@pytest.fixture(scope="module")
def cluster():
    if not has_ray():
        pytest.skip("Ray Data is not installed (pip install 'fnet-qso[ray]')")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def fnet_run(*args) -> "CliRunner.Result":
    return CliRunner().invoke(run_command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> Path:
    """The single-process catalog every Ray catalog must equal."""
    out = tmp_path_factory.mktemp("single") / "single.fits"
    result = fnet_run(*inputs, "-o", out, "--threads", "1", "--save-pdf", "--no-progress")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    return out


def assert_same_catalog(ray_path: Path, single_path: Path) -> None:
    a, b = read_catalog(ray_path), read_catalog(single_path)
    assert len(a) == len(b)
    assert list(a["SOURCE"]) == list(b["SOURCE"])  # SOURCE order, one row per spectrum
    z_a, z_b = np.asarray(a["Z"]), np.asarray(b["Z"])
    ok = np.isfinite(z_b)
    assert np.array_equal(np.isfinite(z_a), ok)
    assert np.all(C_KMS * np.abs(z_a[ok] - z_b[ok]) / (1 + z_b[ok]) < 1.0)
    assert a.colnames == b.colnames == catalog_columns(header_classes(b.meta))
    for name in b.colnames:  # and in fact every column, Z included, is bit-identical
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_ray_catalog_equals_the_single_process_catalog(cluster, inputs, single, tmp_path):
    out = tmp_path / "ray.fits"
    result = fnet_run(*inputs, "-o", out, "--threads", "1", "--save-pdf", "--ray", "auto", "--ray-actors", "2",
                      "--batch-size", "8", "--no-progress")
    assert result.exit_code == EXIT_SOME_FAILED, result.output  # the broken inputs: exit 1, as without Ray
    assert_same_catalog(out, single)
    cat = read_catalog(out)
    failed = cat[cat["STATUS"] == "failed"]
    broken = {Path(s).name: row for s, row in zip(failed["SOURCE"], failed["ROW"])}
    assert {broken[name] for name in ("empty.fits", "not-fits.fits", "missing.fits")} == {-1}
    assert np.array_equal(fits.getdata(out, "ZPDF"), fits.getdata(single, "ZPDF"))
    ray_hdr, one_hdr = fits.getheader(out, "FNET"), fits.getheader(single, "FNET")
    assert ray_hdr["RUNNER"] == f"ray {cluster.__version__} (2 actors)" and "RUNNER" not in one_hdr
    for key in ("MODELSHA", "BACKEND", "NINPUT", "NFILEBAD", "NSPEC", "NFAIL", "NSKIP", "NRESUMED"):
        assert ray_hdr[key] == one_hdr[key], key
    assert not list(tmp_path.glob("*.fnet-progress*"))  # the journal is removed once the catalog is written


def test_resume_after_an_interrupted_ray_run(cluster, inputs, single, tmp_path, monkeypatch):
    out = tmp_path / "resumed.fits"
    real_add = RunJournal.add

    def add_then_interrupt(self, index, rows, pdfs):
        real_add(self, index, rows, pdfs)
        if self.n_done == 17:
            raise KeyboardInterrupt  # as Ctrl-C (or a kill) mid-run: rows of 17 inputs are in the journal

    monkeypatch.setattr(RunJournal, "add", add_then_interrupt)
    args = [*inputs, "-o", out, "--threads", "1", "--save-pdf", "--ray", "auto", "--no-progress"]
    result = fnet_run(*args)
    assert result.exit_code == EXIT_NO_CATALOG and not out.exists()
    journal = out.with_name(out.name + ".fnet-progress")
    assert sum(1 for _ in open(journal)) == 1 + 17
    monkeypatch.setattr(RunJournal, "add", real_add)
    result = fnet_run(*args, "--resume")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "resuming: 17 of" in result.output
    assert_same_catalog(out, single)
    assert fits.getheader(out, "FNET")["NRESUMED"] == 17


def test_a_journal_write_failure_stops_the_run_as_without_ray(cluster, inputs, tmp_path, monkeypatch):
    """The driver's own errors (disk full) are not taken for a dying worker: no input is marked failed for them."""
    real_add = RunJournal.add

    def add_until_full(self, index, rows, pdfs):
        if self.n_done == 5:
            raise OSError(28, "No space left on device")
        real_add(self, index, rows, pdfs)

    monkeypatch.setattr(RunJournal, "add", add_until_full)
    out = tmp_path / "full.fits"
    result = CliRunner().invoke(run_command, [*inputs, "-o", str(out), "--ray", "auto", "--no-progress"])
    assert result.exit_code == EXIT_NO_CATALOG and not out.exists()
    lines = out.with_name(out.name + ".fnet-progress").read_text().splitlines()
    assert len(lines) == 1 + 5 and all(json.loads(line).get("i", 0) < 5 for line in lines[1:])


def test_a_ray_journal_resumes_without_ray_and_parquet_matches(cluster, inputs, single, tmp_path):
    """The journal is the single-process one: a run started either way finishes either way."""
    out = tmp_path / "cat.parquet"
    args = [*inputs, "-o", out, "--threads", "1", "--no-progress"]
    result = fnet_run(*args, "--ray", "auto")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    import pyarrow.parquet as pq

    meta = pq.read_schema(out).metadata
    assert meta[b"RUNNER"].startswith(b"ray ")
    a, b = read_catalog(out), read_catalog(single)
    assert list(a["SOURCE"]) == list(b["SOURCE"]) and np.array_equal(a["Z"], b["Z"], equal_nan=True)
    # a journal cut after 9 inputs (as a kill leaves it, torn last line included) continues under Ray
    out2 = tmp_path / "cut.fits"
    journal = out2.with_name(out2.name + ".fnet-progress")
    interrupted = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER, str(out2), "9", *inputs], capture_output=True, text=True, timeout=120)
    assert interrupted.returncode == 0, interrupted.stderr
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 10
    journal.write_text("".join(lines) + '{"i": 9, "rows": [{"SOU')  # torn last line
    result = fnet_run(*inputs, "-o", out2, "--threads", "1", "--save-pdf", "--ray", "auto", "--resume",
                      "--no-progress")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert_same_catalog(out2, single)


# A single-process run stopped (SIGKILL-like: os._exit) once `n` inputs are in its journal.
_KILL_AFTER = """
import os, sys
from fnet.runtime.journal import RunJournal
from fnet.cli import run_command
out, n, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real = RunJournal.add
def add(self, *a):
    real(self, *a)
    if self.n_done == n:
        self._fh.flush(); self._pdf and self._pdf.flush(); os._exit(0)
RunJournal.add = add
run_command([*inputs, "-o", out, "--threads", "1", "--save-pdf", "--no-progress"])
"""


@pytest.mark.slow
def test_a_worker_crash_costs_its_input_not_the_catalog(cluster, inputs, single, tmp_path, monkeypatch):
    import ray.cloudpickle

    from fnet.runtime import ray_run

    victim = inputs[3]
    monkeypatch.setattr(CrashingActor, "victim", Path(victim).name.encode())  # shipped with the class, by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers get this module's class by value
    real_init = ray_run.RayBackend.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.actor_class = CrashingActor

    monkeypatch.setattr(ray_run.RayBackend, "__init__", init)
    out = tmp_path / "crash.fits"
    some = inputs[:8]
    result = fnet_run(*some, "-o", out, "--threads", "1", "--ray", "auto", "--batch-size", "2", "--no-progress")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    cat, ref = read_catalog(out), read_catalog(single)
    assert list(cat["SOURCE"]) == some
    lost = cat["SOURCE"] == victim
    assert list(cat["STATUS"][lost]) == ["failed"] and cat["ROW"][lost][0] == -1
    assert "a Ray worker died while processing this file" in cat["MESSAGE"][lost][0]
    keep = ~lost
    assert np.array_equal(cat["Z"][keep], ref["Z"][: len(some)][keep], equal_nan=True)
    assert list(cat["STATUS"][keep]) == list(ref["STATUS"][: len(some)][keep])


def test_actors_that_cannot_start_stop_the_run_instead_of_failing_every_input(cluster, inputs, tmp_path,
                                                                             monkeypatch):
    import ray.cloudpickle

    from fnet.runtime import ray_run

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    real_init = ray_run.RayBackend.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.actor_class = UnstartableActor

    monkeypatch.setattr(ray_run.RayBackend, "__init__", init)
    out = tmp_path / "never.fits"
    result = CliRunner().invoke(run_command, [*inputs[:4], "-o", str(out), "--ray", "auto", "--no-progress"])
    assert result.exit_code == EXIT_NO_CATALOG and not out.exists()
    assert "an inference actor could not start" in result.output and "no GPU on this node" in result.output
    journal = out.with_name(out.name + ".fnet-progress")
    assert sum(1 for _ in open(journal)) == 1  # nothing recorded, nothing marked failed: --resume starts afresh


class UnstartableActor:
    """An inference actor whose backend cannot open on its node."""

    def __init__(self, *args, **kwargs):
        from fnet.runtime.ray_run import ActorStartFailed

        raise ActorStartFailed("on node-7: BackendUnavailable: no GPU on this node")


class CrashingActor:
    """_InferActor that dies (like a segfault) on any batch holding a spectrum of the file named `victim`."""

    victim = b""

    def __init__(self, *args, **kwargs):
        from fnet.runtime.ray_run import _InferActor

        self.actor = _InferActor(*args, **kwargs)

    def __call__(self, batch):
        if any(self.victim in bytes(rec) for rec in batch["rec"]):
            os._exit(1)
        return self.actor(batch)


def test_the_runtime_never_imports_ray_without_the_option(inputs, tmp_path):
    code = ("import sys, json\nfrom fnet.cli import run_command\n"
            "try:\n    run_command(sys.argv[2:], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "import fnet.runtime.ray_run  # ray itself only when a --ray run starts\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))")
    done = subprocess.run([sys.executable, "-c", code, "x", *inputs[:5], "-o", str(tmp_path / "c.fits"), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "c.fits").exists()


def test_without_ray_installed_the_option_is_refused_with_the_install_line(inputs, tmp_path):
    code = ("import sys\nsys.modules['ray'] = None  # as if Ray were not installed\n"
            "from fnet.cli import run_command\nrun_command(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, inputs[0], "-o", str(tmp_path / "c.fits"), "--ray", "local"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert "pip install 'fnet-qso[ray]'" in done.stderr
    assert not (tmp_path / "c.fits").exists()


@needs_ray
def test_an_address_nobody_answers_at_is_refused_naming_it(inputs, tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = "import sys\nfrom fnet.cli import run_command\nrun_command(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, inputs[0], "-o", str(tmp_path / "c.fits"), "--ray",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "no Ray cluster answers" in done.stderr
    assert not (tmp_path / "c.fits").exists()
