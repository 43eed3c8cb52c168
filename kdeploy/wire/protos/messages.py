"""Message classes of TF Serving's and KServe v2's protocols, from the vendored descriptor set.

The descriptors go into a private `DescriptorPool`, not protobuf's default one: a process may also hold
TensorFlow's (savedmodel backend) or tritonclient's (tests) registrations of the same names, and the default pool
refuses duplicates. The wire format is identical, since the package, message names and field numbers are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

DESCRIPTOR_SET = Path(__file__).resolve().parent / "descriptors.binpb"

TFS = "tensorflow.serving."
KSV2 = "inference."


@dataclass(frozen=True)
class Protos:
    """The descriptor pool and message classes the server uses (`protos.cls("tensorflow.TensorProto")`)."""

    pool: descriptor_pool.DescriptorPool
    file_names: tuple[str, ...]

    def cls(self, full_name: str) -> type[Message]:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def enum_value(self, enum_full_name: str, name: str) -> int:
        return self.pool.FindEnumTypeByName(enum_full_name).values_by_name[name].number


@functools.cache
def load_protos(path: Path = DESCRIPTOR_SET) -> Protos:
    """Load the descriptor set once per process (descriptors are immutable, so sharing them is safe)."""
    file_set = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:
        pool.Add(file_proto)
    return Protos(pool=pool, file_names=tuple(f.name for f in file_set.file))
