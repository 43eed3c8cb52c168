"""Load-test settings: the typed values every other module works with, parsed once from flags or env vars.

`LoadTestConfig` is what `kdeploy loadtest` (or Python) hands to the runner. `WorkloadSettings` is the part the
Locust process needs; it travels to Locust as custom command-line arguments (`to_locust_args`), which Locust
also accepts as `KDEPLOY_LOADTEST_*` env vars and forwards from a master to its workers. Standard library only
(and `kdeploy.wire.protocols`, which is too).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.wire.protocols import PROTOCOLS

SHAPES: tuple[str, ...] = ("constant", "step", "ramp")
ENV_PREFIX = "KDEPLOY_LOADTEST_"
MAX_DURATION_S = 24 * 3600.0
"""Longest run accepted: every run must stop by itself."""
PREFLIGHT_TIMEOUT_S = 3.0
"""How long the reachability check waits before calling a target unreachable."""


@dataclass(frozen=True)
class Target:
    """One server to load: `[LABEL=][PROTOCOL://]HOST:PORT` on the command line."""

    host: str
    port: int
    protocol: str | None = None
    """Set when the target names its protocol (`kserve-grpc://127.0.0.1:8500`), else the run's `--protocol`."""
    label: str | None = None

    @property
    def address(self) -> str:
        """`HOST:PORT` as gRPC and URLs spell it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def name(self, protocol: str) -> str:
        return self.label or f"{self.protocol or protocol}://{self.address}"


_TARGET = re.compile(r"^(?:(?P<label>[\w.-]+)=)?(?:(?P<scheme>[\w-]+)://)?"
                     r"(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\d+)/?$")


def parse_target(text: str) -> Target:
    """Parse `[LABEL=][PROTOCOL://]HOST:PORT`; `http://` means `tfserving-rest`.

    Raises:
        UsageError: for anything else.
    """
    match = _TARGET.match(text.strip())
    if not match:
        raise UsageError(f"target {text!r} is not [LABEL=][PROTOCOL://]HOST:PORT (e.g. 127.0.0.1:8500)")
    scheme = match["scheme"]
    protocol = "tfserving-rest" if scheme == "http" else scheme
    if protocol is not None and protocol not in PROTOCOLS:
        raise UsageError(f"target {text!r}: unknown protocol {scheme!r}; use one of {', '.join(PROTOCOLS)} or http")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise UsageError(f"target {text!r}: port {port} is out of range")
    return Target(host=match["host"].strip("[]"), port=port, protocol=protocol, label=match["label"])


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses. Names are never resolved: that would be network traffic."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def parse_duration(text: str) -> float:
    """`30`, `30s`, `1m30s`, `2h` as seconds.

    Raises:
        UsageError: when unreadable, shorter than a second or longer than a day.
    """
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif text and _DURATION_PART.sub("", text) == "":
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}
        seconds = sum(float(n) * scale[u] for n, u in _DURATION_PART.findall(text))
    else:
        raise UsageError(f"duration {text!r} is not like 30s, 1m30s or 2h")
    if not 1 <= seconds <= MAX_DURATION_S:
        raise UsageError(f"duration {text!r} must be between 1s and 24h")
    return seconds


def parse_rate(text: str) -> float:
    """`500/s`, `500`, `6000/min` as requests per second.

    Raises:
        UsageError: when unreadable or not positive.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min))?\s*", text)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"rate {text!r} is not a positive number of requests like 500/s or 6000/min")
    return float(match[1]) / (60.0 if match[2] in ("m", "min") else 1.0)


def default_open_loop_users(rate: float) -> int:
    """Users (concurrent requests) for an open-loop rate: enough to absorb ~100 ms of latency at that rate.

    By Little's law a rate R with latency L keeps R*L requests in flight; fewer users than that would make the
    generator, not the server, set the pace (the sends fall behind schedule and the latency grows with the lag).
    """
    return max(10, min(1000, math.ceil(rate * 0.1)))


