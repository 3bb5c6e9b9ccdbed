"""The FNet family: a 1-D ResNet without pooling, then a small fully connected head.

``paper`` is the network exactly as the authors coded it (AGNNet/FNet, notebook
``ResNet-8-DR12Q-Redshift.ipynb``, class ``Residual`` / ``resnet()``):

- 8 residual units in 4 stages, channels 1->32 (x5 units), 32->64, 64->32, 32->1;
- each unit: Conv1d(k=500, pad=250) -> BN -> ReLU -> Conv1d(k=200, pad=100) -> BN -> ReLU
  -> Conv1d(k=15, pad=6) -> BN, added to the shortcut, then ReLU. Lengths: L -> L+1 -> L+2 -> L,
  so the spectrum length is preserved without any pooling;
- shortcut: the authors pass ``use_1x1conv=True`` to the FIRST unit of every stage and the identity
  to the others. In this layout the first unit of a stage is exactly the unit whose channel count
  changes, so the rule is "1x1 conv (with bias, NO BatchNorm) when channels change, identity
  otherwise". We keep it that way (no BN on the shortcut) because the parameter count and the
  function must match the published model; a BN there would be a different network;
- Flatten (1 channel x npix = 4618) -> Linear 796 -> ReLU -> Linear 199 -> ReLU -> head Linear;
- weights: He-normal (kaiming_normal_, fan_out, ReLU gain) for the convolutions, BN at (1, 0),
  PyTorch defaults for the linear layers. (The notebook relies on PyTorch's default init; the
  paper states He initialisation, which is what we follow.)

Reduced members of the same family (same residual layout and shortcut rule, same "length
preserved, no pooling, flatten" design) run on a coarser grid so that the kernels keep their
physical width in log-wavelength (the grid is part of the training config and of the model
package; the runtime rebins straight onto it):

| arch       | grid step, npix | width | kernels (paddings)       | FC      | params*    | MAC/spectrum* |
|------------|-----------------|-------|--------------------------|---------|------------|---------------|
| paper      | 1e-4 dex, 4618  | 32/64 | 500/200/15 (250/100/6)   | 796/199 | 10,171,944 | 29.262 G      |
| lite4x     | 4e-4 dex, 1155  | 8/16  | 125/50/4 (62/25/1)       | 256/64  |    413,953 | 0.1169 G      |
| lite4x_w16 | 4e-4 dex, 1155  | 16/32 | 125/50/4 (62/25/1)       | 256/64  |    713,025 | 0.4617 G      |
| tiny       | any (tests)     | 4/8   | 31/13/3 (15/6/1)         | 32/16   | 26,251 (npix 578) | 3.99 M |

(*) with the regression head (1 output); a zbins head with K bins adds (K - 1) x (last FC + 1)
parameters: 200 (K - 1) for paper, 65 (K - 1) for lite4x. MACs are the multiply-accumulates of
the convolutions and linear layers for ONE spectrum (BN/ReLU/additions excluded), measured by
``count_macs``; for paper the convolutions are 29.2585 G and the FC layers 3.83 M. The paper's
29.3 GMAC make it ~250x dearer than lite4x; lite4x keeps the paper's layout at width 8 because
width 16 costs 4x the MACs and trains ~2.5x slower on 2 CPU cores (measured 9.3 vs 3.6
spectra/s on one core).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from fnet.runtime.grid import Grid

from .heads import class_count, head_out_features, validate_head


@dataclass(frozen=True)
class ArchSpec:
    """Hyper-parameters of one FNet family member; the grid comes from the config, not from here."""

    name: str
    stages: tuple[tuple[int, int, int], ...]  # (in_channels, out_channels, n_units) per stage
    kernels: tuple[int, int, int]
    paddings: tuple[int, int, int]
    fc: tuple[int, ...]  # hidden sizes after the flatten
    loglam_step: float | None = None  # the grid step the kernels were sized for (None: any)
    notes: str = ""


def _family(width: int) -> tuple[tuple[int, int, int], ...]:
    """The paper's stage layout for a base width w: 1->w (x5), w->2w, 2w->w, w->1."""
    return ((1, width, 5), (width, 2 * width, 1), (2 * width, width, 1), (width, 1, 1))


