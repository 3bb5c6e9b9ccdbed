"""The few facts about an ONNX file the runtime reads from its protobuf bytes, without the onnx package.

An ONNX file is a serialized ``ModelProto``: field 7 is the graph (nodes and weights), field 14 the
repeated ``metadata_props`` (``StringStringEntryProto``: 1 key, 2 value). Walking the top-level fields
of the protobuf wire format takes a few lines, and lets the runtime check a package's integrity:

``fnet.integrity`` (written by fnet-export) records the SHA-256 of the graph bytes and of the other
``fnet.*`` metadata. A byte flipped anywhere in the weights, the graph or the metadata changes one of
the two, and the package is refused instead of giving slightly different redshifts (measured: 12 of 13
byte-flipped copies of a model still loaded, 7 moved Z by up to 2e-4).
"""

from __future__ import annotations

import hashlib
import json

INTEGRITY_KEY = "fnet.integrity"
_GRAPH_FIELD, _METADATA_FIELD = 7, 14


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or malformed varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """Top-level (field number, wire type, key offset, payload start, end) of every field."""
    out = []
    pos = 0
    while pos < len(data):
        at = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = _varint(data, pos)
            start = pos
        elif wire == 1:
            start, end = pos, pos + 8
        elif wire == 2:
            length, start = _varint(data, pos)
            end = start + length
        elif wire == 5:
            start, end = pos, pos + 4
        else:
            raise WireError(f"unsupported wire type {wire} for field {number}")
        if end > len(data) or number == 0:
            raise WireError("field runs past the end of the data")
        out.append((number, wire, at, start, end))
        pos = end
    return out


def _entry(payload: bytes) -> tuple[str, str]:
    """Key and value of a StringStringEntryProto."""
    key = value = ""
    for number, wire, _, start, end in fields(payload):
        if wire == 2 and number in (1, 2):
            text = payload[start:end].decode("utf-8")
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def read_model(data: bytes) -> tuple[bytes, dict[str, str]]:
    """The graph bytes and the metadata_props of a serialized ModelProto."""
    graph = None
    metadata: dict[str, str] = {}
    for number, wire, _, start, end in fields(data):
        if number == _GRAPH_FIELD and wire == 2:
            graph = data[start:end]
        elif number == _METADATA_FIELD and wire == 2:
            key, value = _entry(data[start:end])
            metadata[key] = value
    if graph is None:
        raise WireError("no graph in the model")
    return graph, metadata


def _metadata_digest(metadata: dict[str, str]) -> str:
    """SHA-256 of the fnet.* metadata other than the integrity record, in a canonical form."""
    mine = {k: v for k, v in metadata.items() if k.startswith("fnet.") and k != INTEGRITY_KEY}
    return hashlib.sha256(json.dumps(mine, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def integrity_record(graph: bytes, metadata: dict[str, str]) -> dict[str, str]:
    """The fnet.integrity value for a graph and its metadata."""
    return {"graph_sha256": hashlib.sha256(graph).hexdigest(), "metadata_sha256": _metadata_digest(metadata)}


def check_integrity(data: bytes) -> str | None:
    """None when the model matches its fnet.integrity record; else what is wrong. 'missing' when it has none."""
    try:
        graph, metadata = read_model(data)
    except (WireError, UnicodeDecodeError) as exc:
        return f"the file is not a well-formed ONNX model ({exc})"
    if INTEGRITY_KEY not in metadata:
        return "missing"
    try:
        recorded = json.loads(metadata[INTEGRITY_KEY])
    except (ValueError, RecursionError):
        return f"its {INTEGRITY_KEY} record is not valid JSON"
    actual = integrity_record(graph, metadata)
    if not isinstance(recorded, dict) or recorded.get("graph_sha256") != actual["graph_sha256"]:
        return "its graph or weights do not match the checksum recorded at export (corrupted copy?)"
    if recorded.get("metadata_sha256") != actual["metadata_sha256"]:
        return "its fnet.* metadata does not match the checksum recorded at export (corrupted or edited copy?)"
    return None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def stamp_integrity(data: bytes) -> bytes:
    """The serialized model with its fnet.integrity record (re)computed and set (used by fnet-export)."""
    graph, metadata = read_model(data)
    kept = bytearray()
    for number, wire, at, start, end in fields(data):
        if not (number == _METADATA_FIELD and wire == 2 and _entry(data[start:end])[0] == INTEGRITY_KEY):
            kept += data[at:end]  # every other field exactly as it was
    record = json.dumps(integrity_record(graph, metadata), sort_keys=True)
    entry = _length_delimited(1, INTEGRITY_KEY.encode()) + _length_delimited(2, record.encode())
    return bytes(kept) + _length_delimited(_METADATA_FIELD, entry)
