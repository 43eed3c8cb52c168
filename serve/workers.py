"""`kdeploy serve --workers N`: N server processes sharing the gRPC and REST ports (SO_REUSEPORT).

One Python process spends most of a small model's request in gRPC's Python code, on one core at a time (the GIL).
Several processes bound to the same ports let the kernel spread connections over them, so every core works. The
parent loads no model: it starts the workers, waits until each is SERVING, serves their summed Prometheus metrics
(prometheus-client's multiprocess mode), forwards SIGTERM so each drains, and exits when they have.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdeploy.common.errors import KdeployError, UsageError
from kdeploy.serve.config import ServeConfig

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 300.0
WORKER_METRICS_FLUSH_SECONDS = 0.25
"""How often a worker moves its request counters into the files the parent sums (scrapes lag by at most this)."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _worker(config: ServeConfig, log_level: int, log_format: str, ready: Any, index: int) -> None:
    """One worker process: serve until SIGTERM, then drain (runs in a fresh interpreter: spawn)."""
    from kdeploy.common.logs import configure_logging
    from kdeploy.serve.server import build_server, exit_process

    configure_logging(log_level, log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = build_server(config)
    ready.put((index, os.getpid(), running.models.is_ready()))
    while not stop.wait(1.0):
        pass
    running.stop(release_ports=False)
    exit_process(0)


def _own_files(config: ServeConfig, index: int) -> ServeConfig:
    """A worker's configuration with log files of its own (`payload.worker-0.jsonl`): processes appending to and
    rotating one file would cut each other's lines. The access log's `-` (standard output) is shared."""
    def own(path: str | Path) -> Path:
        base = Path(path)
        return base.with_name(f"{base.stem}.worker-{index}{base.suffix}")

    payload = config.payload_log_file
    access = config.access_log
    return replace(config, payload_log_file=None if payload is None else own(payload),
                   access_log=access if access in (None, "-") else str(own(access)))


class WorkerPool:
    """The worker processes of one server and the metrics endpoint that sums them."""

    def __init__(self, config: ServeConfig, log_level: int, log_format: str) -> None:
        if config.workers < 2:
            raise UsageError("a worker pool needs --workers 2 or more")
        grpc_port = config.grpc_port or _free_port(config.host)
        rest_port = None if config.rest_port is None else (config.rest_port or _free_port(config.host))
        self.config = replace(config, grpc_port=grpc_port, rest_port=rest_port)
        self._metrics_dir = tempfile.mkdtemp(prefix="kdeploy-metrics-")
        # Workers are spawned (fresh interpreters) and read this when prometheus-client is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        context = multiprocessing.get_context("spawn")
        self._ready = context.Queue()
        worker_config = replace(self.config, workers=1, reuse_port=True, metrics_port=None,
                                metrics_flush_seconds=WORKER_METRICS_FLUSH_SECONDS)
        self.processes = [context.Process(target=_worker, name=f"kdeploy-worker-{i}",
                                          args=(_own_files(worker_config, i), log_level, log_format, self._ready, i))
                          for i in range(config.workers)]
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self.all_ready = False

    def start(self) -> None:
        """Start every worker and wait until each has loaded its models.

        Raises:
            KdeployError: when a worker dies or does not come up in time.
        """
        for process in self.processes:
            process.start()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        ready: list[tuple[int, int, bool]] = []
        while len(ready) < len(self.processes):
            if any(p.exitcode is not None for p in self.processes):
                self.stop()
                raise KdeployError("a worker process exited during start-up; see its log above")
            try:
                ready.append(self._ready.get(timeout=0.5))
            except Exception:  # queue.Empty: keep waiting
                if time.monotonic() > deadline:
                    self.stop()
                    raise KdeployError(f"workers did not start within {READY_TIMEOUT_SECONDS:.0f} s") from None
        self.all_ready = all(flag for _, _, flag in ready)
        if self.config.metrics_port is not None:
            from kdeploy.serve.metrics import serve_multiprocess

            self._metrics_server, self.metrics_port = serve_multiprocess(self._metrics_dir, self.config.host,
                                                                         self.config.metrics_port)
        logger.info("%d workers serving", len(self.processes), extra={"pids": [pid for _, pid, _ in ready]})

    def wait(self) -> int | None:
        """Block until a worker exits (returns its exit code); KeyboardInterrupt (SIGTERM) ends the wait."""
        while True:
            for process in self.processes:
                process.join(timeout=0.5)
                if process.exitcode is not None:
                    return process.exitcode

    def stop(self) -> int:
        """SIGTERM every worker (each drains), wait for them, clean up; 0 when all exited cleanly."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        codes = []
        for process in self.processes:
            process.join(timeout=self.config.drain_seconds + 10)
            if process.is_alive():
                process.kill()
                process.join()
            codes.append(process.exitcode)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return 0 if all(code == 0 for code in codes) else 1
