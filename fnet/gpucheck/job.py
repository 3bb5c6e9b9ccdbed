"""fnet-gpu-check's steps: train, export through the parity gate, benchmark every backend, pack, within M minutes.

Each step runs the toolkit's own command (fnet-train, fnet-export, fnet-bench) in a child process with a
time limit, so a CUDA error, an out-of-memory kill or a hung build costs that step, not the whole job,
and the log shows exactly what a user would see. On a machine without a CUDA GPU the same steps run at
toy size (the `tiny` network on the smoke grid) and the GPU-only backends are skipped with their reasons.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from ..runtime.atomic import atomic_write_text
from .parts import split_large

# The commands, run as `python -c` so they work from a checkout that was never pip-installed (a lent GPU machine).
COMMANDS = {"train": "fnet.cli:train_command", "export": "fnet.export.command:export_command",
            "bench": "fnet.bench:bench_command", "eval": "fnet.cli:eval_command"}
GPU_BACKENDS = ("torch", "torch-bf16", "onnxruntime-cuda", "onnxruntime-tensorrt", "fft-cupy", "tensorrt-engine")
CPU_BACKENDS = ("torch", "onnxruntime-cpu", "fft-numpy")
# What each step's command imports: a lent GPU machine may lack some (it has torch and CuPy, perhaps little else),
# and a step that cannot start is skipped with the missing modules named rather than failing on an ImportError.
BASE_MODULES = ("numpy", "astropy", "click", "tqdm")
STEP_MODULES = {"train": ("torch", "yaml"), "export": ("torch", "onnx", "onnxruntime"),
                "bench-arch": ("torch", "onnx", "onnxruntime"), "bench-model": ("onnxruntime",),
                "evaluate": ("onnxruntime", "matplotlib", "scipy")}
# Share of the budget per step on a GPU (the rest is slack for start-up, validation and packing).
SHARES = {"train": 0.55, "export": 0.14, "bench-arch": 0.12, "bench-model": 0.08, "evaluate": 0.03}
PACK_RESERVE_S = 20.0


@dataclass
class StepResult:
    """What one step did: ok, skipped (with the reason) or failed (with the error); how long; what it made."""

    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Plan:
    """Sizes of one job: on a GPU the paper network at full size, elsewhere the same steps at toy size."""

    gpu: bool
    config: str
    arch: str
    overrides: list[str]
    bench_backends: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    bench_seconds: float
    parity_n: int
    n_simulated: int
    max_batch: int
    tensorrt: bool


def environment() -> dict:
    """What this machine offers the job: torch and its GPU, CuPy, TensorRT, ONNX Runtime providers, CPU cores."""
    env: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpu_cores": os.cpu_count(),
                 "torch": None, "cuda": False, "gpu": None}
    if find_spec("torch") is not None:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = bool(torch.cuda.is_available())
        if env["cuda"]:
            major, minor = torch.cuda.get_device_capability(0)
            env.update(gpu=torch.cuda.get_device_name(0), compute_capability=f"{major}.{minor}",
                       cuda_version=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                       gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    for module in ("cupy", "tensorrt", "onnxruntime"):
        env[module] = _version_of(module)
    env["missing_modules"] = {step: missing for step in STEP_MODULES if (missing := missing_modules(step))}
    if env["onnxruntime"]:
        import onnxruntime

        env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    return env


def _version_of(module: str) -> str | None:
    """A module's __version__ when it imports, else None (a broken CUDA install must not stop the job)."""
    if find_spec(module) is None:
        return None
    try:
        return str(getattr(__import__(module), "__version__", "unknown"))
    except Exception as exc:  # noqa: BLE001  recorded, not raised
        return f"present but fails to import: {type(exc).__name__}: {exc}"


def plan_for(env: dict, minutes: float, toy: bool = False) -> Plan:
    """Full size on a CUDA GPU (unless toy), toy size elsewhere."""
    workers = max(1, (env.get("cpu_cores") or 2) - 1)  # simulator workers on every core but the training loop's
    if env.get("cuda") and not toy:
        train_minutes = minutes * SHARES["train"] * 0.85  # the loop validates and saves after the budget
        overrides = [f"train.max_minutes={train_minutes:.3f}", "train.epochs=1000", "train.steps_per_epoch=200",
                     "train.amp=true", "train.amp_dtype=bfloat16", f"data.num_workers={workers}",
                     "data.prefetch_factor=4", "schedule.kind=plateau", "validation.n_simulated=2000"]
        if not _shared_dev_set_present():
            overrides += ["validation.real_dir=null", "validation.real_catalog=null"]
        return Plan(True, "paper_zbins", "paper", overrides, GPU_BACKENDS, (1, 64, 1024), 4.0, 256, 256, 1024,
                    env.get("tensorrt") is not None and not str(env["tensorrt"]).startswith("present"))
    overrides = [f"train.max_minutes={max(0.05, min(minutes * SHARES['train'], 0.5)):.3f}", "train.epochs=2",
                 "train.steps_per_epoch=4", "train.device=cpu"]
    # the GPU backends are listed too, so the bench JSON says why each one cannot run here
    backends = CPU_BACKENDS + tuple(b for b in GPU_BACKENDS if b not in CPU_BACKENDS)
    return Plan(False, "smoke", "tiny", overrides, backends, (8,), 0.5, 16, 16, 32, False)


