"""Config, data streams, schedules, the training loop with checkpoint/resume, and the paper config on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fnet.runtime.grid import Grid
from fnet.train.checkpoint import load_checkpoint, load_model
from fnet.train.config import Config, ScheduleCfg, load_config
from fnet.dataset import write_shard
from fnet.train.data import (EpochBatchSampler, ShardDataset, SimulatedStream, ToySimulator, make_loader, real_set,
                             simulate_prepared)
from fnet.train.loop import build_scheduler, train

from conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "fnet" / "configs"
SMOKE = CONFIGS / "smoke.yaml"
TOY = "fnet.train.data:ToySimulator"
SMALL_GRID = Grid(3.5522, 8e-4, 578)
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}
ZB = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}


@pytest.fixture(autouse=True)
def restore_threads():
    """train() sets torch's thread count from the config; put it back for the other test modules."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def smoke_overrides(tmp: Path, *extra: str) -> list[str]:
    return [f"train.checkpoint_dir={tmp}", "train.progress=false", *extra]


# ------------------------------------------------------------------------------------------------ config


def test_every_shipped_config_loads():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"paper.yaml", "paper_zbins.yaml", "lite4x_zbins.yaml", "lite4x_regression.yaml", "smoke.yaml"} <= names
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.grid.grid().npix == cfg.grid.npix
    paper = load_config(CONFIGS / "paper.yaml")
    assert (paper.arch, paper.head["kind"], paper.optim.lr, paper.train.epochs) == ("paper", "regression", 2.4e-4, 100)
    assert paper.schedule.kind == "paper_step" and paper.optim.weight_decay == 1e-5
    lite = load_config(CONFIGS / "lite4x_zbins.yaml")
    assert (lite.grid.loglam_step, lite.grid.npix) == (4e-4, 1155)


def test_overrides_and_unknown_keys():
    cfg = load_config(SMOKE, ["optim.lr=3e-3", "train.epochs=5", "schedule.milestones=[0.5, 0.9]",
                              "head.nbins=32", "data.simulator.snr=4"])
    assert cfg.optim.lr == 3e-3 and cfg.train.epochs == 5
    assert cfg.schedule.milestones == (0.5, 0.9) and cfg.head["nbins"] == 32
    assert cfg.data.simulator == {"snr": 4}
    assert Config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # round trip through plain dicts
    with pytest.raises(ValueError, match="optim.lrr"):
        load_config(SMOKE, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="schedule.kind"):
        load_config(SMOKE, ["schedule.kind=cosine"])
    with pytest.raises(ValueError, match="label_sigma"):
        load_config(SMOKE, ["head.kind=regression", "head.nbins=null"])


# ------------------------------------------------------------------------------------------------ schedules


