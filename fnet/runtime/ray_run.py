"""fnet-run --ray: the same run, scaled out on Ray Data (`pip install 'fnet-qso[ray]'`).

Imported only behind `--ray`, and only this module imports ray.

Dataflow, per window of inputs (WINDOW, in input order):

    ray.data.from_items(input paths)                      up to FILES_PER_TASK inputs per block
      .map_batches(_read_stage)        CPU tasks:         reader + preprocessing + data checks
      .map_batches(_InferActor, compute=ActorPoolStrategy(size=N), num_gpus=G)   one backend per actor
      .iter_batches()                  driver:            rows -> the run journal, in input order

The CPU stage runs `pipeline.read_input` and `Predictor.stage` (the code the single-process run uses), the actors
`Predictor.infer_rows`: the per-spectrum logic exists once. What travels between them is one record per spectrum:
its network input and the small `Staged` summary decoding needs, or its row when it already failed.

Design choice: the driver consumes the results and feeds them, input by input and in input order, into the
same sink the single-process run uses (the run journal). Resume, the streaming catalog writers, the exit codes,
the header provenance and the output checks are therefore the single-process run's own, not a copy: a Ray run can
be resumed by a single-process run and the other way round, and its catalog is the same file. The cost is that
every row passes through the driver: a few hundred bytes per row, and the journal takes ~2*10^4 rows/s, what ~130
CPU cores reading spec files (~150 files/s each) produce; beyond that the driver is the limit (workers writing a
Parquet dataset would lift it, at the price of a second resume mechanism and a merge). Inputs already in the
journal are never put in a dataset.
Order: blocks keep their order (`preserve_order`) and the driver reassembles each input's rows from whatever
inference batches carried them, so the catalog's row order is SOURCE order, as in the single-process run.

Windows bound the driver's memory (one window of paths, not 10^7) and isolate failures. When a worker dies
(segfault, out of memory, node lost) the Dataset fails; the inputs it had not finished are split in halves and run
again, down to single inputs, like the single-process run splits a failing batch: the input that kills a worker
(twice: in a larger part, then alone) becomes one failed row and the rest of the catalog is kept. Ray's own task
retries are turned off for this (by default it retries a task that kills its worker forever). If the cluster
itself is gone the run stops with exit 3 and `--resume` continues it.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
import warnings
from collections import deque
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np

from .backends import Backend
from .errors import BackendUnavailable, FNetError
from .inputs import InputItem
from .pipeline import Predictor, RowSink, file_failed_row, read_input

WINDOW = 50_000  # inputs per Ray Dataset
FILES_PER_TASK = 32  # inputs read by one CPU task (one input block; Ray's per-task cost is ~30 ms here)
CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 300.0
INSTALL_HINT = "pip install 'fnet-qso[ray]'"


class RayRunStopped(FNetError):
    """The run cannot go on: the cluster stopped answering, or inference actors cannot start (exit 3, --resume)."""


class ActorStartFailed(FNetError):
    """An inference actor could not open its backend (raised in the actor; the driver stops the run on it)."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its data extra has no ray.data)
    except ImportError as exc:
        raise BackendUnavailable(f"--ray: Ray Data is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse at once an ADDRESS nobody listens on (ray.init would wait minutes before failing)."""
    target = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BackendUnavailable(f"--ray {address}: not an address: give HOST:PORT (the head's `ray start --head` "
                                 "port, 6379 by default), `local` or `auto`")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BackendUnavailable(f"--ray {address}: no Ray cluster answers at {host}:{port} "
                                 f"({exc.strerror or exc}); is `ray start --head` running there?") from None


def connect(address: str, quiet: bool = False) -> tuple[object, bool]:
    """Ray, connected to `address` ("local": a new cluster on this machine; "auto": RAY_ADDRESS or the cluster
    started here with `ray start`; HOST:PORT). Returns (ray, whether this call started the connection)."""
    import logging

    ray = _import_ray()
    if ray.is_initialized():  # a driver (or a test) that connected already
        return ray, False
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if address not in ("local", "auto"):
        _check_reachable(address)
    kwargs = dict(include_dashboard=False) if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=not quiet, **kwargs)
    except Exception as exc:  # noqa: BLE001  ConnectionError, RuntimeError, version mismatch...
        hint = ("" if address == "local" or os.environ.get("RAY_AUTH_MODE") else
                "; a cluster with token authentication (`ray start` turns it on since Ray 2.59) also needs "
                "RAY_AUTH_MODE=token here, and its token: RAY_AUTH_TOKEN, or ~/.ray/auth_token as on the head")
        raise BackendUnavailable(f"--ray {address}: cannot join the Ray cluster: {type(exc).__name__}: {exc}"
                                 + hint) from None
    return ray, True