@dataclass(frozen=True)
class WorkloadSettings:
    """What a Locust process needs to build its requests and pace them."""

    model: str
    protocol: str = "tfserving-grpc"
    model_version: int | None = None
    repository: Path | None = None
    """`REPO` (uses `REPO/MODEL`), a model folder or a version folder: where the signature and rows come from."""
    signature_from_server: bool = False
    """Ask the target for the signature (GetModelMetadata / ModelMetadata / REST metadata) instead."""
    data: Path | None = None
    """An `.npz` of input rows; default the version's `validation.npz`, else generated inputs."""
    batch: int = 1
    """Rows per request."""
    rate: float | None = None
    """Open loop: requests per second across all users; `None` is closed loop (each user back to back)."""
    request_timeout_s: float = 10.0
    max_requests: int = 1_000_000
    """Stop after this many requests even if the duration has not passed."""
    latency_file: Path | None = None
    """Where every request's exact latency is written (`latencies.npz`)."""
    shape: str = "constant"
    step_users: int | None = None
    """Users added per step (`--shape step`); default a fifth of `--users`."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if self.shape not in SHAPES:
            raise UsageError(f"unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}")
        if not self.model:
            raise UsageError("name the model to load with --model")
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        if self.repository is None and not self.signature_from_server:
            raise UsageError("give --repository REPO (the model's manifest) or --signature-from-server")
        if self.repository is not None and self.signature_from_server:
            raise UsageError("give either --repository or --signature-from-server, not both")
        if self.rate is not None and self.shape != "constant":
            raise UsageError("--rate (open loop) works with --shape constant only; step and ramp change users")
        if self.request_timeout_s <= 0 or self.max_requests < 1:
            raise UsageError("--request-timeout and --max-requests must be positive")
        if self.step_users is not None and self.step_users < 1:
            raise UsageError(f"--step-users must be at least 1, got {self.step_users}")

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def to_locust_args(self) -> list[str]:
        """The locustfile's custom arguments that reproduce these settings."""
        args = ["--model", self.model, "--protocol", self.protocol, "--batch", str(self.batch),
                "--request-timeout", repr(self.request_timeout_s), "--max-requests", str(self.max_requests),
                "--shape", self.shape, "--seed", str(self.seed)]
        optional: dict[str, Any] = {
            "--model-version": self.model_version, "--repository": self.repository, "--data": self.data,
            "--rate": None if self.rate is None else f"{self.rate!r}/s", "--latency-file": self.latency_file,
            "--step-users": self.step_users,
        }
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        if self.signature_from_server:
            args.append("--signature-from-server")
        return args

    @classmethod
    def from_options(cls, options: Any) -> WorkloadSettings:
        """Settings from Locust's parsed options (see `add_locust_arguments`)."""
        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(
            model=options.model or "", protocol=options.protocol, model_version=options.model_version or None,
            repository=path(options.repository), signature_from_server=_truthy(options.signature_from_server),
            data=path(options.data), batch=int(options.batch),
            rate=parse_rate(options.rate) if options.rate else None,
            request_timeout_s=float(options.request_timeout), max_requests=int(options.max_requests),
            latency_file=path(options.latency_file), shape=options.shape or "constant",
            step_users=int(options.step_users) if options.step_users else None, seed=int(options.seed),
        )


def _truthy(value: object) -> bool:
    # The web UI and env vars hand flags over as strings.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def add_locust_arguments(parser: Any) -> None:
    """Register the workload's arguments on Locust's (configargparse) parser, each with its env var.

    They go on the parser itself, not a group: only Locust's parser understands `include_in_web_ui`.
    """
    def add(flag: str, **kwargs: Any) -> None:
        env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(flag, env_var=env, **kwargs)

    add("--model", default="", help="model name on the server")
    add("--model-version", type=int, default=None, help="model version (default: the server's latest)")
    add("--protocol", default="tfserving-grpc", choices=PROTOCOLS, help="wire protocol")
    add("--repository", default="", help="model repository (REPO, REPO/NAME or REPO/NAME/VERSION)")
    add("--signature-from-server", action="store_true", default=False,
        help="fetch the signature from the server instead of a repository")
    add("--data", default="", help=".npz of input rows, or a payload log to replay (default: validation.npz)")
    add("--batch", type=int, default=1, help="rows per request")
    add("--rate", default="", help="open loop: total requests per second, e.g. 500/s (default: closed loop)")
    add("--request-timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    add("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    add("--latency-file", default="", include_in_web_ui=False, help="write every request's exact latency here (.npz)")
    add("--shape", default="constant", choices=SHAPES, help="constant (Locust's users), step or ramp")
    add("--step-users", type=int, default=None, help="users added per step (--shape step)")
    add("--seed", type=int, default=0, include_in_web_ui=False, help="seed of generated inputs")


@dataclass(frozen=True)
class LoadTestConfig:
    """One `kdeploy loadtest` run: who to load, with what, for how long, and what must hold."""

    target: Target
    workload: WorkloadSettings
    out_dir: Path
    users: int | None = None
    """Concurrent users; default 10 in closed loop, enough for the rate in open loop."""
    spawn_rate: float | None = None
    """Users started per second; default all within about a second."""
    duration_s: float = 30.0
    slo: str | None = None
    """`p99<50ms,errors<0.1%,rps>200`: exit status 1 when it does not hold."""
    processes: int = 1
    """Locust processes: more than 1 runs a master and workers (Locust's `--processes`)."""
    allow_remote: bool = False
    stop_timeout_s: float = 2.0
    """How long users may finish an in-flight request once the duration is over."""

    def __post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.target.host):
            raise UsageError(f"target {self.target.address} is not on this machine; pass --allow-remote to load it")
        if self.users is not None and self.users < 1:
            raise UsageError(f"--users must be at least 1, got {self.users}")
        if self.spawn_rate is not None and self.spawn_rate <= 0:
            raise UsageError(f"--spawn-rate must be positive, got {self.spawn_rate}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise UsageError("--duration must be between 1s and 24h")
        if self.processes < 1:
            raise UsageError(f"--processes must be at least 1, got {self.processes}")

    @property
    def protocol(self) -> str:
        return self.workload.protocol

    @property
    def user_count(self) -> int:
        if self.users is not None:
            return self.users
        if self.workload.rate is not None:
            return default_open_loop_users(self.workload.rate)
        return 10

    @property
    def spawn_per_second(self) -> float:
        # All users within a second by default: short runs should spend their time at the asked load.
        return self.spawn_rate if self.spawn_rate is not None else float(max(1, self.user_count))
