"""Training configuration: a YAML file plus dotted overrides, parsed into a dataclass tree.

    cfg = load_config("lite4x_zbins", ["optim.lr=1e-3", "train.epochs=5"])

Override values are parsed as YAML scalars (``1e-3`` -> float, ``true`` -> bool, ``[1, 2]`` -> list).
Unknown keys are errors (a typo must not silently train the default). ``head`` and
``normalisation`` stay plain dicts: they are copied verbatim into the model package and read by
the runtime, so the training code never reinterprets them. See fnet/configs/*.yaml (load them by name, e.g. "paper").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from ..runtime.constants import PAPER_GRID
from ..runtime.grid import Grid



@dataclass
class GridCfg:
    """The model's log-wavelength grid (exported to the model package)."""

    loglam_start: float = PAPER_GRID["loglam_start"]
    loglam_step: float = PAPER_GRID["loglam_step"]
    npix: int = PAPER_GRID["npix"]

    def grid(self) -> Grid:
        """As a runtime Grid."""
        return Grid(float(self.loglam_start), float(self.loglam_step), int(self.npix))


@dataclass
class DataCfg:
    """Where training spectra come from.

    source "simulate": ``simulator_class`` ("module:Class") is built per worker as
    ``Class(**simulator, seed=...)`` and called as ``.sample(n, z=..., z_range=z_range, rng=rng)``.
    ``z_sampling`` "simulator" leaves z to the simulator (z=None); "uniform" / "log1p" draw z
    uniformly in z / ln(1+z) here. source "shards": ``shards`` is a dataset directory
    (fnet-build-dataset output, layout in the fnet.train.data docstring); ``split`` picks its shards.
    """

    source: Literal["simulate", "shards"] = "simulate"
    simulator_class: str = "fnet.simulate:QuasarSimulator"
    simulator: dict = field(default_factory=dict)
    z_range: tuple[float, float] = (0.0, 7.0)
    z_sampling: Literal["simulator", "uniform", "log1p"] = "simulator"
    shards: str | None = None
    split: str | None = "train"
    num_workers: int = 0
    prefetch_factor: int = 2


@dataclass
class LossCfg:
    """Training-only loss options (not exported)."""

    label_sigma: float = 0.0  # zbins: Gaussian label smoothing width in bins (0 = hard labels)
    class_weight: float = 1.0  # class head: weight of its cross-entropy added to the redshift loss


@dataclass
class OptimCfg:
    """Adam and gradient clipping."""

    lr: float = 2.4e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1000.0  # the authors' value; None disables clipping
    warmup_steps: int = 0  # linear lr warm-up over the first optimiser steps (0 = off, the paper)


@dataclass
class ScheduleCfg:
    """Learning-rate schedule, stepped once per epoch.

    "paper_step": lr x gamma at the epoch fractions in ``milestones`` (paper: 75/85/90 of 100).
    "plateau": ReduceLROnPlateau on the validation loss (the authors' code: factor 0.2, patience 1).
    "constant": no change.
    """

    kind: Literal["paper_step", "plateau", "constant"] = "paper_step"
    milestones: tuple[float, ...] = (0.75, 0.85, 0.90)
    gamma: float = 0.1
    factor: float = 0.2
    patience: int = 1
    min_lr: float = 0.0
    plateau_eps: float = 1e-7

    def milestone_epochs(self, epochs: int) -> list[int]:
        """Milestones in epochs for a run of `epochs` (the paper's fractions scaled to the run)."""
        return sorted({max(1, int(round(f * epochs))) for f in self.milestones})


@dataclass
class TrainCfg:
    """Run length, batch, devices, checkpoints."""

    epochs: int = 100
    # wall-clock budget of one invocation in minutes (None: none): the epoch under way stops at its next step
    # once it is spent, is validated and saved, and the run ends (fnet-gpu-check trains within its budget so)
    max_minutes: float | None = None
    steps_per_epoch: int | None = 1000  # None: one pass over the shards (source "shards" only)
    batch_size: int = 128
    seed: int = 1127802826  # the authors' notebook seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # autocast + GradScaler on CUDA; ignored on CPU
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    num_threads: int = 0  # torch intra-op threads on CPU (0 = torch default)
    # convolutions through the FFT (fnet.train.fft_conv): "auto" = its AUTO_RULE (wide kernels on CPU),
    # "on" = every kernel > 1, "off" = torch's Conv1d. Same parameters and checkpoints either way.
    fft_conv: Literal["auto", "on", "off"] = "auto"
    checkpoint_dir: str = "runs/default"
    resume: bool | str = False  # True/"auto": resume from checkpoint_dir/last.pt when present; or a path
    best_metric: Literal["median_abs_dv", "frac_6000"] = "median_abs_dv"  # lower / higher is better
    progress: bool | None = None  # None: tqdm bars only on a TTY
    log_every: int = 50


