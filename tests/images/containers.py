"""Run kdeploy's images the way a cluster would, on 127.0.0.1, and always clean up after them.

Every container gets a unique name and host networking (no registry, no CNI on the build machines; ports are free
ports on 127.0.0.1 chosen here), and is removed by the fixture that started it, pass or fail.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.engine import Engine

REPO = Path(__file__).resolve().parents[2]
HARDENED = ["--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
"""What the manifests' securityContext asks for, as run flags (the read-only root is engine-specific)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_name(prefix: str) -> str:
    return f"kdeploy-test-{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def read_only_root(engine: Engine) -> list[str]:
    """A read-only root with a writable tmpfs at /tmp only (Kubernetes: readOnlyRootFilesystem + emptyDir /tmp).

    Podman's --read-only alone would also mount tmpfs on /run and /var/tmp; Kubernetes does not, so neither do we.
    """
    extra = ["--read-only-tmpfs=false"] if engine.name == "podman" else []
    return ["--read-only", *extra, "--tmpfs", "/tmp:rw,size=64m,mode=1777"]


@dataclass
class Container:
    """One detached container, removed by `remove()`."""

    engine: Engine
    name: str
    ports: dict[str, int] = field(default_factory=dict)
    startup_seconds: float = 0.0
    """Start to SERVING, once waited for."""

    def start(self, image: str, *args: str, command: list[str] | None = None) -> Container:
        self.engine.run(["run", "--detach", "--name", self.name, "--network", "host", *args, image,
                         *(command or [])], timeout=120)
        return self

    def logs(self) -> str:
        result = self.engine.run(["logs", self.name], check=False, timeout=60)
        return (result.stdout or "") + (result.stderr or "")

    def state(self, field_name: str) -> str:
        return self.engine.run(["inspect", "--format", "{{.State." + field_name + "}}", self.name],
                               timeout=60).stdout.strip()

    def running(self) -> bool:
        return self.state("Running") == "true"

    def remove(self) -> None:
        self.engine.remove_container(self.name)


def health(address: str, timeout: float = 2.0) -> str:
    """grpc.health.v1 status of the whole server, or the gRPC error code's name."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def wait_serving(address: str, alive: Callable[[], bool], describe: Callable[[], str],
                 timeout: float = 90.0) -> float:
    """Wait until the server at `address` reports SERVING; returns the seconds it took.

    Args:
        address: HOST:PORT of the gRPC port.
        alive: returns False once the container (or pod) has exited: no point waiting longer.
        describe: returns its log, for the failure message.
        timeout: seconds to wait.
    """
    start = time.monotonic()
    status = "not polled"
    while time.monotonic() - start < timeout:
        status = health(address)
        if status == "SERVING":
            return time.monotonic() - start
        if not alive():
            raise AssertionError(f"exited before serving (last health: {status}):\n{describe()}")
        time.sleep(0.5)
    raise AssertionError(f"not SERVING within {timeout:.0f} s (last health: {status}):\n{describe()}")
