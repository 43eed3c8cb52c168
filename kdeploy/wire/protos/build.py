"""Compile the vendored .proto files into one descriptor set (`descriptors.binpb`) with grpcio-tools.

Run `make protos` (or `python -m kdeploy.wire.protos.build`) after editing a .proto file; a test checks that the
committed descriptor set matches the sources. The server loads the set into a private descriptor pool (see
`serve/protos/messages.py`), so its messages never clash with TensorFlow's or tritonclient's own copies of the
same names in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "descriptors.binpb"


def proto_sources() -> list[str]:
    """Every .proto file below this folder, relative to it, sorted."""
    return sorted(p.relative_to(HERE).as_posix() for p in HERE.rglob("*.proto"))


def compile_descriptor_set(output: Path = OUTPUT) -> bytes:
    """Compile all sources (with google/protobuf imports) into a FileDescriptorSet and write it to `output`."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{HERE}", f"-I{well_known}", f"--descriptor_set_out={output}", "--include_imports",
            *proto_sources()]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return output.read_bytes()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    compile_descriptor_set(target)
    print(f"wrote {target}")
