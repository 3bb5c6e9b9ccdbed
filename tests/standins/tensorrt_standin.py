"""A stand-in `tensorrt` Python package for a chosen version (10.x or 11.x), enforcing the real bindings' rules.

make_tensorrt("10.16.0" | "11.1.0", cudart) returns a module to put in sys.modules["tensorrt"]. What it
enforces, as the real bindings do (TensorRT docs: Python API, migration guide 10.x -> 11.x, Engine Inspector):
- 11.x: BuilderFlag has no FP16/INT8/BF16/FP8/INT4/FP4 (AttributeError) and every network is strongly typed
  (the STRONGLY_TYPED creation flag is accepted and ignored); 10.x: FP16/INT8/BF16 exist but are deprecated
  (DeprecationWarning), so are weakly typed networks, and a precision flag on a strongly typed network fails
  the build. A weakly typed network built with FP16 runs its layers in FP16, as the old code relied on.
- IOptimizationProfile.set_shape raises ValueError unless min <= opt <= max elementwise (and >= 1); the build
  fails when a profile dimension contradicts a fixed ONNX dimension.
- OnnxParser.parse reads real ONNX bytes (the onnx package) and records each tensor's type: which layers are
  FP16 because the graph says so. build_serialized_network returns bytes that carry the ONNX model.
- The engine inspector answers in TensorRT's JSON: {"Layers": [...], "Bindings": [...]} on 10.x (tensor types
  inside "Format/Datatype": "Row major linear FP32", "Row major linear FP16 format"), {"Layers", "I/O Tensors"}
  with separate "DataType"/"Format" on 11.x; layer details only with ProfilingVerbosity.DETAILED (names
  only otherwise), formats only for an execution context whose input shapes are set.
- Timing caches serialize and load back; a cache from another TensorRT version is refused unless
  ignore_mismatch. Each build records how many layers it timed and how many came from the cache.
- execute_async_v3 refuses the legacy default stream (0), reads its input from the address given by
  set_tensor_address and writes real outputs (the ONNX model run by onnxruntime CPU, the FP16 graph too) to
  the output addresses, as work queued on the stand-in libcudart's stream.
"""

from __future__ import annotations

import enum
import json
import struct
import types
import warnings
from dataclasses import dataclass, field

import numpy as np

_MAGIC, _CACHE_MAGIC = b"TRTSTANDIN-PLAN\0", b"TRTSTANDIN-CACHE\0"
_FLAGS_10 = ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
             "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
             "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
             "BF16", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4",
             "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "FP4", "EDITABLE_TIMING_CACHE"]
_PRECISION_FLAGS = {"FP16", "INT8", "FP8", "BF16", "INT4", "FP4"}
_REMOVED_IN_11 = _PRECISION_FLAGS | {"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"}
_ONNX_TYPES = {1: "Float", 10: "Half", 6: "Int32", 7: "Int64", 9: "Bool"}  # onnx TensorProto -> TensorRT name
_NP = {"Float": np.float32, "Half": np.float16, "Int32": np.int32, "Int64": np.int64, "Bool": np.bool_}
_LAYER_TYPES = {"Conv": ("CaskConvolution", "Convolution"), "Gemm": ("CaskGemmMatrixMultiply", "MatrixMultiply"),
                "MatMul": ("CaskGemmMatrixMultiply", "MatrixMultiply"), "Relu": ("PointWiseV2", "PointWise"),
                "Add": ("ElementWise", "ElementWise"), "Cast": ("Cast", "Cast"), "Flatten": ("Shuffle", "Shuffle")}


@dataclass
class StandinState:
    """What the stand-in saw, for the tests, and the knobs that make it misbehave on purpose."""

    networks: list = field(default_factory=list)  # {"flags", "strongly_typed"} per create_network
    builds: list = field(default_factory=list)  # {"flags", "verbosity", "timed", "cache_hits"} per build
    executions: list = field(default_factory=list)  # (stream, batch) per execute_async_v3
    log: list = field(default_factory=list)  # (severity, message) of every logger
    inspector_conv_datatype: str | None = None  # e.g. "Float": the inspector reports every convolution so


class _Bound:
    env: "_Env"


class _Env:
    """One stand-in module's version, enums and state."""

    def __init__(self, version: str, cudart):
        self.version, self.major, self.cudart, self.state = version, int(version.split(".")[0]), cudart, StandinState()
        names = [n for n in _FLAGS_10 if self.major < 11 or n not in _REMOVED_IN_11]
        self.BuilderFlag = enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(names)})
        self.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if self.major < 11
            else {"STRONGLY_TYPED": 1})

    def error(self, message: str) -> None:
        self.state.log.append(("ERROR", message))


DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "INT64": 8})
TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
_TRT_TYPES = {"Float": DataType.FLOAT, "Half": DataType.HALF, "Int32": DataType.INT32, "Int64": DataType.INT64,
              "Bool": DataType.BOOL}


def nptype(datatype) -> type:
    """numpy type of a DataType, as tensorrt.nptype."""
    table = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
             DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}
    if datatype not in table:
        raise TypeError(f"no numpy type for {datatype!r}")
    return table[datatype]


class Logger(_Bound):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2):
        self.min_severity = min_severity


class OnnxParser(_Bound):
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]

    def parse(self, data: bytes) -> bool:
        import onnx

        try:
            model = onnx.shape_inference.infer_shapes(onnx.load_from_string(bytes(data)))
        except Exception as exc:  # noqa: BLE001  what the real parser reports as a failed parse
            self.errors.append(f"ModelImporter: failed to parse the ONNX model: {exc}")
            return False
        graph = model.graph
        infos = list(graph.input) + list(graph.output) + list(graph.value_info)
        types_ = {v.name: _ONNX_TYPES.get(v.type.tensor_type.elem_type, "Unknown") for v in infos}
        types_.update({t.name: _ONNX_TYPES.get(t.data_type, "Unknown") for t in graph.initializer})
        dims = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                for v in infos}
        weights = {t.name for t in graph.initializer}
        for node in graph.node:  # weights passed on by Identity/Constant nodes are weights too
            if node.op_type == "Constant" or (node.op_type == "Identity" and set(node.input) <= weights):
                weights.update(node.output)
        layers = []
        for node in graph.node:
            if set(node.output) <= weights:
                continue
            activations = [i for i in node.input if i and i not in weights]
            layers.append({"name": node.name or node.output[0], "op": node.op_type,
                           "inputs": [(i, types_.get(i, "Unknown"), dims.get(i, [])) for i in activations],
                           "outputs": [(o, types_.get(o, "Unknown"), dims.get(o, [])) for o in node.output]})
        io = [(v.name, "Input", types_[v.name], dims[v.name]) for v in graph.input if v.name not in weights]
        io += [(v.name, "Output", types_[v.name], dims[v.name]) for v in graph.output]
        self.network.parsed = {"layers": layers, "io": io, "onnx": bytes(data).hex()}
        return True


class INetworkDefinition:
    def __init__(self, strongly_typed: bool):
        self.strongly_typed, self.parsed = strongly_typed, None


class IOptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        shapes = [tuple(int(d) for d in s) for s in (min, opt, max)]
        if len({len(s) for s in shapes}) != 1 or not all(1 <= a <= b <= c for a, b, c in zip(*shapes)):
            raise ValueError(f"set_shape({name!r}): need 1 <= min <= opt <= max in every dimension, got {shapes}")
        self.shapes[name] = shapes


class ITimingCache(_Bound):
    def __init__(self, entries: dict | None = None, version: str | None = None):
        self.entries, self.version = dict(entries or {}), version or self.env.version

    def serialize(self) -> bytes:
        return _CACHE_MAGIC + json.dumps({"version": self.version, "entries": self.entries}).encode()


