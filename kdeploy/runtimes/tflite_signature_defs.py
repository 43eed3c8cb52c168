"""TensorFlow SignatureDefs stored in a `.tflite` file's metadata, as TF Serving reads them (no TensorFlow).

TF Serving's TFLite path serves a model's SignatureDefs when the model carries them: TensorFlow's
`lite/tools/signature/signature_def_utils.set_signature_defs` writes a metadata entry `signature_defs_metadata`, a
FlexBuffer map from signature name to a serialized `tensorflow.SignatureDef` (TF Serving's test model
`saved_model_half_plus_two_tflite_with_sigdef`: key `x` for the tensor `tflite_input`). This module reads that entry
with the `flatbuffers` package LiteRT already needs, and the two SignatureDef fields the runtime uses (each key's
tensor name, and the method) with a few lines of protobuf wire format: the runtimes may not import the wire package's
protos, and this is all of the message that matters here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SIGNATURE_DEFS_METADATA = "signature_defs_metadata"
"""The metadata name TensorFlow's signature_def_utils writes (tensorflow/lite/tools/signature)."""

# Field indices of TFLite's schema.fbs tables (the vtable slot of field i is 4 + 2 * i).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA = 0


@dataclass(frozen=True)
class StoredSignature:
    """One SignatureDef as TF Serving uses it for TFLite: request keys to tensor names (without `:0`)."""

    inputs: dict[str, str]
    outputs: dict[str, str]
    method_name: str


def tflite_signature_defs(path: Path) -> dict[str, StoredSignature]:
    """The SignatureDefs stored in a `.tflite` file's metadata by name; empty when it has none (or they are
    unreadable: the model is then served by its own TFLite signatures)."""
    try:
        data = _metadata(Path(path).read_bytes(), SIGNATURE_DEFS_METADATA)
        if data is None:
            return {}
        from flatbuffers import flexbuffers

        entries = flexbuffers.GetRoot(data).AsMap
        return {key.AsKey: _signature(value.AsStringBytes) for key, value in zip(entries.Keys, entries.Values)}
    except (OSError, ValueError, IndexError, TypeError, KeyError):
        return {}


def _metadata(model: bytes, name: str) -> bytes | None:
    """The bytes of the model's metadata entry `name` (a Buffer's inline data), or None."""
    from flatbuffers import encode, number_types, packer
    from flatbuffers.table import Table

    buf = bytearray(model)
    root = Table(buf, encode.Get(packer.uoffset, buf, 0))

    def tables(table: Table, field: int) -> list[Table]:
        offset = table.Offset(4 + 2 * field)
        if not offset:
            return []
        start = table.Vector(offset)
        return [Table(buf, table.Indirect(start + 4 * i)) for i in range(table.VectorLen(offset))]

    for entry in tables(root, _MODEL_METADATA):
        name_offset = entry.Offset(4 + 2 * _METADATA_NAME)
        if not name_offset or entry.String(name_offset + entry.Pos).decode("utf-8", "replace") != name:
            continue
        index_offset = entry.Offset(4 + 2 * _METADATA_BUFFER)
        index = entry.Get(number_types.Uint32Flags, index_offset + entry.Pos) if index_offset else 0
        buffer = tables(root, _MODEL_BUFFERS)[index]
        data_offset = buffer.Offset(4 + 2 * _BUFFER_DATA)
        if not data_offset:
            return None
        start = buffer.Vector(data_offset)
        return bytes(buf[start:start + buffer.VectorLen(data_offset)])
    return None


def _signature(serialized: bytes) -> StoredSignature:
    """SignatureDef: inputs = 1 and outputs = 2 (map<string, TensorInfo>, TensorInfo.name = 1), method_name = 3."""
    maps: dict[int, dict[str, str]] = {1: {}, 2: {}}
    method = ""
    for number, value in _fields(serialized):
        if number in maps and isinstance(value, bytes):
            entry = dict(_fields(value))
            key, info = entry.get(1, b""), entry.get(2, b"")
            tensor = dict(_fields(info)).get(1, b"") if isinstance(info, bytes) else b""
            if isinstance(key, bytes) and isinstance(tensor, bytes):
                maps[number][key.decode()] = tensor.decode().removesuffix(":0")
        elif number == 3 and isinstance(value, bytes):
            method = value.decode()
    return StoredSignature(inputs=maps[1], outputs=maps[2], method_name=method)


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: varints as int, length-delimited as bytes (fixed
    width fields skipped)."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(data, position)
            yield number, data[position:position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
