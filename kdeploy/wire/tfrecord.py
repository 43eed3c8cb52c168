"""TFRecord files without TensorFlow: the framing TF Serving's warm-up file (`tf_serving_warmup_requests`) uses.

Each record is its length (uint64, little-endian), the masked CRC-32C of those 8 bytes (uint32), the data, and the
masked CRC-32C of the data (TensorFlow's `lib/io/record_writer.cc`; no compression). The CRC is computed here in
Python from a table: warm-up files are a few kilobytes, and the server's TensorFlow-free path gains no dependency.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from kdeploy.common.files import write_bytes_atomic

_MASK_DELTA = 0xA282EAD8
_CASTAGNOLI = 0x82F63B78  # CRC-32C's polynomial, reflected


def _table() -> tuple[int, ...]:
    entries = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI if crc & 1 else crc >> 1
        entries.append(crc)
    return tuple(entries)


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TensorFlow's masked CRC of a record's length or data (so CRCs of CRCs do not collide)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """A TFRecord file that is truncated or whose checksums do not match."""


def read_records(path: Path, max_records: int | None = None) -> Iterator[bytes]:
    """The records of a TFRecord file, checksums checked.

    Args:
        path: the file.
        max_records: refuse a file holding more records than this (TF Serving reads at most 1000 warm-up records).

    Raises:
        TFRecordError: naming the record that is truncated, corrupt, or over the limit.
        OSError: when the file cannot be read.
    """
    data = Path(path).read_bytes()
    position, index = 0, 0
    while position < len(data):
        if max_records is not None and index >= max_records:
            raise TFRecordError(f"{path} holds more than {max_records} records")
        header = data[position:position + 12]
        if len(header) < 12:
            raise TFRecordError(f"{path}: record {index} is truncated (header)")
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc(header[:8]) != length_crc:
            raise TFRecordError(f"{path}: record {index} has a corrupt length (checksum mismatch)")
        start, end = position + 12, position + 12 + length
        if end + 4 > len(data):
            raise TFRecordError(f"{path}: record {index} is truncated ({length} bytes announced)")
        record = data[start:end]
        if masked_crc(record) != struct.unpack("<I", data[end:end + 4])[0]:
            raise TFRecordError(f"{path}: record {index} is corrupt (checksum mismatch)")
        yield record
        position, index = end + 4, index + 1


def encode_records(records: Iterable[bytes]) -> bytes:
    """Records framed as a TFRecord file's bytes."""
    parts = []
    for record in records:
        length = struct.pack("<Q", len(record))
        parts += [length, struct.pack("<I", masked_crc(length)), record, struct.pack("<I", masked_crc(record))]
    return b"".join(parts)


def write_records(path: Path, records: Iterable[bytes]) -> Path:
    """Write a TFRecord file atomically (a reader never sees half of it); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, encode_records(records))
    return path
