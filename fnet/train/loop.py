"""The training loop: train(config) -> TrainResult.

Per epoch: train ``steps_per_epoch`` batches (Adam, optional warm-up, gradient clipping, AMP on
CUDA), validate on every configured set (simulated fixed-seed set, shards, real spectra) by
decoding the outputs with the runtime's numpy decoder and scoring them with fnet.metrics, step the
schedule, write ``last.pt`` (+ ``best.pt`` when the primary validation metric improved) and
``history.json``. The primary validation set is the first of simulated, shards, real that is
configured; without any, the training loss decides and ``best.pt`` follows ``last.pt``.

Resume (``train.resume``) restarts at the epoch after the last completed one with the model,
optimiser, schedule, scaler, RNG states, history and best score restored; the data stream is a
function of (seed, epoch, step), so the resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from fnet.evaluate import score_outputs
from fnet.runtime.atomic import atomic_write_text

from .checkpoint import load_checkpoint, model_metadata, rng_state, save_checkpoint, set_rng_state
from .config import Config, ScheduleCfg, load_config
from .data import (ArraySet, EpochBatchSampler, ShardDataset, SimulatedStream, class_indices, make_loader, real_set,
                   shard_set, simulated_set)
from .fft_conv import convert_convolutions
from .heads import class_loss, head_loss, make_targets, named_outputs
from .model import build_model, count_macs, count_parameters

log = logging.getLogger("fnet.train")

MAX_BAD_STEPS = 10  # consecutive non-finite losses tolerated under fp16 autocast
LOWER_IS_BETTER = {"median_abs_dv": True, "frac_6000": False, "loss": True}


@dataclass
class TrainResult:
    """Where the run's files are and how it went."""

    checkpoint_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_metric: str
    best_value: float | None
    best_epoch: int | None
    history: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; otherwise torch.device(name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available")
    return dev


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam with the configured lr / weight decay (the paper's optimiser)."""
    o = cfg.optim
    return torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, sched: ScheduleCfg, epochs: int):
    """Per-epoch schedule: paper_step (x gamma at scaled milestones), ReduceLROnPlateau, or constant.

    paper_step is a stateless function of the epoch (LambdaLR), so a run resumed with a different
    number of epochs follows the milestones of its own length, not those of the interrupted run.
    """
    if sched.kind == "paper_step":
        milestones, gamma = sched.milestone_epochs(epochs), sched.gamma
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** bisect.bisect_right(milestones, e))
    if sched.kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=sched.factor,
                                                          patience=sched.patience, min_lr=sched.min_lr,
                                                          eps=sched.plateau_eps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _sync_lambda_lr(scheduler, optimizer: torch.optim.Optimizer, lr: float) -> None:
    """After a resume: base lr from the config, current lr from the schedule at the restored epoch."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [lr for _ in optimizer.param_groups]
        for g, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
            g["lr"] = lr * fn(scheduler.last_epoch)
            g["initial_lr"] = lr


def _train_loader(cfg: Config, grid, head, pin_memory: bool = False):
    """(loader, dataset-or-sampler with set_epoch, steps per epoch) for the configured source."""
    d, t = cfg.data, cfg.train
    if d.source == "simulate":
        ds = SimulatedStream(d.simulator_class, d.simulator, grid, cfg.normalisation, head, t.batch_size,
                             int(t.steps_per_epoch), t.seed, tuple(d.z_range), d.z_sampling, cfg.loss.label_sigma)
        return make_loader(ds, d.num_workers, prefetch_factor=d.prefetch_factor, pin_memory=pin_memory), ds, len(ds)
    ds = ShardDataset(d.shards, head, grid, cfg.normalisation, cfg.loss.label_sigma, split=d.split)
    sampler = EpochBatchSampler(len(ds), t.batch_size, t.seed, t.steps_per_epoch)
    if len(sampler) == 0:
        raise ValueError(f"{d.shards}: {len(ds)} rows give no full batch of {t.batch_size}")
    loader = make_loader(ds, d.num_workers, sampler=sampler, prefetch_factor=d.prefetch_factor, pin_memory=pin_memory)
    return loader, sampler, len(sampler)


def validation_sets(cfg: Config, grid) -> list[ArraySet]:
    """The configured validation sets, primary first (simulated, shards, real)."""
    v, d = cfg.validation, cfg.data
    sets = []
    if v.n_simulated > 0 and d.source == "simulate":
        sets.append(simulated_set(d.simulator_class, d.simulator, grid, cfg.normalisation, v.n_simulated, v.seed,
                                  tuple(d.z_range), v.z_sampling))
    if v.shards:
        sets.append(shard_set(v.shards, grid, cfg.normalisation, cfg.head, v.shards_split, v.shards_limit))
    if v.real_dir:
        sets.append(real_set(v.real_dir, v.real_catalog, grid, cfg.normalisation))
    return sets


def _autocast(device: torch.device, cfg: Config):
    if device.type == "cuda" and cfg.train.amp:
        return torch.autocast("cuda", dtype=getattr(torch, cfg.train.amp_dtype))
    return nullcontext()


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, x: np.ndarray, device: torch.device, batch_size: int,
                    cfg: Config | None = None, head: dict | None = None) -> dict[str, torch.Tensor]:
    """Raw network outputs by graph output name (float32, CPU) for x (n, npix), in eval mode."""
    head = head if head is not None else (cfg.head if cfg is not None else model.head)
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32))[:, None, :].to(device)
        with _autocast(device, cfg) if cfg is not None else nullcontext():
            for name, value in named_outputs(model(xb), head).items():
                outs.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(parts) for name, parts in outs.items()}


def validate(model: torch.nn.Module, vset: ArraySet, cfg: Config, device: torch.device) -> tuple[dict, dict]:
    """(summary for the history, full fnet.metrics report) on one validation set."""
    outputs = predict_outputs(model, vset.x, device, cfg.validation.batch_size, cfg)
    targets = torch.from_numpy(make_targets(vset.z, cfg.head, cfg.loss.label_sigma))
    loss = float(head_loss(outputs[cfg.head["output"]], targets, cfg.head))
    # scored exactly as fnet-eval and the test-split report score (the runtime's decoder: no drift)
    classes = cfg.head.get("classes")
    truth = np.asarray(classes)[class_indices(vset.spectype, cfg.head, len(vset.z))] if classes else None
    rep = score_outputs({name: value.numpy() for name, value in outputs.items()}, cfg.head, vset.z, truth)
    summary = {
        "n": rep["n"], "loss": loss, "median_abs_dv": rep["median_abs_dv"], "p68_abs_dv": rep["p68_abs_dv"],
        "catastrophic_rate": rep["catastrophic_rate"],
        **{f"frac_{k}": v["fraction"] for k, v in rep["fractions"].items()},
    }
    cal = rep.get("z_err_calibration") or {}
    if "within_1_sigma" in cal:
        summary["z_err_within_1_sigma"] = cal["within_1_sigma"]
    if "classification" in rep:
        summary.update(class_summary(rep["classification"]))
    return summary, rep


def class_summary(classification: dict) -> dict:
    """History numbers from fnet.metrics' classification report: accuracy, recall and z score per true class."""
    counts = np.asarray(classification["counts"])
    summary: dict = {"class_accuracy": float(np.trace(counts) / max(classification["n"], 1))}
    for name, done in classification["completeness"].items():
        if done["n"]:
            z = classification["redshift_by_true_class"][name]
            summary[f"class_recall_{name}"] = done["fraction"]
            summary[f"median_abs_dv_{name}"] = z["median_abs_dv"]
            summary[f"frac_1000_{name}"] = z["fractions"]["1000"]["fraction"]
    return summary