ARCHS: dict[str, ArchSpec] = {
    "paper": ArchSpec("paper", _family(32), (500, 200, 15), (250, 100, 6), (796, 199), 1e-4,
                      "Rastegar Nia et al. FNet, exactly as in the authors' code"),
    "lite4x": ArchSpec("lite4x", _family(8), (125, 50, 4), (62, 25, 1), (256, 64), 4e-4,
                       "4x coarser grid, kernels /4, width 8: ~1 h of training on 2 CPU cores"),
    "lite4x_w16": ArchSpec("lite4x_w16", _family(16), (125, 50, 4), (62, 25, 1), (256, 64), 4e-4,
                           "lite4x at width 16: 4x the MACs, for a GPU or a longer CPU run"),
    "tiny": ArchSpec("tiny", _family(4), (31, 13, 3), (15, 6, 1), (32, 16), None,
                     "for tests and smoke runs only"),
}


def _out_len(length: int, k: int, p: int) -> int:
    return length + 2 * p - k + 1


class ResidualUnit(nn.Module):
    """Three convolutions with BN/ReLU plus a shortcut; length in == length out."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, int, int], paddings: tuple[int, int, int]):
        super().__init__()
        length = 1000  # any length: the check is on the net change
        for k, p in zip(kernels, paddings):
            length = _out_len(length, k, p)
        if length != 1000:
            raise ValueError(f"kernels {kernels} with paddings {paddings} change the length by {length - 1000}")
        (k1, k2, k3), (p1, p2, p3) = kernels, paddings
        self.conv1 = nn.Conv1d(cin, cout, k1, padding=p1)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, k2, padding=p2)
        self.bn2 = nn.BatchNorm1d(cout)
        self.conv3 = nn.Conv1d(cout, cout, k3, padding=p3)
        self.bn3 = nn.BatchNorm1d(cout)
        # Authors' rule: 1x1 conv (no BN) where channels change, identity otherwise.
        self.shortcut = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = ReLU(BN(conv3(ReLU(BN(conv2(ReLU(BN(conv1 x)))))) + shortcut(x))."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


class FNet(nn.Module):
    """FNet: residual stages, flatten, FC layers, head. Input (N, 1, npix) float32 "flux"."""

    def __init__(self, spec: ArchSpec, head: dict, grid: Grid):
        super().__init__()
        self.spec = spec
        self.head = validate_head(head)
        self.grid = grid
        units: list[nn.Module] = []
        for cin, cout, n in spec.stages:
            for i in range(n):
                units.append(ResidualUnit(cin if i == 0 else cout, cout, spec.kernels, spec.paddings))
        self.features = nn.Sequential(*units)
        last_channels = spec.stages[-1][1]
        layers: list[nn.Module] = [nn.Flatten()]
        width = last_channels * grid.npix
        for hidden in spec.fc:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.fc = nn.Sequential(*layers)
        self.out = nn.Linear(width, head_out_features(self.head))
        # the class head reads the same last hidden layer as the redshift head (trained jointly)
        n_classes = class_count(self.head)
        self.cls = nn.Linear(width, n_classes) if n_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def output_name(self) -> str:
        """ONNX output name the runtime expects (head["output"])."""
        return self.head["output"]

    def metadata(self) -> dict:
        """Architecture, head and grid as JSON-ready dicts (what the model package stores)."""
        return {"arch": self.spec.name, "head": dict(self.head), "grid": self.grid.to_dict()}

    def forward(self, flux: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, npix) -> (N, 1) scaled z (regression) or (N, K) logits (zbins); plus (N, C) class logits."""
        hidden = self.fc(self.features(flux))
        return self.out(hidden) if self.cls is None else (self.out(hidden), self.cls(hidden))