def _quiet_ray_data() -> None:
    """Ray Data's INFO lines (one per Dataset) and its note that its progress bars are off: not on stderr."""
    import logging

    logger = logging.getLogger("ray.data")
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:  # the children's records reach these handlers, not the logger's filters
        if not any(getattr(f, "fnet", False) for f in handler.filters):
            quiet = logging.Filter()
            quiet.filter = lambda record: not record.getMessage().startswith("Progress bars disabled")  # type: ignore
            quiet.fnet = True  # type: ignore[attr-defined]
            handler.addFilter(quiet)


def _resolved(backend: Backend) -> tuple[str, str]:
    """(--backend, --device) that open exactly this backend again (what `auto` chose, made explicit)."""
    kind = type(backend).__name__
    if kind == "FftBackend":
        return "fft", backend.device
    if kind == "OnnxRuntimeBackend":
        first = backend.providers[0]
        if first == "TensorrtExecutionProvider":
            return "tensorrt", "auto"
        return "onnxruntime", "cuda" if first == "CUDAExecutionProvider" else "cpu"
    return "tensorrt", "auto"  # a TensorRT engine file


def _open(model_path: str, sha256: str, backend: str, device: str, threads: int | None) -> Predictor:
    from .model_package import load_model_package
    from .backends import open_backend

    package = load_model_package(model_path)
    if sha256 and package.sha256 != sha256:
        raise BackendUnavailable(f"{model_path}: this node's copy of the model differs from the driver's "
                                 f"(sha256 {package.sha256[:12]}..., driver {sha256[:12]}...)")
    return Predictor(package, open_backend(package, device=device, threads=threads, backend=backend))


def _probe(model_path: str, sha256: str, backend: str, device: str, threads: int | None) -> dict:
    """Run on a worker before any work: can it open the backend the actors will open?"""
    try:
        opened = _open(model_path, sha256, backend, device, threads).backend
    except Exception as exc:  # noqa: BLE001  reported to the user as a refusal (exit 2)
        return {"error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}
    return {"describe": opened.describe(), "resolved": _resolved(opened), "choice": getattr(opened, "choice", None),
            "node": socket.gethostname()}


def _read_stage(batch: dict, predictor: Predictor, chunk: int) -> Iterator[dict]:
    """CPU task: read and stage every input of the block; one record per spectrum (or per input without any).

    Records leave `chunk` at a time, and a file's spectra are staged `chunk` at a time: a block of spPlates
    (1000 fibers each) never sits on the model grid at once.
    """
    cols: dict[str, list] = {"i": [], "slot": [], "n": [], "skip": [], "rec": []}

    def emit(i: int, slot: int, n: int, skip: bool, rec: bytes) -> None:
        for key, value in zip(cols, (i, slot, n, skip, rec)):
            cols[key].append(value)

    def columns() -> dict:
        out = {"i": np.array(cols["i"], np.int64), "slot": np.array(cols["slot"], np.int32),
               "n": np.array(cols["n"], np.int32), "skip": np.array(cols["skip"], bool),
               "rec": np.array(cols["rec"], dtype=object)}
        for values in cols.values():
            values.clear()
        return out

    for i, blob in zip(batch["i"], batch["item"]):
        i = int(i)
        result = read_input(i, pickle.loads(blob))
        if result.problem is not None and result.skip:  # an earlier catalog found in a folder: no row
            emit(i, 0, 0, True, b"")
        elif result.problem is not None:
            emit(i, 0, 1, False, pickle.dumps(("row", (file_failed_row(result.item.path, result.problem), None))))
        elif not result.spectra:
            emit(i, 0, 0, False, b"")
        n = len(result.spectra)
        for c in range(0, n, chunk):
            out, usable, x, staged = predictor.stage(result.spectra[c:c + chunk])
            part: list = [("row", row) for row in out]
            for k, slot in enumerate(usable):
                part[slot] = ("spec", x[k].copy(), staged[k])
            for k, rec in enumerate(part):
                emit(i, c + k, n, False, pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL))
            if len(cols["i"]) >= chunk:
                yield columns()
        result.spectra = []
    if cols["i"]:
        yield columns()


