"""Training configs (fnet.train.config): typed by the dataclasses' own hints, refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fnet.train.config import Config, load_config

SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "fnet" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_and_round_trips(name):
    cfg = load_config(name)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_values_are_converted_to_the_declared_types():
    cfg = load_config("smoke", ["optim.lr=1e-3", "train.epochs=3", "optim.betas=[0.8, 0.99]",
                                "schedule.milestones=[0.5]", "train.amp=no", "optim.max_grad_norm=null"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # YAML reads 1e-3 as a string
    assert cfg.train.epochs == 3 and cfg.optim.betas == (0.8, 0.99) and cfg.schedule.milestones == (0.5,)
    assert cfg.train.amp is False and cfg.optim.max_grad_norm is None


@pytest.mark.parametrize("override, words", [
    ("data.source=disk", "data.source: 'disk' is not one of 'simulate', 'shards'"),
    ("schedule.kind=cosine", "schedule.kind"),
    ("train.epochs=2.5", "train.epochs: 2.5 is not a whole number"),
    ("optim.lr=fast", "optim.lr: 'fast' is not a number"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
    ("train.amp=maybe", "train.amp"),
    ("train.epoch=3", "unknown config key(s) train.epoch"),
    ("grid=4", "config section grid. must be a mapping"),
])
def test_wrong_values_are_refused_naming_the_key(override, words):
    with pytest.raises(ValueError) as err:
        load_config("smoke", [override])
    assert words in str(err.value)


def test_the_class_model_comparison_recipes_differ_only_in_the_network():
    # docs/models.md compares lite4x (FNet family) with pooled4x (the 2.0.0 default) "on the same data and budget":
    # that holds only while the two recipes agree on everything but the architecture and the run's names
    lite, default = load_config("classes_lite4x").to_dict(), load_config("classes_pooled4x").to_dict()
    for cfg in (lite, default):
        cfg.pop("arch"), cfg.pop("name"), cfg["train"].pop("checkpoint_dir")
    assert lite == default