class IBuilderConfig(_Bound):
    def __init__(self):
        self.flags = {self.env.BuilderFlag.TF32}  # TF32 is on by default
        self.profiles, self.pools, self.timing_cache = [], {}, None
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = int(size)

    def set_flag(self, flag) -> None:
        if flag.name in _PRECISION_FLAGS:  # only reachable on 10.x: 11.x has no such member
            warnings.warn(f"BuilderFlag.{flag.name} is deprecated since TensorRT 10.12: superseded by strong typing",
                          DeprecationWarning, stacklevel=2)
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes):
        blob = bytes(blob)
        if not blob:
            return self._cache()
        if not blob.startswith(_CACHE_MAGIC):
            self.env.error("ITimingCache: the serialized cache is corrupted")
            return None
        data = json.loads(blob[len(_CACHE_MAGIC):])
        return self._cache(data["entries"], data["version"])

    def _cache(self, entries=None, version=None):
        return type("ITimingCache", (ITimingCache,), {"env": self.env})(entries, version)

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if cache.version != self.env.version and not ignore_mismatch:
            self.env.error(f"timing cache from TensorRT {cache.version} does not match {self.env.version}")
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class Builder(_Bound):
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags: int = 0):
        env = self.env
        known = sum(1 << int(f) for f in env.NetworkDefinitionCreationFlag)
        if int(flags) & ~known:
            raise ValueError(f"unknown network creation flags {flags:#x}")
        strongly = env.major >= 11 or bool(int(flags) & (1 << int(env.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        if not strongly:
            warnings.warn("weakly typed networks are deprecated since TensorRT 10.12", DeprecationWarning, stacklevel=2)
        env.state.networks.append({"flags": int(flags), "strongly_typed": strongly})
        return INetworkDefinition(strongly)

    def create_builder_config(self):
        return type("IBuilderConfig", (IBuilderConfig,), {"env": self.env})()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        env = self.env
        if network.parsed is None:
            env.error("the network is empty (nothing parsed)")
            return None
        precision_flags = {f.name for f in config.flags} & _PRECISION_FLAGS
        if network.strongly_typed and precision_flags:
            env.error(f"BuilderFlag {sorted(precision_flags)} is not allowed with a strongly typed network")
            return None
        profile = {}
        for name, mode, _, dims in network.parsed["io"]:
            if mode != "Input":
                continue
            shapes = config.profiles[0].shapes.get(name) if config.profiles else None
            if shapes is None:
                if -1 in dims:
                    env.error(f"input {name!r} has dynamic dimensions but no optimization profile was defined")
                    return None
                shapes = [tuple(dims)] * 3
            if len(shapes[0]) != len(dims) or any(d != -1 and not s[i] == d for s in shapes for i, d in enumerate(dims)):
                env.error(f"profile {shapes} for input {name!r} contradicts its ONNX dimensions {dims}")
                return None
            profile[name] = shapes
        layers = []
        for layer in network.parsed["layers"]:
            layer = dict(layer)
            if not network.strongly_typed and "FP16" in precision_flags and layer["op"] not in ("Cast",):
                # weak typing with the FP16 flag: the builder may (and here does) pick FP16 kernels
                layer["inputs"] = [(n, "Half", d) for n, _, d in layer["inputs"]]
                layer["outputs"] = [(n, "Half", d) for n, _, d in layer["outputs"]]
            layers.append(layer)
        cache = config.timing_cache or config._cache()
        keys = [f"{la['op']}:{la['name']}:{la['inputs'][0][1] if la['inputs'] else ''}" for la in layers]
        hits = sum(key in cache.entries for key in keys)
        cache.entries.update({key: f"tactic-{i}" for i, key in enumerate(keys)})
        config.timing_cache = cache
        env.state.builds.append({"flags": sorted(f.name for f in config.flags), "timed": len(keys) - hits,
                                 "cache_hits": hits, "verbosity": config.profiling_verbosity.name})
        header = json.dumps({"version": env.version, "layers": layers, "io": network.parsed["io"],
                             "profile": profile, "verbosity": int(config.profiling_verbosity)}).encode()
        return _MAGIC + struct.pack("<Q", len(header)) + header + bytes.fromhex(network.parsed["onnx"])


class Runtime(_Bound):
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        data = bytes(data)
        if not data.startswith(_MAGIC):
            self.env.error("the serialized engine is not a TensorRT plan")
            return None
        (size,), start = struct.unpack("<Q", data[len(_MAGIC):len(_MAGIC) + 8]), len(_MAGIC) + 8
        plan = json.loads(data[start:start + size])
        if plan["version"] != self.env.version:
            self.env.error(f"the engine plan was built with TensorRT {plan['version']}, this is {self.env.version}")
            return None
        return ICudaEngine(self.env, plan, data[start + size:])


class ICudaEngine:
    def __init__(self, env: _Env, plan: dict, onnx_bytes: bytes):
        self.env, self.plan, self.onnx = env, plan, onnx_bytes
        self.io = {name: (mode, dtype, dims) for name, mode, dtype, dims in plan["io"]}
        self._session = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str):
        return TensorIOMode.INPUT if self.io[name][0] == "Input" else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return _TRT_TYPES[self.io[name][1]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        if profile_index != 0 or name not in self.plan["profile"]:
            raise ValueError(f"no profile {profile_index} shape for {name!r}")
        return [tuple(s) for s in self.plan["profile"][name]]

    def create_execution_context(self):
        return IExecutionContext(self)

    def create_engine_inspector(self):
        return EngineInspector(self)

    def session(self):
        """onnxruntime CPU over the engine's ONNX graph: what the stand-in "GPU" computes."""
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        lo, _, hi = self.engine.plan["profile"].get(name, [None] * 3)
        if lo is None or len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            self.engine.env.error(f"input shape {shape} for {name!r} is outside the profile [{lo}, {hi}]")
            return False
        self.shapes[name] = shape
        return True

    def batch(self) -> int | None:
        return next(iter(self.shapes.values()))[0] if self.shapes else None

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.shapes:
            return self.shapes[name]
        dims = self.engine.io[name][2]
        return tuple(self.batch() if d == -1 and self.batch() is not None else d for d in dims)

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.io:
            return False
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        env = self.engine.env
        if not stream_handle:
            env.error("stand-in: execute_async_v3 on the legacy default stream (0) is refused")
            return False
        missing = [n for n in self.engine.io if n not in self.addresses]
        inputs = [n for n, (mode, _, _) in self.engine.io.items() if mode == "Input"]
        if missing or any(n not in self.shapes for n in inputs):
            env.error(f"execute_async_v3 without addresses for {missing} or input shapes for {inputs}")
            return False
        env.state.executions.append((int(stream_handle), self.batch()))
        shapes = {n: self.get_tensor_shape(n) for n in self.engine.io}
        addresses = dict(self.addresses)

        def work():  # runs when the stream is synchronized, like GPU work
            feeds = {}
            for name in inputs:
                dtype = _NP[self.engine.io[name][1]]
                nbytes = int(np.prod(shapes[name])) * np.dtype(dtype).itemsize
                raw = env.cudart.device_memory(addresses[name], nbytes)
                feeds[name] = np.frombuffer(bytes(raw), dtype=dtype).reshape(shapes[name])
            session = self.engine.session()
            names = [o.name for o in session.get_outputs()]
            for name, value in zip(names, session.run(names, feeds)):
                value = np.ascontiguousarray(value, dtype=_NP[self.engine.io[name][1]])
                raw = env.cudart.device_memory(addresses[name], value.nbytes)
                raw[:] = value.tobytes()
        env.cudart.enqueue(int(stream_handle), work, "execute")
        return True


class EngineInspector:
    def __init__(self, engine: ICudaEngine):
        self._engine, self.execution_context = engine, None
        if engine.env.major < 11:  # 10.x still has the engine attribute; 11.x only execution_context
            self.engine = engine

    def get_engine_information(self, format) -> str:
        engine, env = self._engine, self._engine.env
        verbosity = ProfilingVerbosity(engine.plan["verbosity"])
        layers = engine.plan["layers"]
        if format != LayerInformationFormat.JSON:
            return "\n".join(la["name"] for la in layers)
        if verbosity == ProfilingVerbosity.NONE:
            details = []
        elif verbosity == ProfilingVerbosity.LAYER_NAMES_ONLY:
            details = [la["name"] for la in layers]
        else:
            context = self.execution_context
            batch = context.batch() if context is not None else None
            details = [self._layer(la, batch) for la in layers]
        if env.major < 11:
            return json.dumps({"Layers": details, "Bindings": list(engine.io)})
        io = [{"Name": n, "IOMode": mode, "DataType": dtype, "Dimensions": dims, "Location": "Device",
               "IsShapeInferenceIO": False} for n, (mode, dtype, dims) in engine.io.items()]
        return json.dumps({"Layers": details, "I/O Tensors": io})

    def _layer(self, layer: dict, batch: int | None) -> dict:
        env = self._engine.env
        layer_type, parameter_type = _LAYER_TYPES.get(layer["op"], (layer["op"], layer["op"]))
        forced = env.state.inspector_conv_datatype if layer["op"] == "Conv" else None

        def tensor(name, dtype, dims):
            dtype = forced or dtype
            entry = {"Name": name, "Location": "Device",
                     "Dimensions": [batch if d == -1 and batch is not None else d for d in dims]}
            bits = {"Half": "FP16", "Float": "FP32"}.get(dtype, dtype)
            if env.major >= 11:  # 11.x: the type always, the format only for concrete shapes
                entry["DataType"] = dtype
                if batch is not None:
                    entry["Format"] = f"Row major linear {bits} format (kLINEAR)"
            elif batch is not None:  # 10.x: one field, shown only with an execution context's shapes
                entry["Format/Datatype"] = f"Row major linear {bits}" + (" format" if bits != "FP32" else "")
            return entry
        return {"Name": layer["name"], "LayerType": layer_type, "ParameterType": parameter_type,
                "Inputs": [tensor(*t) for t in layer["inputs"]], "Outputs": [tensor(*t) for t in layer["outputs"]],
                "TacticValue": "0x0000000000000001", "StreamId": 0, "Metadata": f"[ONNX Layer: {layer['name']}]"}


def make_tensorrt(version: str, cudart) -> types.ModuleType:
    """A stand-in `tensorrt` module of `version` whose engines run on the stand-in libcudart `cudart`."""
    env = _Env(version, cudart)
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module._standin = env.state
    for cls in (Logger, OnnxParser, Builder, Runtime):
        setattr(module, cls.__name__, type(cls.__name__, (cls,), {"env": env}))
    for name in ("DataType", "TensorIOMode", "ProfilingVerbosity", "LayerInformationFormat", "MemoryPoolType"):
        setattr(module, name, globals()[name])
    module.BuilderFlag, module.NetworkDefinitionCreationFlag = env.BuilderFlag, env.NetworkDefinitionCreationFlag
    module.nptype = nptype
    return module