@dataclass
class ValidationCfg:
    """Validation run after every epoch."""

    n_simulated: int = 2000  # fixed-seed simulated set (0 = none)
    # redshifts of that set: "uniform" in z (every range represented) or "simulator" (its own draw, e.g. the
    # class mix of SpectrumMixSimulator, whose stars need z ~ 0)
    z_sampling: Literal["simulator", "uniform", "log1p"] = "uniform"
    seed: int = 20240601
    batch_size: int = 256
    shards: str | None = None  # optional pre-built dataset (e.g. the same as data.shards) ...
    shards_split: str | None = "val"  # ... and which split of it validates
    shards_limit: int | None = None  # at most this many rows of it (None: all)
    real_dir: str | None = None  # optional directory of real spectra files ...
    real_catalog: str | None = None  # ... and a truth catalog (PLATE/MJD/FIBERID or TARGETID + Z/Z_VI)


@dataclass
class Config:
    """The whole training configuration."""

    name: str = "fnet"
    arch: str = "paper"
    head: dict = field(default_factory=lambda: {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0})
    grid: GridCfg = field(default_factory=GridCfg)
    normalisation: dict = field(default_factory=lambda: {"scheme": "zscore_minmax"})
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    validation: ValidationCfg = field(default_factory=ValidationCfg)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists): YAML/JSON-ready, the form stored in checkpoints."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build from a nested dict; unknown keys raise ValueError."""
        return _build(cls, d, "")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, d: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from dict `d` by its type hints, rejecting unknown keys and wrong values."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {where or '<root>'} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(sorted(where + k for k in unknown))}; "
                         f"known in {where or '<root>'}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _convert(value, hints[name], f"{where}{name}") for name, value in d.items()})


def _convert(value: Any, hint: Any, key: str) -> Any:
    """A config value as the type its field declares; ValueError naming the key when it cannot be.

    Numbers may come as strings (PyYAML reads 1e-3, without a dot, as a string; --set gives strings);
    Literal fields accept only their choices (a boolean means "on"/"off" where those are choices);
    X | None accepts null; tuples come as YAML lists.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"config key {key}: {value!r} fits none of {hint}")
    if origin is typing.Literal:
        if isinstance(value, bool) and ("on" in args or "off" in args):
            value = "on" if value else "off"  # YAML 1.1 (PyYAML) reads on/off, yes/no as booleans
        if value not in args:
            raise ValueError(f"config key {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"config key {key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, key) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"config key {key}: {value!r} is not true or false")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"config key {key}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key}: {value!r} is not a number") from None
        if hint is int:
            if not number.is_integer():
                raise ValueError(f"config key {key}: {value!r} is not a whole number")
            return int(number)
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key}: {value!r} is not text")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key}: expected a mapping, got {value!r}")
        return value
    return value


def apply_overrides(d: dict, overrides: Sequence[str]) -> dict:
    """Apply "a.b.c=value" overrides to a nested dict in place (values parsed as YAML) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return d


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_config(path: str | Path) -> Path:
    """A config file path, or the name of a shipped config ("paper", "lite4x_zbins", ...) in fnet/configs."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix == ".yaml" else p.name + ".yaml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(c.stem for c in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"{path}: config not found (shipped configs: {known})")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply dotted overrides, validate, return a Config."""
    d: dict = {}
    if path is not None:
        path = resolve_config(path)
        text = Path(path).read_text()
        d = yaml.safe_load(text) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    apply_overrides(d, overrides)
    cfg = Config.from_dict(d)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that dataclass typing cannot express; raises ValueError."""
    from .heads import validate_head
    from .model import ARCHS, POOLED

    cfg.head = validate_head(cfg.head)
    if cfg.arch not in ARCHS and cfg.arch not in POOLED:
        raise ValueError(f"arch {cfg.arch!r} unknown; known: {', '.join(list(ARCHS) + list(POOLED))}")
    if cfg.data.source == "shards" and not cfg.data.shards:
        raise ValueError("data.source 'shards' needs data.shards (a directory)")
    if cfg.train.steps_per_epoch is None and cfg.data.source != "shards":
        raise ValueError("train.steps_per_epoch must be set for a simulated (endless) stream")
    if cfg.loss.label_sigma and cfg.head["kind"] != "zbins":
        raise ValueError("loss.label_sigma applies to zbins heads only")
    if cfg.validation.real_dir and not cfg.validation.real_catalog:
        raise ValueError("validation.real_dir needs validation.real_catalog (true redshifts)")
