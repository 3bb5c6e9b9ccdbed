"""The model package contract: one ONNX file whose metadata_props tell the runtime everything.

Keys are documented in docs/model-package.md. Values are strings; structured values are JSON.
A serialized TensorRT engine cannot carry metadata, so it travels with a JSON sidecar
(`<engine>.json`) holding the same key/value map, written by fnet-export.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import class_columns
from .errors import ModelPackageError
from .grid import Grid
from .heads import has_classes, validate_head
from .preprocess import SCHEMES

CONTRACT_VERSION = "2"  # the newest: a class head (fnet.head classes, a second graph output)
# Versions this runtime reads. A package is written with the lowest version that describes it (see
# build_metadata), so a package without a class head stays "1" and still loads in runtimes that read only "1".
SUPPORTED_CONTRACTS = ("1", "2")
PREFIX = "fnet."
REQUIRED_KEYS = ("contract_version", "model_name", "model_version", "architecture", "grid", "normalisation",
                 "head", "z_range", "input_name")
JSON_KEYS = ("grid", "normalisation", "head", "z_range", "quality", "training", "parity")
# Defaults for the ZWARN thresholds when a package does not set fnet.quality.
DEFAULT_QUALITY = {"min_coverage": 0.5, "min_sn_median": 1.0, "max_dv_err_kms": 3000.0, "max_secondary_mass": 0.3,
                   "min_class_prob": 0.9}
# Quality keys contract version 1 does not know (a runtime reading only "1" refuses them): they make a package "2".
CONTRACT_2_QUALITY = ("min_class_prob",)
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

    integrity: str = "checked"  # "checked": fnet.integrity matched; "none": the package predates it

    @classmethod
    def from_metadata(cls, path: str | Path, metadata: dict[str, str], sha256: str = "") -> "ModelPackage":
        """Validate a metadata_props map and build the package description; ModelPackageError names the bad key."""
        path = Path(path)
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise ModelPackageError(path, "metadata must be a map of strings to strings (see docs/model-package.md)")
        missing = [PREFIX + k for k in REQUIRED_KEYS if PREFIX + k not in metadata]
        if missing:
            raise ModelPackageError(path, f"not an FNet model package: metadata lacks {', '.join(missing)} "
                                          "(see docs/model-package.md)")
        contract = metadata[PREFIX + "contract_version"]
        if contract not in SUPPORTED_CONTRACTS:
            raise ModelPackageError(path, f"contract version {contract!r} is not supported (this runtime reads "
                                          f"{', '.join(map(repr, SUPPORTED_CONTRACTS))})")
        parsed: dict[str, Any] = {}
        for key in JSON_KEYS:
            raw = metadata.get(PREFIX + key)
            if raw is None:
                continue
            try:
                parsed[key] = json.loads(raw)
            except (json.JSONDecodeError, RecursionError) as exc:
                why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise ModelPackageError(path, f"metadata {PREFIX + key} is not valid JSON: {why}") from None

        def bad(key: str, why: str) -> ModelPackageError:
            return ModelPackageError(path, f"metadata {PREFIX}{key}: {why}")

        grid = _grid(parsed["grid"], bad)
        z_range = _z_range(parsed["z_range"], bad)
        try:
            head = validate_head(parsed["head"])
        except (ValueError, TypeError) as exc:
            raise bad("head", str(exc)) from None
        norm = parsed["normalisation"]
        if not isinstance(norm, dict) or norm.get("scheme") not in SCHEMES:
            raise bad("normalisation", f"must name a scheme in {SCHEMES}: {_short(norm)}")
        clip = norm.get("clip")
        if clip is not None and not (_is_number(clip) and 0 < clip < float("inf")):
            raise bad("normalisation", f"clip must be a positive number or null, got {_short(clip)}")
        quality = _quality(parsed.get("quality", {}), bad)
        if contract == "1":  # what version 1 cannot say must not hide behind it: older runtimes would misread it
            if has_classes(head):
                raise bad("contract_version", "is '1' but fnet.head has a class head (classes), which needs "
                                              "contract version '2'")
            later = sorted(set(parsed.get("quality", {})) & set(CONTRACT_2_QUALITY))
            if later:
                raise bad("contract_version", f"is '1' but fnet.quality sets {later}, which needs contract "
                                              "version '2'")
        if has_classes(head):  # every class needs its catalog column P_<CLASS>
            try:
                class_columns(head["classes"])
            except ValueError as exc:
                raise bad("head", str(exc)) from None
        for key in ("training", "parity"):
            if not isinstance(parsed.get(key, {}), dict):
                raise bad(key, "must be a JSON object")
        for key in ("model_name", "model_version", "architecture", "input_name"):
            if not metadata[PREFIX + key].strip():
                raise bad(key, "is empty")
        return cls(path=path, sha256=sha256, name=metadata[PREFIX + "model_name"],
                   version=metadata[PREFIX + "model_version"], architecture=metadata[PREFIX + "architecture"],
                   grid=grid, normalisation=norm, head=head, z_range=z_range,
                   input_name=metadata[PREFIX + "input_name"], quality=quality,
                   training=parsed.get("training", {}), parity=parsed.get("parity", {}), metadata=dict(metadata))


def _is_number(value: Any) -> bool:
    """A JSON number (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _grid(value: Any, bad) -> Grid:
    """The grid, checked: finite start in the optical/IR, positive step below 0.01 dex, 1 <= npix <= 10**6."""
    if not isinstance(value, dict):
        raise bad("grid", f"must be a JSON object, got {_short(value)}")
    for key in ("loglam_start", "loglam_step", "npix"):
        if key not in value:
            raise bad("grid", f"lacks {key}")
    start, step, npix = value["loglam_start"], value["loglam_step"], value["npix"]
    if not (_finite(start) and 2.0 <= start <= 6.0):
        raise bad("grid", f"loglam_start must be log10 of a wavelength in Angstrom (2..6), got {_short(start)}")
    if not (_finite(step) and 0 < step <= 0.01):
        raise bad("grid", f"loglam_step must be a number in (0, 0.01] dex, got {_short(step)}")
    if not (_is_number(npix) and float(npix).is_integer() and 1 <= npix <= 10**6):
        raise bad("grid", f"npix must be a whole number in 1..1000000, got {_short(npix)} (npix > 0 required)")
    return Grid(float(start), float(step), int(npix))


def _z_range(value: Any, bad) -> tuple[float, float]:
    """The training redshift range, checked: two finite numbers, -1 < low < high."""
    if not (isinstance(value, list) and len(value) == 2 and all(_finite(v) for v in value)):
        raise bad("z_range", f"must be [low, high] with finite numbers, got {_short(value)}")
    lo, hi = (float(v) for v in value)
    if not -1.0 < lo < hi:
        raise bad("z_range", f"needs -1 < low < high, got {_short(value)}")
    return lo, hi


# quality key -> (lowest, highest) allowed value
_QUALITY_RANGES = {"min_coverage": (0.0, 1.0), "min_sn_median": (0.0, 1e6), "max_dv_err_kms": (0.0, 3e5),
                   "max_secondary_mass": (0.0, 1.0), "min_class_prob": (0.0, 1.0)}


def _quality(value: Any, bad) -> dict:
    """ZWARN thresholds over the defaults, checked: known keys, numbers in range."""
    if not isinstance(value, dict):
        raise bad("quality", "must be a JSON object")
    unknown = sorted(set(value) - set(_QUALITY_RANGES))
    if unknown:
        raise bad("quality", f"unknown threshold(s) {unknown}; known: {sorted(_QUALITY_RANGES)}")
    quality = dict(DEFAULT_QUALITY)
    for key, number in value.items():
        lo, hi = _QUALITY_RANGES[key]
        if not (_finite(number) and lo <= number <= hi):
            raise bad("quality", f"{key} must be a number in [{lo:g}, {hi:g}], got {_short(number)}")
        quality[key] = float(number)
    return quality


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


MAX_MODEL_BYTES = 2**31  # protobuf's limit: larger ONNX files keep their weights outside, which packages do not


def _check_model_file(path: Path) -> None:
    """A readable regular file of plausible size, or ModelPackageError saying what it is instead."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelPackageError(path, "model file not found") from None
    except OSError as exc:
        raise ModelPackageError(path, f"cannot read the model file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelPackageError(path, "is a folder, not a model file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelPackageError(path, "is not a regular file (a device, FIFO or socket), so not a model file")
    if info.st_size == 0:
        raise ModelPackageError(path, "model file is empty (0 bytes)")
    if info.st_size > MAX_MODEL_BYTES:
        raise ModelPackageError(path, f"model file is {info.st_size} bytes, more than an ONNX package can be")


def read_onnx_metadata(path: str | Path, data: bytes | None = None) -> dict[str, str]:
    """metadata_props of an ONNX file, read through onnxruntime (the onnx package is not a runtime dependency)."""
    return _onnx_facts(Path(path), data if data is not None else Path(path).read_bytes())[0]


def _onnx_facts(path: Path, data: bytes) -> tuple[dict[str, str], dict[str, list], dict[str, list]]:
    """Metadata and the graph's input and output shapes, from an onnxruntime session over the file's bytes."""
    from .ort_install import import_onnxruntime

    ort = import_onnxruntime()

    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelPackageError(path, f"cannot load ONNX model: {exc}") from None
    return (dict(session.get_modelmeta().custom_metadata_map),
            {i.name: list(i.shape) for i in session.get_inputs()},
            {o.name: list(o.shape) for o in session.get_outputs()})


def _check_graph(package: ModelPackage, inputs: dict[str, list], outputs: dict[str, list]) -> None:
    """The graph's input and output shapes agree with the metadata (npix, nbins), where they are fixed."""
    path = package.path
    if package.input_name not in inputs:
        raise ModelPackageError(path, f"metadata {PREFIX}input_name {package.input_name!r} is not a graph input "
                                      f"(inputs: {sorted(inputs)})")
    npix = inputs[package.input_name][-1] if inputs[package.input_name] else None
    if isinstance(npix, int) and npix != package.grid.npix:
        raise ModelPackageError(path, f"metadata {PREFIX}grid npix = {package.grid.npix} but the graph input takes "
                                      f"{npix} pixels")
    head = package.head
    name = head["output"] if head["output"] in outputs else (next(iter(outputs)) if len(outputs) == 1 else None)
    if name is None:
        raise ModelPackageError(path, f"metadata {PREFIX}head output {head['output']!r} is not a graph output "
                                      f"(outputs: {sorted(outputs)})")
    width = outputs[name][-1] if outputs[name] else None
    expected = head["nbins"] if head["kind"] == "zbins" else 1
    if isinstance(width, int) and width != expected:
        key = "nbins" if head["kind"] == "zbins" else "kind"
        raise ModelPackageError(path, f"metadata {PREFIX}head {key} expects {expected} outputs per spectrum, "
                                      f"the graph gives {width}")
    if has_classes(head):
        name, n = head["class_output"], len(head["classes"])
        if name not in outputs:
            raise ModelPackageError(path, f"metadata {PREFIX}head class_output {name!r} is not a graph output "
                                          f"(outputs: {sorted(outputs)})")
        width = outputs[name][-1] if outputs[name] else None
        if isinstance(width, int) and width != n:
            raise ModelPackageError(path, f"metadata {PREFIX}head classes name {n} classes but the graph output "
                                          f"{name!r} gives {width} values per spectrum")


def engine_sidecar(path: str | Path) -> Path:
    """Path of the JSON metadata sidecar that travels with a TensorRT engine."""
    return Path(str(path) + ".json")


def load_model_package(path: str | Path, metadata: dict[str, str] | None = None) -> ModelPackage:
    """Read and validate an ONNX model package or a TensorRT engine with its sidecar."""
    path = Path(path)
    _check_model_file(path)
    if path.suffix in ENGINE_SUFFIXES:
        if metadata is None:
            metadata = _read_sidecar(path)
        sha256 = file_sha256(path)
        try:
            recorded = json.loads(metadata.get(PREFIX + "tensorrt", "{}")).get("engine_sha256")
        except (ValueError, AttributeError):
            recorded = None
        if recorded and recorded != sha256:  # e.g. a crash between writing the new sidecar and the new engine
            raise ModelPackageError(path, f"the sidecar {engine_sidecar(path).name} describes another engine "
                                          f"(sha256 {recorded[:12]}..., this file {sha256[:12]}...); rebuild it "
                                          "with fnet-export --tensorrt")
        return ModelPackage.from_metadata(path, metadata, sha256=sha256)
    data = path.read_bytes()
    from .onnx_wire import check_integrity

    integrity = check_integrity(data)
    if integrity not in (None, "missing"):
        raise ModelPackageError(path, f"model refused: {integrity}")
    file_meta, inputs, outputs = _onnx_facts(path, data)
    package = ModelPackage.from_metadata(path, metadata if metadata is not None else file_meta,
                                         sha256=hashlib.sha256(data).hexdigest())
    package.integrity = "none" if integrity == "missing" else "checked"
    _check_graph(package, inputs, outputs)
    return package


def _read_sidecar(path: Path) -> dict[str, str]:
    """The JSON metadata sidecar of a TensorRT engine, checked to be a map of strings."""
    sidecar = engine_sidecar(path)
    if not sidecar.is_file():
        raise ModelPackageError(path, f"TensorRT engine without its metadata sidecar {sidecar.name}")
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ModelPackageError(path, f"metadata sidecar {sidecar.name} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ModelPackageError(path, f"metadata sidecar {sidecar.name} must hold a JSON object, "
                                      f"not a {type(metadata).__name__}")
    return metadata


def build_metadata(*, model_name: str, model_version: str, architecture: str, grid: Grid, normalisation: dict,
                   head: dict, z_range: tuple[float, float], input_name: str = "flux",
                   quality: dict | None = None, training: dict | None = None,
                   parity: dict | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata_props map for a model package (used by fnet-export and by tests).

    The contract version is the lowest that describes the package: "2" with a class head (or a quality key
    only "2" knows), else "1", so packages without a class head still load in runtimes that read only "1".
    """
    later = has_classes(head) or bool(set(quality or {}) & set(CONTRACT_2_QUALITY))
    meta = {
        "contract_version": CONTRACT_VERSION if later else "1",
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