class _InferActor:
    """One inference actor: the backend is opened once, in the constructor."""

    def __init__(self, model_path: str, sha256: str, backend: str, device: str, threads: int | None, keep_pdf: bool):
        try:
            self.predictor = _open(model_path, sha256, backend, device, threads)
        except Exception as exc:  # noqa: BLE001  named, so the driver stops instead of failing every input
            raise ActorStartFailed(f"on {socket.gethostname()}: {type(exc).__name__}: {exc}") from None
        self.keep_pdf = keep_pdf

    def __call__(self, batch: dict) -> dict:
        recs = [pickle.loads(b) if len(b) else None for b in batch["rec"]]
        out = [b"" if rec is None else None for rec in recs]
        staged = [k for k, rec in enumerate(recs) if rec is not None and rec[0] == "spec"]
        rows = (self.predictor.infer_rows(np.stack([recs[k][1] for k in staged]), [recs[k][2] for k in staged])
                if staged else [])
        for k, row in zip(staged, rows):
            recs[k] = ("row", row)
        for k, rec in enumerate(recs):
            if rec is not None:
                row, pdf = rec[1]
                out[k] = pickle.dumps((row, pdf if self.keep_pdf else None), protocol=pickle.HIGHEST_PROTOCOL)
        return {"i": batch["i"], "slot": batch["slot"], "n": batch["n"], "skip": batch["skip"],
                "rec": np.array(out, dtype=object)}


