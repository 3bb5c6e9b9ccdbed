"""What a trained network says about itself in a model package: the metadata an export writes, from a checkpoint.

Training owns this (the checkpoint stores grid, normalisation, head and provenance); export and the
checkpoint evaluator both read it from here, so export depends on training and never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.grid import Grid
from ..runtime.model_package import build_metadata


@dataclass
class PackageInfo:
    """What a model package says about itself besides the graph (from the training checkpoint)."""

    model_name: str
    model_version: str
    architecture: str
    grid: Grid
    normalisation: dict
    head: dict
    z_range: tuple[float, float]
    quality: dict | None = None
    training: dict = field(default_factory=dict)

    def metadata(self, precision: str, parity: dict | None = None) -> dict[str, str]:
        """metadata_props for this package at the given precision."""
        return build_metadata(model_name=self.model_name, model_version=self.model_version,
                              architecture=self.architecture, grid=self.grid, normalisation=self.normalisation,
                              head=self.head, z_range=self.z_range, quality=self.quality, training=self.training,
                              parity=parity, extra={"fnet.precision": precision})


def package_info(meta: dict, model_version: str, name: str | None = None) -> PackageInfo:
    """PackageInfo from a checkpoint's metadata (what fnet.train.checkpoint.load_model returns)."""
    training = dict(meta.get("training", {}))
    training.setdefault("epoch", meta.get("epoch"))
    training.setdefault("best", meta.get("best"))
    return PackageInfo(model_name=name or meta.get("name", "fnet"), model_version=model_version,
                       architecture=meta["arch"], grid=Grid.from_dict(meta["grid"]),
                       normalisation=dict(meta["normalisation"]), head=dict(meta["head"]),
                       z_range=tuple(meta["z_range"]), training=training)