@dataclass(frozen=True)
class PooledSpec:
    """A small pooled CNN (NOT the FNet family): conv pairs + max-pool halving the length each block."""

    name: str
    channels: tuple[int, ...]
    kernel: int
    fc: int
    loglam_step: float | None = None
    notes: str = ""


POOLED: dict[str, PooledSpec] = {
    "pooled4x": PooledSpec("pooled4x", (16, 32, 48, 64, 64), 9, 256, 4e-4,
                           "CPU-speed CNN on the 4x grid: ~8x fewer MACs than lite4x, ~8x more spectra per "
                           "second of training; the architecture of the embedded default model"),
}


class PooledCNN(nn.Module):
    """Conv-BN-ReLU pairs with max-pooling, flatten, one hidden FC layer, head. Input (N, 1, npix)."""

    def __init__(self, spec: PooledSpec, head: dict, grid: Grid):
        super().__init__()
        self.spec = spec
        self.head = validate_head(head)
        self.grid = grid
        blocks: list[nn.Module] = []
        cin, length, pad = 1, grid.npix, spec.kernel // 2
        for cout in spec.channels:
            blocks += [nn.Conv1d(cin, cout, spec.kernel, padding=pad), nn.BatchNorm1d(cout), nn.ReLU(),
                       nn.Conv1d(cout, cout, spec.kernel, padding=pad), nn.BatchNorm1d(cout), nn.ReLU(),
                       nn.MaxPool1d(2)]
            cin, length = cout, length // 2
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * length, spec.fc), nn.ReLU())
        self.out = nn.Linear(spec.fc, head_out_features(self.head))
        n_classes = class_count(self.head)
        self.cls = nn.Linear(spec.fc, n_classes) if n_classes else None
        FNet._init_weights(self)

    output_name = FNet.output_name
    metadata = FNet.metadata
    forward = FNet.forward


def build_model(arch: str, head: dict, grid: Grid) -> nn.Module:
    """Build a network by name ("paper", "lite4x", "tiny", "pooled4x", ...) for a head and a grid."""
    spec = POOLED.get(arch) or ARCHS.get(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(list(ARCHS) + list(POOLED))}")
    if spec.loglam_step is not None and abs(grid.loglam_step / spec.loglam_step - 1) > 1e-6:
        # Kernels are sized in pixels for one physical width; another step is another network.
        raise ValueError(f"arch {arch!r} is sized for loglam_step {spec.loglam_step}, grid has {grid.loglam_step}")
    return PooledCNN(spec, head, grid) if arch in POOLED else FNet(spec, head, grid)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, npix: int | None = None) -> int:
    """Multiply-accumulates for ONE spectrum: Conv1d and Linear layers, measured with forward hooks.

    Runs on a meta-device copy of the model, so it is instant and allocates nothing.
    """
    if npix is None:
        npix = model.grid.npix  # type: ignore[attr-defined]
    if isinstance(model, FNet):
        with torch.device("meta"):  # a parameter-free twin: no copy of the weights
            meta = FNet(model.spec, model.head, model.grid).eval()
    else:
        meta = copy.deepcopy(model).to("meta").eval()
    total = [0]

    def conv_hook(m: nn.Conv1d, inp, out) -> None:
        total[0] += out.shape[0] * out.shape[1] * out.shape[2] * (m.in_channels // m.groups) * m.kernel_size[0]

    def linear_hook(m: nn.Linear, inp, out) -> None:
        total[0] += out.numel() // out.shape[-1] * m.in_features * m.out_features

    for m in meta.modules():
        if isinstance(m, nn.Conv1d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.no_grad():
        meta(torch.empty(1, 1, npix, device="meta"))
    return total[0]


@dataclass
class ModelSummary:
    """Size numbers reported in docs and logs."""

    arch: str
    params: int
    macs: int
    npix: int
    extra: dict = field(default_factory=dict)


def summarise(model: FNet) -> ModelSummary:
    """Parameters and MACs of a built model."""
    return ModelSummary(model.spec.name, count_parameters(model), count_macs(model), model.grid.npix)