def _lrs(sched_cfg: ScheduleCfg, epochs: int) -> list[float]:
    opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    sched = build_scheduler(opt, sched_cfg, epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_paper_step_schedule_drops_at_75_85_90_percent():
    lrs = _lrs(ScheduleCfg(kind="paper_step"), 100)
    assert lrs[:75] == [1.0] * 75
    np.testing.assert_allclose(lrs[75:85], 0.1)
    np.testing.assert_allclose(lrs[85:90], 0.01)
    np.testing.assert_allclose(lrs[90:], 0.001)
    short = _lrs(ScheduleCfg(kind="paper_step"), 20)  # scaled to the run: epochs 15, 17, 18
    np.testing.assert_allclose(short, [1.0] * 15 + [0.1] * 2 + [0.01] + [0.001] * 2)


def test_plateau_schedule_reduces_on_stalled_loss():
    opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    sched = build_scheduler(opt, ScheduleCfg(kind="plateau", factor=0.2, patience=1), 10)
    for loss in (1.0, 0.5, 0.6, 0.7):
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------------ data


def test_simulated_stream_is_deterministic_and_worker_independent():
    ds = SimulatedStream(TOY, {}, SMALL_GRID, NORM, ZB, batch_size=4, steps=4, seed=11, z_sampling="uniform",
                         label_sigma=1.0)
    ds.set_epoch(2)
    serial = list(make_loader(ds, num_workers=0))
    parallel = list(make_loader(ds, num_workers=2))
    assert len(serial) == len(parallel) == 4
    for (xa, ta, za, ca), (xb, tb, zb, cb) in zip(serial, parallel):
        assert xa.shape == (4, 1, 578) and xa.dtype == torch.float32 and ta.shape == (4, 64)
        assert ca.dtype == torch.int64 and not ca.any()  # a head without classes: all class 0
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(za, zb)
    ds.set_epoch(3)
    assert not torch.equal(next(iter(make_loader(ds)))[0], serial[0][0])  # a new epoch, new spectra


def test_shards_round_trip_and_contract(tmp_path):
    rng = np.random.default_rng(0)
    x, z = simulate_prepared(ToySimulator(seed=1), 30, SMALL_GRID, NORM, (0.0, 7.0), rng, "uniform")
    write_shard(tmp_path / "shard-00000", x[:20], z[:20], SMALL_GRID, NORM)
    write_shard(tmp_path / "shard-00001", x[20:], z[20:], SMALL_GRID, NORM, split="val")
    train_ds = ShardDataset(tmp_path, ZB, SMALL_GRID, NORM, split="train")
    assert len(train_ds) == 20
    xb, tb, zb, cb = train_ds[[3, 0, 19]]
    assert cb.tolist() == [0, 0, 0]
    np.testing.assert_allclose(xb[:, 0].numpy(), x[[3, 0, 19]], atol=1e-2, rtol=1e-3)  # float16 on disk
    np.testing.assert_allclose(zb.numpy(), z[[3, 0, 19]], rtol=1e-6)
    both = ShardDataset(tmp_path, ZB, split=None)
    assert len(both) == 30
    np.testing.assert_allclose(both.arrays([25])[1], z[25:26], rtol=1e-6)  # across the shard boundary
    with pytest.raises(ValueError, match="grid"):
        ShardDataset(tmp_path, ZB, Grid(3.5522, 4e-4, 1155), NORM)
    with pytest.raises(ValueError, match="normalisation"):
        ShardDataset(tmp_path, ZB, SMALL_GRID, {"scheme": "zscore_minmax"})
    sampler = EpochBatchSampler(len(train_ds), 8, seed=0)
    batches = list(make_loader(train_ds, sampler=sampler, num_workers=1))  # memmaps reopened in the worker
    assert len(batches) == 2 and batches[0][0].shape == (8, 1, 578)


@pytest.mark.slow
def test_train_from_shards(tmp_path):
    rng = np.random.default_rng(0)
    x, z = simulate_prepared(ToySimulator(seed=1), 48, SMALL_GRID, NORM, (0.0, 7.0), rng, "uniform")
    write_shard(tmp_path / "data" / "shard-00000", x[:32], z[:32], SMALL_GRID, NORM)
    write_shard(tmp_path / "data" / "shard-00001", x[32:], z[32:], SMALL_GRID, NORM, split="val")
    res = train(SMOKE, smoke_overrides(tmp_path / "run", "data.source=shards", f"data.shards={tmp_path / 'data'}",
                                       "train.steps_per_epoch=null", "train.epochs=1", "validation.n_simulated=0",
                                       f"validation.shards={tmp_path / 'data'}"))
    rec = res.history[0]
    assert rec["train_spectra"] == 32 and "shards_val" in rec["val"] and rec["val"]["shards_val"]["n"] == 16


# ------------------------------------------------------------------------------------------------ loop


def test_smoke_run_checkpoints_and_resumes_exactly(tmp_path):
    # Uninterrupted two epochs ...
    full = train(SMOKE, smoke_overrides(tmp_path / "full"))
    # ... and one epoch, then a resume to two: the same weights, the same history.
    first = train(SMOKE, smoke_overrides(tmp_path / "split", "train.epochs=1"))
    assert first.last_checkpoint.is_file() and len(first.history) == 1
    resumed = train(SMOKE, smoke_overrides(tmp_path / "split", "train.epochs=2", "train.resume=true"))
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a = load_checkpoint(full.last_checkpoint)["model"]
    b = load_checkpoint(resumed.last_checkpoint)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert resumed.history[1]["train_loss"] == pytest.approx(full.history[1]["train_loss"], rel=1e-4)

    hist = json.loads((tmp_path / "split" / "history.json").read_text())
    assert len(hist) == 2
    for rec in hist:
        assert rec["throughput_spectra_per_s"] > 0 and rec["train_spectra"] == 4 * 16
        val = rec["val"]["simulated"]
        assert val["n"] == 64 and 0.0 <= val["frac_6000"] <= 1.0 and val["median_abs_dv"] > 0
    assert (tmp_path / "split" / "val_report.json").is_file()
    assert resumed.best_checkpoint is not None and resumed.best_checkpoint.is_file()

    model, meta = load_model(resumed.last_checkpoint)
    assert meta["arch"] == "tiny" and meta["head"]["nbins"] == 64 and meta["grid"]["npix"] == 578
    assert meta["normalisation"] == NORM and meta["z_range"] == [0.0, 7.0] and meta["epoch"] == 2
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 578)).shape == (2, 64)


