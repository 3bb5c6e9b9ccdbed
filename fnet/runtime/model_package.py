"""The model package contract: one ONNX file whose metadata_props tell the runtime everything.

Keys are documented in docs/model-package.md. Values are strings; structured values are JSON.
A serialized TensorRT engine cannot carry metadata, so it travels with a JSON sidecar
(`<engine>.json`) holding the same key/value map, written by fnet-export.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelPackageError
from .grid import Grid
from .heads import validate_head
from .preprocess import SCHEMES

CONTRACT_VERSION = "1"
PREFIX = "fnet."
REQUIRED_KEYS = ("contract_version", "model_name", "model_version", "architecture", "grid", "normalisation",
                 "head", "z_range", "input_name")
JSON_KEYS = ("grid", "normalisation", "head", "z_range", "quality", "training", "parity")
# Defaults for the ZWARN thresholds when a package does not set fnet.quality.
DEFAULT_QUALITY = {"min_coverage": 0.5, "min_sn_median": 1.0, "max_dv_err_kms": 3000.0, "max_secondary_mass": 0.3}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class ModelPackage:
    """Everything the runtime knows about a model, read from its metadata (nothing hard-coded)."""

    path: Path
    sha256: str
    name: str
    version: str
    architecture: str
    grid: Grid
    normalisation: dict
    head: dict
    z_range: tuple[float, float]
    input_name: str
    quality: dict = field(default_factory=lambda: dict(DEFAULT_QUALITY))
    training: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_engine(self) -> bool:
        """True for a serialized TensorRT engine (metadata from its JSON sidecar)."""
        return self.path.suffix in ENGINE_SUFFIXES

    @classmethod
    def from_metadata(cls, path: str | Path, metadata: dict[str, str], sha256: str = "") -> "ModelPackage":
        """Validate a metadata_props map and build the package description."""
        path = Path(path)
        missing = [PREFIX + k for k in REQUIRED_KEYS if PREFIX + k not in metadata]
        if missing:
            raise ModelPackageError(path, f"not an FNet model package: metadata lacks {', '.join(missing)} "
                                          "(see docs/model-package.md)")
        if metadata[PREFIX + "contract_version"] != CONTRACT_VERSION:
            raise ModelPackageError(path, f"contract version {metadata[PREFIX + 'contract_version']!r} "
                                          f"is not supported (this runtime reads {CONTRACT_VERSION!r})")
        parsed: dict[str, Any] = {}
        for key in JSON_KEYS:
            raw = metadata.get(PREFIX + key)
            if raw is None:
                continue
            try:
                parsed[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ModelPackageError(path, f"metadata {PREFIX + key} is not valid JSON: {exc}") from None
        try:
            grid = Grid.from_dict(parsed["grid"])
            z_lo, z_hi = (float(v) for v in parsed["z_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelPackageError(path, f"metadata grid/z_range malformed: {exc}") from None
        if grid.npix <= 0 or grid.loglam_step <= 0:
            raise ModelPackageError(path, f"metadata {PREFIX}grid needs npix > 0 and loglam_step > 0: {grid}")
        try:
            head = validate_head(parsed["head"])
        except ValueError as exc:
            raise ModelPackageError(path, f"metadata {PREFIX}head: {exc}") from None
        norm = parsed["normalisation"]
        if not isinstance(norm, dict) or norm.get("scheme") not in SCHEMES:
            raise ModelPackageError(path, f"metadata {PREFIX}normalisation must name a scheme in {SCHEMES}: {norm!r}")
        if not isinstance(parsed.get("quality", {}), dict):
            raise ModelPackageError(path, f"metadata {PREFIX}quality must be a JSON object")
        quality = dict(DEFAULT_QUALITY)
        quality.update(parsed.get("quality", {}))
        return cls(path=path, sha256=sha256, name=metadata[PREFIX + "model_name"],
                   version=metadata[PREFIX + "model_version"], architecture=metadata[PREFIX + "architecture"],
                   grid=grid, normalisation=norm, head=head, z_range=(z_lo, z_hi),
                   input_name=metadata[PREFIX + "input_name"], quality=quality,
                   training=parsed.get("training", {}), parity=parsed.get("parity", {}), metadata=dict(metadata))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file, read through onnxruntime (the onnx package is not a runtime dependency)."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelPackageError(path, f"cannot load ONNX model: {exc}") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def engine_sidecar(path: str | Path) -> Path:
    """Path of the JSON metadata sidecar that travels with a TensorRT engine."""
    return Path(str(path) + ".json")


def load_model_package(path: str | Path, metadata: dict[str, str] | None = None) -> ModelPackage:
    """Read and validate an ONNX model package or a TensorRT engine with its sidecar."""
    path = Path(path)
    if not path.is_file():
        raise ModelPackageError(path, "model file not found")
    if metadata is None:
        if path.suffix in ENGINE_SUFFIXES:
            sidecar = engine_sidecar(path)
            if not sidecar.is_file():
                raise ModelPackageError(path, f"TensorRT engine without its metadata sidecar {sidecar.name}")
            try:
                metadata = json.loads(sidecar.read_text())
            except json.JSONDecodeError as exc:
                raise ModelPackageError(path, f"metadata sidecar {sidecar.name} is not valid JSON: {exc}") from None
        else:
            metadata = read_onnx_metadata(path)
    return ModelPackage.from_metadata(path, metadata, sha256=file_sha256(path))


def build_metadata(*, model_name: str, model_version: str, architecture: str, grid: Grid, normalisation: dict,
                   head: dict, z_range: tuple[float, float], input_name: str = "flux",
                   quality: dict | None = None, training: dict | None = None,
                   parity: dict | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata_props map for a model package (used by fnet-export and by tests)."""
    meta = {
        "contract_version": CONTRACT_VERSION,
        "model_name": model_name,
        "model_version": model_version,
        "architecture": architecture,
        "grid": json.dumps(grid.to_dict()),
        "normalisation": json.dumps(normalisation),
        "head": json.dumps(head),
        "z_range": json.dumps([float(z_range[0]), float(z_range[1])]),
        "input_name": input_name,
    }
    for key, value in (("quality", quality), ("training", training), ("parity", parity)):
        if value is not None:
            meta[key] = json.dumps(value)
    out = {PREFIX + k: v for k, v in meta.items()}
    out.update(extra or {})
    return out
