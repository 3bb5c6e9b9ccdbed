"""An ONNX model's graph as plain Python and numpy, read from the protobuf bytes (no onnx package).

The FFT backend executes the graph of a model package itself, so it needs the nodes (op type, inputs,
outputs, attributes) and the weights (initializers) of the very file every other backend runs: the
ONNX file stays the one artifact. Only what the toolkit's graphs use is decoded; anything else
(external weight files, sparse or string tensors, subgraphs) is refused with the reason.

Wire-format field numbers (onnx.proto3): ModelProto graph = 7; GraphProto node = 1, initializer = 5,
input = 11, output = 12; NodeProto input = 1, output = 2, name = 3, op_type = 4, attribute = 5,
domain = 7; AttributeProto name = 1, f = 2, i = 3, s = 4, t = 5, floats = 7, ints = 8, strings = 9,
type = 20; TensorProto dims = 1, data_type = 2, float_data = 4, int32_data = 5, int64_data = 7,
name = 8, raw_data = 9, double_data = 10, data_location = 14; ValueInfoProto name = 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .onnx_wire import WireError, _varint, fields

# TensorProto.DataType -> numpy dtype (little-endian, as ONNX stores raw_data)
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("i1"), 5: np.dtype("<i2"), 6: np.dtype("<i4"),
           7: np.dtype("<i8"), 9: np.dtype("bool"), 10: np.dtype("<f2"), 11: np.dtype("<f8")}


@dataclass
class Node:
    """One graph node."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""


@dataclass
class Graph:
    """Nodes in file order (ONNX requires topological order), weights by name, graph input and output names."""

    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]


def _varints(payload: bytes) -> list[int]:
    """A packed repeated varint field."""
    out, pos = [], 0
    while pos < len(payload):
        value, pos = _varint(payload, pos)
        out.append(value)
    return out


def _signed(value: int) -> int:
    """int64 from its varint encoding (two's complement over 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar_varint(data: bytes, start: int) -> int:
    return _varint(data, start)[0]


def _repeated_ints(data: bytes, wire: int, start: int, end: int) -> list[int]:
    return [_signed(v) for v in (_varints(data[start:end]) if wire == 2 else [_scalar_varint(data, start)])]


def _tensor(data: bytes) -> tuple[str, np.ndarray]:
    """Name and values of a TensorProto."""
    dims: list[int] = []
    dtype_code, name, raw = 1, "", None
    floats: list[float] = []
    ints: list[int] = []
    doubles: list[float] = []
    for number, wire, _, start, end in fields(data):
        if number == 1:
            dims += _repeated_ints(data, wire, start, end)
        elif number == 2:
            dtype_code = _scalar_varint(data, start)
        elif number == 4:
            chunk = data[start:end] if wire == 2 else data[start:start + 4]
            floats += list(struct.unpack(f"<{len(chunk) // 4}f", chunk))
        elif number in (5, 7):
            ints += _repeated_ints(data, wire, start, end)
        elif number == 8:
            name = data[start:end].decode("utf-8")
        elif number == 9:
            raw = data[start:end]
        elif number == 10:
            chunk = data[start:end] if wire == 2 else data[start:start + 8]
            doubles += list(struct.unpack(f"<{len(chunk) // 8}d", chunk))
        elif number == 14 and _scalar_varint(data, start) == 1:
            raise WireError(f"tensor {name or '?'} keeps its data in an external file: not supported in a package")
    if dtype_code not in _DTYPES:
        raise WireError(f"tensor {name}: data type {dtype_code} is not supported")
    dtype = _DTYPES[dtype_code]
    if raw is not None:
        values = np.frombuffer(raw, dtype=dtype).copy()
    elif dtype_code == 1:
        values = np.asarray(floats, dtype=dtype)
    elif dtype_code == 11:
        values = np.asarray(doubles, dtype=dtype)
    elif dtype_code == 10:  # float16 in int32_data holds the bit patterns
        values = np.asarray(ints, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(ints, dtype=dtype)
    count = int(np.prod(dims)) if dims else 1
    if values.size != count:
        raise WireError(f"tensor {name}: {values.size} values for shape {dims}")
    return name, values.reshape(dims)


def _attribute(data: bytes) -> tuple[str, Any]:
    """Name and value of an AttributeProto (float, int, string, tensor, floats, ints, strings)."""
    name, value = "", None
    floats: list[float] = []
    ints: list[int] = []
    strings: list[str] = []
    for number, wire, _, start, end in fields(data):
        if number == 1:
            name = data[start:end].decode("utf-8")
        elif number == 2:
            value = struct.unpack("<f", data[start:start + 4])[0]
        elif number == 3:
            value = _signed(_scalar_varint(data, start))
        elif number == 4:
            value = data[start:end].decode("utf-8", "replace")
        elif number == 5:
            value = _tensor(data[start:end])[1]
        elif number == 7:
            chunk = data[start:end] if wire == 2 else data[start:start + 4]
            floats += list(struct.unpack(f"<{len(chunk) // 4}f", chunk))
        elif number == 8:
            ints += _repeated_ints(data, wire, start, end)
        elif number == 9:
            strings.append(data[start:end].decode("utf-8", "replace"))
        elif number in (6, 10, 11):
            raise WireError(f"attribute {name or '?'}: subgraphs are not supported")
    if value is None:
        value = ints if ints else floats if floats else strings if strings else []
    return name, value


def _node(data: bytes) -> Node:
    node = Node("", [], [])
    for number, _, _, start, end in fields(data):
        text = data[start:end]
        if number == 1:
            node.inputs.append(text.decode("utf-8"))
        elif number == 2:
            node.outputs.append(text.decode("utf-8"))
        elif number == 3:
            node.name = text.decode("utf-8", "replace")
        elif number == 4:
            node.op_type = text.decode("utf-8")
        elif number == 5:
            key, value = _attribute(text)
            node.attributes[key] = value
        elif number == 7:
            node.domain = text.decode("utf-8")
    return node


def _value_name(data: bytes) -> str:
    for number, _, _, start, end in fields(data):
        if number == 1:
            return data[start:end].decode("utf-8")
    return ""


def read_graph(model: bytes) -> Graph:
    """The graph of a serialized ONNX ModelProto; WireError when it is malformed or uses what is not decoded."""
    graph_bytes = next((model[s:e] for n, w, _, s, e in fields(model) if n == 7 and w == 2), None)
    if graph_bytes is None:
        raise WireError("no graph in the model")
    nodes, weights, inputs, outputs = [], {}, [], []
    for number, _, _, start, end in fields(graph_bytes):
        payload = graph_bytes[start:end]
        if number == 1:
            nodes.append(_node(payload))
        elif number == 5:
            name, values = _tensor(payload)
            weights[name] = values
        elif number == 11:
            inputs.append(_value_name(payload))
        elif number == 12:
            outputs.append(_value_name(payload))
        elif number == 15:
            raise WireError("sparse initializers are not supported")
    return Graph(nodes, weights, [i for i in inputs if i not in weights], outputs)