def test_resume_refuses_a_different_network(tmp_path):
    train(SMOKE, smoke_overrides(tmp_path, "train.epochs=1", "train.steps_per_epoch=1", "validation.n_simulated=0"))
    with pytest.raises(ValueError, match="head differs"):
        train(SMOKE, smoke_overrides(tmp_path, "train.epochs=2", "train.resume=auto", "head.nbins=32"))


@pytest.mark.slow
def test_paper_config_trains_on_cpu(tmp_path):
    """fnet/configs/paper.yaml as shipped, cut to one step of two spectra (toy simulator: no data files needed)."""
    res = train(CONFIGS / "paper.yaml", smoke_overrides(
        tmp_path, f"data.simulator_class={TOY}", "data.simulator={}", "data.num_workers=0", "train.epochs=1",
        "train.steps_per_epoch=1", "train.batch_size=2", "validation.n_simulated=0", "validation.real_dir=null",
        "validation.real_catalog=null"))  # validation is covered by the smoke run; here it would cost a forward
    rec = res.history[0]
    assert rec["train_spectra"] == 2 and np.isfinite(rec["train_loss"]) and rec["throughput_spectra_per_s"] > 0
    model, meta = load_model(res.last_checkpoint)
    assert meta["arch"] == "paper" and meta["head"]["kind"] == "regression"
    assert meta["grid"] == {"loglam_start": 3.5522, "loglam_step": 1e-4, "npix": 4618}
    assert meta["training"]["params"] == 10_171_944


def test_real_validation_set_reads_shared_spectra():
    data = require_shared("sdss", "dr16")
    vs = real_set(data, data / "cat_for_clustering_plate3655.fits.gz", Grid(3.5522, 4e-4, 1155), NORM)
    assert vs.x.shape[1] == 1155 and len(vs.z) == vs.x.shape[0] >= 60
    assert np.isfinite(vs.x).all() and (vs.z > 0).all()


def test_max_minutes_ends_the_run_after_the_epoch_under_way(tmp_path):
    # a budget spent at the first step: that epoch stops there, is validated and saved, and no other starts
    res = train(SMOKE, smoke_overrides(tmp_path, "train.epochs=5", "train.steps_per_epoch=50",
                                       "train.max_minutes=0.000001"))
    assert len(res.history) == 1
    assert res.history[0]["train_spectra"] == 16  # one batch of 16, then the deadline
    assert res.best_checkpoint is not None and res.best_checkpoint.is_file()