def _shared_dev_set_present() -> bool:
    """Whether the real validation set the paper configs name (../shared/data/sdss/dr16) is here."""
    return Path("../shared/data/sdss/dr16").is_dir()


class GpuCheck:
    """One job: the steps in order, each in its share of the budget, everything written into `out`."""

    def __init__(self, out: str | Path, minutes: float, toy: bool = False, log: Callable[[str], None] = print,
                 env: dict | None = None, eval_set: tuple[str, str] | None = None):
        self.out = Path(out)
        self.eval_set = eval_set  # (spectra folder, truth catalog): fnet-eval of the trained and the default model
        self.minutes = float(minutes)
        self.start = time.monotonic()
        self.deadline = self.start + 60.0 * self.minutes
        self.env = env if env is not None else environment()
        self.plan = plan_for(self.env, self.minutes, toy)
        self.steps: list[StepResult] = []
        self._echo = log
        self.log_path = self.out / "gpu-check.log"

    def log(self, message: str) -> None:
        """One line to the console and to gpu-check.log."""
        line = f"[{time.monotonic() - self.start:7.1f} s] {message}"
        self._echo(line)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def run(self) -> dict:
        """Every step in turn; returns (and writes) the summary. A failed step does not stop the later ones."""
        (self.out / "bench").mkdir(parents=True, exist_ok=True)
        self.log(f"fnet-gpu-check: {self.minutes:g} min budget, {'GPU' if self.plan.gpu else 'toy size (no CUDA GPU)'}"
                 f", environment {json.dumps(self.env)}")
        trained = self._step("train", self.train)
        exported = self._step("export", lambda: self.export(self.out / trained.data["checkpoint"])) \
            if trained.status == "ok" else self._skip("export", "no checkpoint (training did not finish)")
        packages = exported.data.get("packages") or []
        self._step("bench-arch", self.bench_arch)
        self._step("bench-model", lambda: self.bench_model(packages)) if packages else \
            self._skip("bench-model", "no exported package")
        if self.eval_set:
            self._step("evaluate", lambda: self.evaluate(packages)) if packages else \
                self._skip("evaluate", "no exported package")
        summary = self.summary()
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        self.log("packing: files over 16 MiB split into parts, every file listed in manifest.json with its sha256")
        manifest = split_large(self.out)  # last: the log and summary are final before their checksums are taken
        self._echo(f"packed: {len(manifest['files'])} files, "
                   f"{sum(1 for f in manifest['files'] if 'parts' in f)} split into parts")
        return summary

    def summary(self) -> dict:
        """The job's record: environment, plan and every step's result."""
        return {"environment": self.env, "plan": asdict(self.plan), "minutes": self.minutes,
                "elapsed_s": round(time.monotonic() - self.start, 1), "steps": [asdict(s) for s in self.steps]}

    # -- steps -------------------------------------------------------------------------------------------------

    def train(self) -> StepResult:
        """fnet-train on simulated spectra for most of the budget; then how well the simulator workers kept up."""
        run_dir = self.out / "train"
        args = [self.plan.config, "--set", f"train.checkpoint_dir={run_dir}", *self._sets(self.plan.overrides)]
        code = self._command("train", args, self._share("train"))
        best = run_dir / "best.pt"
        history = _read_json(run_dir / "history.json") or []
        data = {"exit_code": code, "arch": self.plan.arch, "config": self.plan.config, **_training_facts(history)}
        (run_dir / "last.pt").unlink(missing_ok=True)  # best.pt is what export needs; last.pt would double the size
        if not best.is_file():
            return StepResult("train", "failed", detail=f"fnet-train exit {code}, no best.pt", data=data)
        data["checkpoint"] = str(best.relative_to(self.out))
        return StepResult("train", "ok", detail=_keep_up_line(data), data=data)

    def export(self, checkpoint: Path) -> StepResult:
        """fnet-export FP32 and FP16 (and TensorRT engines when TensorRT is here) through the parity gate."""
        folder = self.out / "packages"
        args = [str(checkpoint), "-o", str(folder), "--precision", "fp32", "--precision", "fp16",
                "--n-simulated", str(self.plan.n_simulated), "--max-batch", str(self.plan.max_batch)]
        if self.plan.tensorrt:
            args.append("--tensorrt")
        code = self._command("export", args, self._share("export"))
        reports = _write_parity_reports(folder, self.out / "parity")
        data = {"exit_code": code, "packages": sorted(reports),
                "tensorrt": "built" if self.plan.tensorrt else "skipped: the tensorrt package is not importable here"}
        # exit 1 = an artefact refused by its parity gate: a result of the check (logged with the reason), not a
        # failure of the job, as long as something was written; other codes (3: not buildable) are failures
        status = "ok" if code in (0, 1) and reports else "failed"
        detail = f"fnet-export exit {code}, {len(reports)} artefacts written"
        if code == 1:
            detail += " (an artefact was refused by its parity gate: see gpu-check.log)"
        return StepResult("export", status, detail=detail, data=data)

    def bench_arch(self) -> StepResult:
        """fnet-bench on the network with random weights: torch (fp32, bf16) against every runtime backend."""
        path = self.out / "bench" / f"{self.plan.arch}-random.json"
        args = ["--arch", self.plan.arch, "--random-weights", "--device", "cuda" if self.plan.gpu else "cpu",
                *self._bench_args(path)]
        return self._bench_result("bench-arch", self._command("bench", args, self._share("bench-arch")), path)

    def bench_model(self, packages: list[str]) -> StepResult:
        """fnet-bench on each trained artefact: the FP32 and FP16 packages on every runtime backend, each engine."""
        fp32 = next((p for p in packages if p.endswith("-fp32.onnx")), None)
        if fp32 is None:
            return StepResult("bench-model", "skipped", detail="no FP32 package passed the gate")
        folder = self.out / "packages"
        runtime = [n for n in self.plan.bench_backends if not n.startswith("torch") and n != "tensorrt-engine"]
        runs = [(fp32, ["--model", str(folder / fp32)], runtime)]  # a package carries no torch network
        fp16 = next((p for p in packages if p.endswith("-fp16.onnx")), None)
        if fp16:  # the FFT backend runs FP32 graphs only
            runs.append((fp16, ["--model", str(folder / fp16)], [n for n in runtime if not n.startswith("fft")]))
        for engine in (p for p in packages if p.endswith(".engine")):
            runs.append((engine, ["--model", str(folder / fp32), "--engine", str(folder / engine)],
                         ["tensorrt-engine"]))
        rows, skipped, codes = [], {}, []
        share = self._share("bench-model") / len(runs)
        for artefact, model_args, names in runs:
            path = self.out / "bench" / f"trained-{artefact}.json"
            code = self._command("bench", model_args + self._bench_args(path, names), share)
            codes.append(code)
            result = self._bench_result("bench-model", code, path)
            rows += [dict(r, artefact=artefact) for r in result.data.get("results", [])]
            skipped.update({f"{artefact}: {k}": v for k, v in result.data.get("skipped", {}).items()})
        ok = all(c == 0 for c in codes)
        return StepResult("bench-model", "ok" if ok else "failed",
                          detail=f"{len(runs)} fnet-bench runs (exit {codes}), {len(rows)} rows",
                          data={"results": rows, "skipped": skipped})

    def evaluate(self, packages: list[str]) -> StepResult:
        """fnet-eval of the trained FP32 package and of the embedded default on the same real spectra."""
        spectra, truth = self.eval_set
        fp32 = next((p for p in packages if p.endswith("-fp32.onnx")), None)
        if fp32 is None:
            return StepResult("evaluate", "skipped", detail="no FP32 package passed the gate")
        results = {}
        for label, model in (("trained", [ "--model", str(self.out / "packages" / fp32)]), ("default", [])):
            folder = self.out / "eval" / label
            code = self._command("eval", [spectra, "--truth", truth, *model, "-o", str(folder)],
                                 self._share("evaluate"))
            results[label] = {"exit_code": code, "report": _read_json(folder / "report.json")}
        return StepResult("evaluate", "ok" if all(r["report"] for r in results.values()) else "failed",
                          detail="trained vs embedded default on " + spectra, data=results)

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _bench_args(self, json_path: Path, names: list[str] | None = None) -> list[str]:
        args = [a for n in (names or self.plan.bench_backends) for a in ("-B", n)]
        args += [a for b in self.plan.batch_sizes for a in ("-b", str(b))]
        return args + ["--seconds", str(self.plan.bench_seconds), "--warmup", "2", "--parity-n",
                       str(self.plan.parity_n), "--json", str(json_path)]

    def _bench_result(self, name: str, code: int | None, path: Path) -> StepResult:
        record = _read_json(path)
        if record is None:
            return StepResult(name, "failed", detail=f"fnet-bench exit {code}, no JSON written")
        rows = [{k: r.get(k) for k in ("backend", "device", "batch_size", "spectra_per_s", "max_abs_dv_kms")}
                for r in record.get("results", [])]
        skipped = {s["backend"]: s["reason"] for s in record.get("skipped", [])}
        return StepResult(name, "ok" if code == 0 else "failed", detail=f"fnet-bench exit {code}, {len(rows)} rows",
                          data={"json": str(path.relative_to(self.out)), "results": rows, "skipped": skipped})

    def _sets(self, overrides: list[str]) -> list[str]:
        return [a for o in overrides for a in ("--set", o)]

    def _share(self, step: str) -> float:
        """Seconds this step may take: its share of the budget, never past the deadline less the packing reserve."""
        left = self.deadline - time.monotonic() - PACK_RESERVE_S
        share = 60.0 * self.minutes * SHARES[step] if self.plan.gpu else max(60.0, 60.0 * self.minutes)
        return max(1.0, min(share, left))

    def _command(self, which: str, args: list[str], timeout: float) -> int | None:
        """Run fnet-<which> in a child process (output into the log); its exit code, None if it ran out of time."""
        module, command = COMMANDS[which].split(":")
        code = f"import sys; from {module} import {command} as c; c(sys.argv[1:], prog_name='fnet-{which}')"
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.log(f"$ fnet-{which} {' '.join(args)}   (limit {timeout:.0f} s)")
        with open(self.log_path, "a", encoding="utf-8") as fh:
            try:
                proc = subprocess.run([sys.executable, "-c", code, *args], stdout=fh, stderr=subprocess.STDOUT,
                                      env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                self.log(f"fnet-{which}: stopped at its {timeout:.0f} s limit")
                return None
        self.log(f"fnet-{which}: exit {proc.returncode}")
        return proc.returncode

    def _step(self, name: str, fn: Callable[[], StepResult]) -> StepResult:
        """Run a step and record its result (a crash is the step's failure; the job goes on)."""
        missing = missing_modules(name)
        if missing:
            return self._skip(name, f"needs the Python modules {', '.join(missing)}, not importable here")
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001  recorded, not raised
            result = StepResult(name, "failed", detail=f"{type(exc).__name__}: {exc}")
        result.seconds = round(time.monotonic() - t0, 1)
        self.steps.append(result)
        self.log(f"{name}: {result.status} in {result.seconds:.0f} s: {result.detail}")
        return result

    def _skip(self, name: str, why: str) -> StepResult:
        result = StepResult(name, "skipped", detail=why)
        self.steps.append(result)
        self.log(f"{name}: skipped: {why}")
        return result


def missing_modules(step: str) -> list[str]:
    """The modules a step's command needs that this Python cannot find."""
    return [m for m in BASE_MODULES + STEP_MODULES.get(step, ()) if find_spec(m) is None]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _training_facts(history: list[dict]) -> dict:
    """Spectra trained, throughput, and the fraction of training time spent waiting for simulated spectra."""
    if not history:
        return {"epochs": 0}
    seen = sum(h.get("train_spectra") or 0 for h in history)
    seconds = sum(h.get("train_time_s") or 0.0 for h in history)
    wait = sum(h.get("data_wait_s") or 0.0 for h in history)
    last_val = next(iter((history[-1].get("val") or {}).values()), {})
    return {"epochs": len(history), "train_spectra": seen, "train_seconds": round(seconds, 1),
            "spectra_per_s": round(seen / seconds, 1) if seconds else None,
            "data_wait_fraction": round(wait / seconds, 4) if seconds else None,
            "last_validation": last_val}


def _keep_up_line(data: dict) -> str:
    """One line: throughput and whether the simulator workers kept the GPU fed (< 5 % of the time waiting)."""
    frac = data.get("data_wait_fraction")
    verdict = "n/a" if frac is None else ("kept up" if frac < 0.05 else "did NOT keep up")
    return (f"{data.get('epochs')} epochs, {data.get('train_spectra')} spectra, {data.get('spectra_per_s')} spectra/s;"
            f" simulator workers {verdict} (waiting {frac if frac is not None else 'n/a'} of the time)")


def _write_parity_reports(folder: Path, out: Path) -> dict[str, dict]:
    """Each artefact's parity report (from its own metadata or sidecar) as parity/<file>.json; file -> report."""
    from ..runtime.errors import ModelPackageError
    from ..runtime.model_package import load_model_package

    reports = {}
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.suffix not in (".onnx", ".engine"):
            continue
        try:
            package = load_model_package(path)
        except ModelPackageError as exc:
            reports[path.name] = {"error": str(exc)}
            continue
        report = json.loads(package.metadata.get("fnet.parity", "null") or "null")
        reports[path.name] = report
        atomic_write_text(out / f"{path.name}.json", json.dumps(report, indent=1))
    return reports