def _metric_value(summary: dict | None, name: str) -> float:
    """A comparable number for best-checkpoint selection (None/NaN count as worst)."""
    v = None if summary is None else summary.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return math.inf if LOWER_IS_BETTER[name] else -math.inf
    return float(v)


def _improved(new: float, old: float | None, name: str) -> bool:
    if old is None:
        return True
    return new < old if LOWER_IS_BETTER[name] else new > old


def _check_compatible(saved: dict, cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint whose network or input differs from the config's."""
    for key in ("arch", "head", "grid", "normalisation"):
        now = cfg.to_dict()[key]
        if saved.get(key) != now:
            raise ValueError(f"{path}: cannot resume, {key} differs (checkpoint {saved.get(key)!r}, config {now!r})")


def _resume_path(cfg: Config, ckpt_dir: Path) -> Path | None:
    r = cfg.train.resume
    if r in (False, None, "", "false", "no"):
        return None
    if r in (True, "auto", "true", "yes"):
        p = ckpt_dir / "last.pt"
        if p.is_file():
            return p
        log.info("resume: no %s yet, starting a new run", p)
        return None
    p = Path(str(r))
    if not p.is_file():
        raise FileNotFoundError(f"train.resume={r!r}: checkpoint not found")
    return p


def _show_progress(cfg: Config) -> bool:
    return sys.stderr.isatty() if cfg.train.progress is None else bool(cfg.train.progress)


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch."""

    cfg: Config
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    use_scaler: bool
    ckpt_dir: Path
    n_params: int
    macs: float
    start_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)


def train(config: Config | str | Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainResult:
    """Train (or resume) a model as the config says; returns paths, best score and the history."""
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    run = _setup(cfg)
    grid = cfg.grid.grid()
    loader, epoch_source, steps = _train_loader(cfg, grid, cfg.head, pin_memory=run.device.type == "cuda")
    vsets = validation_sets(cfg, grid)
    log.info("%s: arch %s, %d parameters, %.3g MAC/spectrum, device %s, %d threads, %d steps/epoch of %d",
             cfg.name, cfg.arch, run.n_params, run.macs, run.device, torch.get_num_threads(), steps,
             cfg.train.batch_size)
    _resume(run)
    show = _show_progress(cfg)
    budget = cfg.train.max_minutes
    deadline = time.perf_counter() + 60.0 * budget if budget is not None else None
    for epoch in range(run.start_epoch, cfg.train.epochs):
        epoch_source.set_epoch(epoch)
        train_loss, n_seen, train_time, wait = _train_epoch(run, loader, epoch, steps, show, deadline)
        tv = time.perf_counter()
        val_summaries, full_reports = {}, {}
        for vs in vsets:
            val_summaries[vs.name], full_reports[vs.name] = validate(run.model, vs, cfg, run.device)
        val_time = time.perf_counter() - tv
        primary = val_summaries[vsets[0].name] if vsets else None
        lr_used = run.optimizer.param_groups[0]["lr"]
        if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.scheduler.step(primary["loss"] if primary else train_loss)  # the authors step on validation loss
        else:
            run.scheduler.step()
        record = {
            "epoch": epoch + 1, "global_step": run.global_step, "lr": lr_used, "train_loss": train_loss,
            "train_spectra": n_seen, "train_time_s": train_time, "data_wait_s": wait,
            "throughput_spectra_per_s": n_seen / train_time if train_time > 0 else None,
            "val_time_s": val_time, "val": val_summaries, "device": str(run.device),
            "threads": torch.get_num_threads(),
        }
        run.history.append(record)
        _save_epoch(run, epoch, record, primary, train_loss, val_summaries, full_reports)
        msg = (f"epoch {epoch + 1}/{cfg.train.epochs} loss {train_loss:.4g} lr {lr_used:.3g} "
               f"{record['throughput_spectra_per_s']:.1f} spectra/s")
        if primary:
            msg += (f" | {vsets[0].name}: loss {primary['loss']:.4g} median|dv| {primary['median_abs_dv']} km/s "
                    f"<6000: {primary.get('frac_6000')}")
        log.info(msg)
        if show:
            tqdm.write(msg)
        if deadline is not None and time.perf_counter() >= deadline:
            log.info("train.max_minutes=%g reached after epoch %d: stopping", budget, epoch + 1)
            break
    best_path = run.ckpt_dir / "best.pt"
    return TrainResult(run.ckpt_dir, run.ckpt_dir / "last.pt", best_path if best_path.exists() else None,
                       run.best["metric"], run.best["value"], run.best["epoch"], run.history)


def _setup(cfg: Config) -> _Run:
    """Seeds, device, checkpoint folder (with the config as run), network, optimiser, schedule, scaler."""
    t = cfg.train
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed % 2**32)
    ckpt_dir = Path(t.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ckpt_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    model = build_model(cfg.arch, cfg.head, cfg.grid.grid()).to(device)
    # before the optimiser is built (it would keep the same parameter objects anyway); state_dict unchanged
    n_fft = convert_convolutions(model, t.fft_conv, device)
    log.info("train.fft_conv=%s: %d convolutions through the FFT", t.fft_conv, n_fft)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg.schedule, t.epochs)
    use_scaler = device.type == "cuda" and t.amp and t.amp_dtype == "float16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv kernels
    return _Run(cfg, device, model, optimizer, scheduler, scaler, use_scaler, ckpt_dir, count_parameters(model),
                count_macs(model), best={"metric": t.best_metric, "value": None, "epoch": None})


def _resume(run: _Run) -> None:
    """Load the state of the checkpoint the config resumes from, if any."""
    path = _resume_path(run.cfg, run.ckpt_dir)
    if path is None:
        return
    state = load_checkpoint(path, run.device)
    _check_compatible(state["config"], run.cfg, path)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _sync_lambda_lr(run.scheduler, run.optimizer, run.cfg.optim.lr)
    if state.get("scaler") and run.use_scaler:
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.start_epoch, run.global_step = int(state["epoch"]), int(state["global_step"])
    run.history, run.best = list(state.get("history", [])), dict(state.get("best", run.best))
    log.info("resumed from %s at epoch %d", path, run.start_epoch)


def _train_epoch(run: _Run, loader, epoch: int, steps: int, show: bool,
                 deadline: float | None = None) -> tuple[float, int, float, float]:
    """One pass of optimiser steps (cut short at the deadline); returns (mean loss, spectra, seconds, data wait s)."""
    cfg, t = run.cfg, run.cfg.train
    run.model.train()
    t0 = time.perf_counter()
    wait = 0.0
    loss_sum, n_seen, n_batches, bad_steps = 0.0, 0, 0, 0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not show, leave=False, dynamic_ncols=True)
    t_wait = time.perf_counter()
    for x, target, _z, class_index in loader:
        wait += time.perf_counter() - t_wait
        x, target = x.to(run.device, non_blocking=True), target.to(run.device, non_blocking=True)
        with _autocast(run.device, cfg):
            out = run.model(x)
        loss = head_loss(out, target, cfg.head)
        if cfg.head.get("classes"):
            loss = loss + cfg.loss.class_weight * class_loss(out, class_index, cfg.head).to(loss.device)
        if not torch.isfinite(loss):
            # fp16 activations can overflow now and then: skip that batch (GradScaler backs off on its
            # own for gradients); in fp32, or when it keeps happening, the run has diverged.
            bad_steps += 1
            if not run.use_scaler or bad_steps > MAX_BAD_STEPS:
                raise FloatingPointError(f"epoch {epoch + 1} step {n_batches}: loss is {loss.item()}")
            log.warning("epoch %d step %d: non-finite loss under fp16 autocast, batch skipped", epoch + 1, n_batches)
            t_wait = time.perf_counter()
            continue
        bad_steps = 0
        _optimizer_step(run, loss)
        n_batches += 1
        n_seen += x.shape[0]
        loss_sum += loss.item() * x.shape[0]
        bar.update(1)
        if show and n_batches % max(1, t.log_every // 5) == 0:
            bar.set_postfix(loss=f"{loss_sum / n_seen:.4g}")
        if deadline is not None and time.perf_counter() >= deadline:
            break  # the time budget is spent: this epoch ends here, is validated and saved
        t_wait = time.perf_counter()
    bar.close()
    return loss_sum / max(n_seen, 1), n_seen, time.perf_counter() - t0, wait


def _optimizer_step(run: _Run, loss: torch.Tensor) -> None:
    """Backward, clip, one optimiser step with linear warm-up applied around the scheduled lr."""
    optim = run.cfg.optim
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if optim.max_grad_norm:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), optim.max_grad_norm)
    warm = min(1.0, (run.global_step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
    scheduled = [g["lr"] for g in run.optimizer.param_groups]
    if warm < 1.0:  # scale around the step only, so the schedule never sees warm-up lrs
        for g in run.optimizer.param_groups:
            g["lr"] *= warm
    run.scaler.step(run.optimizer)
    run.scaler.update()
    for g, lr in zip(run.optimizer.param_groups, scheduled):
        g["lr"] = lr
    run.global_step += 1


def _save_epoch(run: _Run, epoch: int, record: dict, primary: dict | None, train_loss: float,
                val_summaries: dict, full_reports: dict) -> None:
    """Best-checkpoint bookkeeping, last.pt (and best.pt), history.json and val_report.json."""
    t = run.cfg.train
    value = _metric_value(primary, t.best_metric) if primary else train_loss
    is_best = _improved(value, run.best["value"], t.best_metric if primary else "loss")
    if is_best:
        run.best = {"metric": t.best_metric if primary else "train_loss", "value": value, "epoch": epoch + 1}
    record["best"] = is_best
    training_info = {"epochs": epoch + 1, "seed": t.seed, "global_step": run.global_step, "best": run.best,
                     "validation": val_summaries, "params": run.n_params, "macs": run.macs,
                     "data": run.cfg.to_dict()["data"]}
    state = {
        "epoch": epoch + 1, "global_step": run.global_step, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.use_scaler else None, "config": run.cfg.to_dict(),
        "metadata": model_metadata(run.cfg.to_dict(), training_info), "rng": rng_state(),
        "history": run.history, "best": run.best,
    }
    save_checkpoint(run.ckpt_dir / "last.pt", state)
    if is_best:
        save_checkpoint(run.ckpt_dir / "best.pt", state)
    atomic_write_text(run.ckpt_dir / "history.json", json.dumps(_finite(run.history), indent=1))
    if full_reports:
        atomic_write_text(run.ckpt_dir / "val_report.json", json.dumps({"epoch": epoch + 1, **full_reports}, indent=1))


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