class RayBackend(Backend):
    """Stands for the backends of the actors in the run's summary, and runs the inputs (run_items)."""

    def __init__(self, address: str, package, *, device: str = "auto", threads: int | None = None,
                 backend: str = "auto", actors: int | None = None, gpus_per_actor: float | None = None,
                 quiet: bool = False):
        self.ray, self.owned = connect(address, quiet)
        self.package, self.quiet = package, quiet
        resources = self.ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        wants_gpu = device in ("cuda", "tensorrt") or backend == "tensorrt" or (device == "auto" and gpus > 0)
        if wants_gpu and device != "auto" and gpus == 0:
            raise BackendUnavailable(f"--device {device} --ray {address}: the Ray cluster has no GPU "
                                     f"({cpus:g} CPUs, 0 GPUs)")
        self.gpus = (gpus_per_actor or 1.0) if wants_gpu and gpus > 0 else 0.0
        self.cpus = cpus
        self.threads = threads if threads or self.gpus else 1  # CPU actors: one inference thread unless told
        probe = self.ray.remote(num_cpus=1, num_gpus=self.gpus or None, max_retries=0)(_probe)
        try:
            found = self.ray.get(probe.remote(str(package.path), package.sha256, backend, device, self.threads),
                                 timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001  GetTimeoutError: no worker with the resources free
            raise BackendUnavailable(f"--ray: the cluster could not run the probe task (1 CPU"
                                     f"{f', {self.gpus:g} GPU' if self.gpus else ''}): {_short(exc)}") from None
        if "error" in found:
            raise BackendUnavailable(f"--ray: a Ray worker cannot open the backend: {found['error']}")
        self.backend_name, self.device = found["resolved"]
        if self.device == "cpu":  # a GPU was reserved but the backend runs on CPU: CPU actors then
            self.gpus, self.threads = 0.0, threads or 1
        self.name, self.choice = found["describe"], found["choice"]
        self.actors = actors or (max(1, int(gpus // self.gpus)) if self.gpus else max(1, int(cpus) // 8))
        if self.gpus and self.actors * self.gpus > gpus:
            raise BackendUnavailable(f"--ray-actors {self.actors} x {self.gpus:g} GPUs: the cluster has {gpus:g} GPUs")
        # an actor reserves its threads' CPUs, fewer when the actors would leave the readers none
        self.actor_cpus = min(float(self.threads or 1), max(0.25, (cpus - 1) / self.actors))
        if self.actors * self.actor_cpus > cpus - 1:
            raise BackendUnavailable(f"--ray-actors {self.actors}: the cluster's {cpus:g} CPUs cannot hold that many "
                                     "inference actors and still read files (at least 0.25 CPU each, and 1 CPU left)")
        self.version = self.ray.__version__
        gpu_note = f", {self.gpus:g} GPU each" if self.gpus else ""
        self.header = {"RUNNER": f"ray {self.version} ({self.actors} actors{gpu_note})"}
        self.actor_class = _InferActor
        self.datasets = 0  # Datasets run (windows, and their re-runs after a worker died)
        self.lost = 0  # inputs that became failed rows because a worker died on them

    def describe(self) -> str:
        return self.name

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("RayBackend runs whole inputs through run_items; its actors hold the real backends")

    # -- the run ------------------------------------------------------------------------------------------

    def run_items(self, items: Iterable[InputItem], predictor: Predictor, sink: RowSink, *, start: int = 0,
                  total: int | None = None, batch_size: int = 64, read_workers: int = 2, progress: bool = False,
                  on_row: Callable[[dict], None] | None = None) -> tuple[int, float]:
        """pipeline.run_items on the cluster: same arguments, same sink calls, same (skipped, seconds).

        read_workers is not used: Ray schedules the reading tasks on the cluster's free CPUs.
        """
        from tqdm.auto import tqdm

        from ray.data import DataContext

        t0 = time.perf_counter()
        context = DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        _quiet_ray_data()
        keep_pdf = getattr(sink, "nbins", None) is not None
        stager = Predictor(predictor.package, None)  # what the CPU tasks need: grid, normalisation, checks
        bar = tqdm(total=None if total is None else total - start, unit="file", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        state = {"skipped": 0}

        def emit(index: int, rows: list, pdfs: list, skip: bool) -> None:
            sink.add(index, rows, pdfs)
            state["skipped"] += skip
            bar.update(1)
            if on_row is not None:
                for row in rows:
                    on_row(row)

        try:
            numbered = islice(enumerate(items), start, None)
            while True:
                window = list(islice(numbered, WINDOW))
                if not window:
                    break
                self._run_window(window, stager, batch_size, keep_pdf, emit)
        finally:
            bar.close()
            if self.owned:
                self.ray.shutdown()
        return state["skipped"], time.perf_counter() - t0

    def _run_window(self, window: list, stager: Predictor, batch_size: int, keep_pdf: bool, emit) -> None:
        parts = deque([window])
        while parts:
            part = parts.popleft()
            done, problem = self._run_part(part, stager, batch_size, keep_pdf, emit)
            if done == len(part):
                continue
            self._check_alive(problem)
            rest = part[done:]
            if len(rest) == 1:  # it fails alone: its row says so, the run goes on
                index, item = rest[0]
                self.lost += 1
                emit(index, [file_failed_row(item.path, f"a Ray worker died while processing this file ({problem}); "
                                                        "run it alone without --ray to see why")], [None], False)
                continue
            half = len(rest) // 2
            parts.extendleft([rest[half:], rest[:half]])

    def _run_part(self, part: list, stager: Predictor, batch_size: int, keep_pdf: bool, emit) -> tuple[int, str]:
        """Run inputs through one Dataset, emitting them in order; (inputs emitted, problem if it stopped early)."""
        ray = self.ray
        self.datasets += 1
        first = part[0][0]
        ds = ray.data.from_items([{"i": i, "item": pickle.dumps(item)} for i, item in part],
                                 override_num_blocks=_blocks(len(part), self.cpus))
        infer = dict(fn_constructor_kwargs=dict(model_path=str(self.package.path), sha256=self.package.sha256,
                                                backend=self.backend_name, device=self.device, threads=self.threads,
                                                keep_pdf=keep_pdf),
                     batch_size=batch_size, batch_format="numpy", num_cpus=self.actor_cpus,
                     num_gpus=self.gpus or None, compute=ray.data.ActorPoolStrategy(size=self.actors))
        with warnings.catch_warnings():  # retry limits: Ray >= 2.51 calls these ray_remote_args deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = _map(ds, _read_stage, dict(fn_kwargs={"predictor": stager, "chunk": batch_size}, batch_size=None,
                                            batch_format="numpy", num_cpus=1), max_retries=0)
            ds = _map(ds, self.actor_class, infer, max_restarts=0, max_task_retries=0)
        slots: dict[int, list] = {}  # input index -> [missing, rows] while its rows arrive
        finished: dict[int, tuple[list, bool]] = {}
        nxt = first
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:  # only Ray's errors are sorted here: the journal's (disk full...) and Ctrl-C go up as they are
                batch = next(batches)
            except StopIteration:
                return nxt - first, "the Dataset ended without its rows"
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, ray.exceptions.RayTaskError):  # a stage raised: a bug, as without Ray
                    raise
                if "ActorStartFailed" in str(exc):
                    message = next((line for line in str(exc).splitlines() if "ActorStartFailed" in line), str(exc))
                    self._stop(f"an inference actor could not start ({message.strip()[:300]})")
                return nxt - first, _short(exc)  # a worker died: the caller splits the part
            for i, slot, n, skip, rec in zip(batch["i"], batch["slot"], batch["n"], batch["skip"], batch["rec"]):
                i = int(i)
                if n == 0:
                    finished[i] = ([], bool(skip))
                    continue
                entry = slots.setdefault(i, [int(n), [None] * int(n)])
                if entry[1][slot] is None:
                    entry[0] -= 1
                entry[1][slot] = pickle.loads(rec)
                if entry[0] == 0:
                    finished[i] = (slots.pop(i)[1], False)
            while nxt in finished:
                rows, skip = finished.pop(nxt)
                emit(nxt, [r for r, _ in rows], [p for _, p in rows], skip)
                nxt += 1

    def _check_alive(self, problem: str) -> None:
        try:
            alive = self.ray.cluster_resources().get("CPU", 0) > 0
        except Exception:  # noqa: BLE001
            alive = False
        if not alive:
            self._stop(f"the Ray cluster stopped answering ({problem})")

    @staticmethod
    def _stop(why: str) -> None:
        print(f"fnet-run: --ray: {why}; no catalog written. Finished inputs are kept: rerun with --resume",
              file=sys.stderr)
        raise RayRunStopped(why)


def _blocks(n: int, cpus: float) -> int:
    """Input blocks for n inputs: FILES_PER_TASK each, or smaller ones when that would leave CPUs idle."""
    return max(1, min(n, max(-(-n // FILES_PER_TASK), 2 * int(cpus))))


def _map(ds, fn, kwargs: dict, **retries):
    """ds.map_batches with bounded retries (Ray's default retries a task that kills its worker forever); a Ray
    that no longer takes them gets none, and the run still isolates the input at fault, only more slowly."""
    try:
        return ds.map_batches(fn, **kwargs, **retries)
    except TypeError:
        return ds.map_batches(fn, **kwargs)


def _short(exc: BaseException, limit: int = 200) -> str:
    """The last line of a Ray error (its message carries a remote traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
