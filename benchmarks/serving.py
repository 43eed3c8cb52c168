"""Serving benchmark: kdeploy's server against in-process onnxruntime, a null and a plain Python server, and the peers
users would otherwise pick (KServe's Python model server and MLServer).

Measures, in one run and on one machine, with Triton's perf_analyzer (C++) as the load generator:
- in-process onnxruntime latency and throughput at batch 1, 8 and 32;
- every server in `VARIANTS` (adding a row is adding one entry): the null server (grpc.aio, returns a cached tensor)
  and the plain server (grpc.aio, inline onnxruntime) of benchmarks/reference_servers.py; kdeploy with its defaults,
  with dynamic batching (and the batch sizes it formed), with `--workers auto`, with mutual TLS (KServe v2 only:
  perf_analyzer's TF Serving client has no TLS), and observed (every request traced, OTLP to a receiver in this
  process, benchmarks/otlp_sink.py, payload-logged and access-logged, files under build/bench-serve/logs); KServe 0.21
  and MLServer 1.7.1 (benchmarks/peers/, each in its own venv from benchmarks/setup_peers.sh); over KServe v2 gRPC,
  TF Serving gRPC where the server speaks it, and KServe v2 over HTTP on kdeploy's REST port (`perf_analyzer -i
  http`: binary tensors, and JSON tensors for the default server);
at concurrency 1, 8 and 32, plus each server's RSS and start-to-ready time, on four models: the tabular MLP, the
digits CNN, a wide MLP (512 -> 2048 -> 2048 -> 10) and MobileNetV2 (random weights, 224x224x3).

All of a model's servers are up at once and measured in rounds, each round once per server, concurrency and
protocol in short runs, the order reversed every round (as benchmarks/ab_serve.py does): a machine whose speed
drifts over minutes moves every server alike, and each cell is the median over the rounds (BENCH_ROUNDS, default 2).
BENCH_MODELS=wide,mobilenet measures only those, in that order; BENCH_PROTOCOLS=kserve leaves out TF Serving's
Predict; BENCH_REUSE_MODELS=1 reuses build/bench-serve/repo.

Run `make bench-serve` (it installs perf_analyzer and the peers first). Results: build/bench-serve/results.json
during the run, then the record benchmarks/results/serving.json, from which `make docs` writes the tables in
docs/benchmarks.md (`render`); the tables are printed too. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench-serve"
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
PERF_VENV = ROOT / "build" / "perf-venv"
PERF = PERF_VENV / "bin" / "perf_analyzer"
CONCURRENCY = (1, 8, 32)
PY = sys.executable
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
"""Rounds of the alternation (each cell is the median over them)."""
PROTOCOLS = tuple(os.environ.get("BENCH_PROTOCOLS", "kserve,tfserving,kserve-rest,kserve-rest-json").split(","))
"""KServe v2 gRPC, TF Serving's Predict, KServe v2 HTTP with binary and with JSON tensors; BENCH_PROTOCOLS=kserve
measures only the first (the peers' protocol)."""
REST_KINDS = {"kserve-rest": "http", "kserve-rest-json": "json"}
"""perf_analyzer over HTTP: binary tensors (Triton's extension), or JSON tensors."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def perf_env() -> dict[str, str]:
    cudart = next(PERF_VENV.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    return {**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def prepare_models() -> dict[str, Path]:
    """Train the two recipes, build the wide MLP and MobileNetV2, export each to ONNX; version folders by name."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from kdeploy.export.exporter import ExportConfig, export_model
    from kdeploy.export.verify import VerifyConfig
    from kdeploy.train.trainer import TrainConfig, train

    repo = OUT / "repo"
    sources: dict[str, Path] = {}
    for recipe, name in (("tabular-mlp", "tabular"), ("digits-cnn", "digits")):
        sources[name] = train(TrainConfig(recipe=recipe, out_dir=OUT / name), write=lambda _: None).model_path
    keras.utils.set_random_seed(0)
    wide = keras.Sequential([keras.Input((512,), name="features"), keras.layers.Dense(2048, activation="relu"),
                             keras.layers.Dense(2048, activation="relu"),
                             keras.layers.Dense(10, activation="softmax", name="probabilities")])
    wide.save(OUT / "wide.keras")
    sources["wide"] = OUT / "wide.keras"
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    mobilenet.save(OUT / "mobilenet.keras")
    sources["mobilenet"] = OUT / "mobilenet.keras"
    versions = {}
    for name, path in sources.items():
        print(f"export {name}", flush=True)
        result = export_model(ExportConfig(model_path=path, repository=repo, name=name, version=1, force=True,
                                           formats=("onnx",), verify_config=VerifyConfig(samples=16, max_batch=8)),
                              progress=lambda _: None)
        assert result.ok, (name, result.failed_formats, result.parity and result.parity.failures)
        versions[name] = result.version_dir
    return versions


def in_process(version_dir: Path) -> dict[str, dict[str, float]]:
    """onnxruntime in this process: p50 latency and inferences/s per batch size."""
    from kdeploy.contract.manifest import read_manifest
    from kdeploy.runtimes.onnxruntime_backend import OnnxRuntimeBackend

    signature = read_manifest(version_dir).signature
    backend = OnnxRuntimeBackend(version_dir / "model.onnx", signature)
    results = {}
    for batch in (1, 8, 32):
        feed = signature.generate_feed(batch, np.random.default_rng(0))
        for _ in range(5):
            backend.infer(feed)
        times = []
        deadline = time.perf_counter() + 1.5
        while time.perf_counter() < deadline or len(times) < 20:
            started = time.perf_counter()
            backend.infer(feed)
            times.append(time.perf_counter() - started)
        results[str(batch)] = {"p50_us": float(np.median(times) * 1e6), "infer_per_s": batch / float(np.mean(times))}
    return results


def wait_ready(process: subprocess.Popen, marker: str, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        if marker in line:
            return time.monotonic() - started
    raise RuntimeError("server did not become ready")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tls_files(folder: Path) -> tuple[list[str], list[str], Any]:
    """Certificates for a mutual-TLS server (a CA, the server's for 127.0.0.1, a client's): its flags, perf_analyzer's
    (which cannot override the name it checks, so the certificate names the address), and the files."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests/ is not installed; its certificate helper is what the TLS tests use
    from tests.certificates import make_pki

    pki = make_pki(folder)
    server = ["--tls-cert", str(pki.secret.cert), "--tls-key", str(pki.secret.key), "--tls-client-ca", str(pki.ca_file)]
    client = ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(pki.ca_file),
              "--ssl-grpc-private-key-file", str(pki.client_key), "--ssl-grpc-certificate-chain-file",
              str(pki.client_cert)]
    return server, client, pki


def run_perf(model: str, port: int, concurrency: int, *, protocol: str = "kserve", shapes: str = "",
             ssl: list[str] | None = None) -> dict:
    """One perf_analyzer measurement over `protocol` (`kserve`, `tfserving`, or KServe v2 HTTP on a REST `port`:
    `kserve-rest`, `kserve-rest-json`); also how much CPU perf_analyzer itself used (is it the bottleneck?)."""
    tfserving, http = protocol == "tfserving", protocol in REST_KINDS
    csv_path = OUT / f"pa-{model}-{port}-{concurrency}-{protocol}.csv"
    # Three short windows, perf_analyzer's stability check off (-s 1000): on a machine shared with other work it
    # never settles and then writes nothing; the rounds, alternated, and their medians stand in for it.
    # Zeros as input: perf_analyzer's random values make the wide MLP answer NaN, which MLServer cannot encode
    # (its NumpyCodec turns NaN into None, then packing fails); these models' compute does not depend on the values.
    command = [str(PERF), "-m", model, "-u", f"127.0.0.1:{port}", "-i", "http" if http else "grpc",
               "--concurrency-range", f"{concurrency}:{concurrency}", "-p", "1500", "-s", "1000", "-r", "3",
               "--input-data", "zero", "-f", str(csv_path), *(ssl or [])]
    if protocol == "kserve-rest-json":
        command += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    if tfserving:
        command += ["--service-kind=tfserving", *(["--shape", shapes] if shapes else [])]
    else:
        command += ["-x", "1"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=perf_env(), timeout=300, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not csv_path.exists():
        return {"error": (proc.stdout + proc.stderr).strip().splitlines()[-1:]}
    with open(csv_path) as handle:
        row = next(csv.DictReader(handle))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"infer_per_s": float(row["Inferences/Second"]), "p50_us": float(row["p50 latency"]),
            "p99_us": float(row["p99 latency"]), "pa_cpu_cores": cpu / wall}


@dataclass(frozen=True)
class ModelContext:
    """What a variant needs to start its server for one model."""

    name: str
    version_dir: Path
    batching_file: Path
    scratch: Path
    otlp: str = ""
    """The OTLP receiver's endpoint (benchmarks/otlp_sink.py)."""
    tls_server: tuple[str, ...] = ()
    """`kdeploy serve`'s flags for mutual TLS with the run's certificates."""

    @property
    def repository(self) -> Path:
        return self.version_dir.parent.parent


Launcher = Callable[[ModelContext, int, int], tuple[list[str], dict[str, str]]]
"""The command and extra environment that start a variant's server on a gRPC port (and a REST port, if not 0)."""


@dataclass(frozen=True)
class Variant:
    """One server in the table. Adding a row is adding one of these to `VARIANTS`."""

    label: str
    launch: Launcher
    tfserving: bool | tuple[str, ...] = True
    """Also measure TF Serving's Predict: for every model, none (False) or the models named."""
    batch_histogram: bool = False
    """Record the batch sizes it formed (Triton's ModelStatistics)."""
    available: Callable[[], str | None] = lambda: None
    """Why the variant cannot run here (a missing venv), or None."""
    http: tuple[str, ...] = ()
    """KServe v2 over HTTP on the REST port, with binary (`kserve-rest`) and/or JSON (`kserve-rest-json`) tensors."""
    tls: bool = False
    """Mutual TLS: the server gets the run's certificates, perf_analyzer (gRPC only) its client certificate."""

    def protocols(self, model: str) -> tuple[str, ...]:
        tfs = self.tfserving if isinstance(self.tfserving, bool) else model in self.tfserving
        return (("kserve", "tfserving") if tfs else ("kserve",)) + self.http


def reference(kind: str) -> Launcher:
    """benchmarks/reference_servers.py's `null` or `plain`."""
    return lambda ctx, port, rest_port: ([PY, str(ROOT / "benchmarks" / "reference_servers.py"), kind,
                                          str(ctx.version_dir), str(port)], {})


def kdeploy(*flags: str, env: dict[str, str] | None = None, tls: bool = False) -> Launcher:
    """This checkout's `kdeploy serve` with its defaults, `flags` and `env` (`{batching_file}`, `{logs}` and
    `{otlp}` are filled in), with mutual TLS if `tls`."""
    def launch(ctx: ModelContext, port: int, rest_port: int) -> tuple[list[str], dict[str, str]]:
        fields = {"batching_file": ctx.batching_file, "logs": OUT / "logs" / ctx.name, "otlp": ctx.otlp}
        rest = ["--rest-port", str(rest_port)] if rest_port else ["--no-rest"]
        return ([PY, "-m", "kdeploy", "serve", "--repository", str(ctx.repository), "--model", ctx.name,
                 "--grpc-port", str(port), *rest, "--no-metrics", "--poll-seconds", "0",
                 "--drain-grace-seconds", "0", "--log-format", "text", *(ctx.tls_server if tls else ()),
                 *(f.format(**fields) for f in flags)],
                {k: v.format(**fields) for k, v in (env or {}).items()})
    return launch


PEERS = ROOT / "benchmarks" / "peers"


def peer(name: str) -> Launcher:
    """KServe's or MLServer's Python server in its own venv (benchmarks/setup_peers.sh), on loopback ports."""
    def launch(ctx: ModelContext, port: int, rest_port: int) -> tuple[list[str], dict[str, str]]:
        config = ctx.scratch / f"{ctx.name}-model-config.bin"
        config.write_bytes(model_config_response(ctx.version_dir))
        ports = [str(free_port()) for _ in range(2 if name == "mlserver" else 1)]
        return ([str(ROOT / "build" / f"{name}-venv" / "bin" / "python"), str(PEERS / f"{name}_server.py"),
                 str(ctx.version_dir / "model.onnx"), ctx.name, str(port), *ports, str(config)],
                {"PYTHONPATH": str(PEERS)})
    return launch


def peer_missing(name: str) -> Callable[[], str | None]:
    venv = ROOT / "build" / f"{name}-venv" / ".installed"
    return lambda: None if venv.exists() else f"{venv.parent} is missing: run benchmarks/setup_peers.sh"


OBSERVED_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT": "{otlp}", "OTEL_TRACES_SAMPLER": "always_on",
                "OTEL_BSP_MAX_QUEUE_SIZE": "8192"}
"""Every request traced, to the benchmark's own OTLP receiver."""

VARIANTS: list[Variant] = [
    Variant("null", reference("null")),
    Variant("plain", reference("plain")),
    Variant("kdeploy", kdeploy(), http=("kserve-rest", "kserve-rest-json")),
    Variant("kdeploy+mtls", kdeploy(tls=True), tfserving=False, tls=True),
    Variant("kdeploy+batching", kdeploy("--enable-batching", "--batching-parameters-file", "{batching_file}"),
            tfserving=("wide",), batch_histogram=True),
    Variant("kdeploy workers=auto", kdeploy("--workers", "auto"), http=("kserve-rest",)),
    Variant("kdeploy observed", kdeploy("--payload-log-rate", "1", "--payload-log-file", "{logs}/payload.jsonl",
                                        "--access-log", "{logs}/access.jsonl", "--payload-log-max-mb", "50",
                                        "--payload-log-backups", "1", env=OBSERVED_ENV), http=("kserve-rest",)),
    Variant("kserve", peer("kserve"), tfserving=False, available=peer_missing("kserve")),
    Variant("mlserver", peer("mlserver"), tfserving=False, available=peer_missing("mlserver")),
]
"""The servers measured, in this order (reversed every other round)."""


def model_config_response(version_dir: Path) -> bytes:
    """Triton's ModelConfigResponse for the model, which perf_analyzer asks for first (the peers lack the RPC)."""
    from kdeploy.contract.manifest import read_manifest
    from kdeploy.serve.triton_config import triton_model_config
    from kdeploy.wire.protos.messages import load_protos

    protos = load_protos()
    config = triton_model_config(protos, read_manifest(version_dir), dynamic_batching=False)
    return protos.cls("inference.ModelConfigResponse")(config=config).SerializeToString()


def wait_model_ready(process: subprocess.Popen, port: int, model: str, timeout: float = 180,
                     pki: Any = None) -> float:
    """Seconds until the server answers KServe v2 ModelReady for the model with ready=true (over mutual TLS with the
    client certificate of `pki`, when given)."""
    import grpc

    from kdeploy.wire.protos.messages import load_protos
    from kdeploy.wire.tls import ClientTls, secure_channel

    protos = load_protos()
    request = protos.cls("inference.ModelReadyRequest")(name=model)
    started = time.monotonic()
    tls = None if pki is None else ClientTls(ca=pki.ca_file, cert=pki.client_cert, key=pki.client_key)
    with secure_channel(f"127.0.0.1:{port}", tls) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelReady",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=protos.cls("inference.ModelReadyResponse").FromString)
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if call(request, timeout=2).ready:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def median_cell(runs: list[dict]) -> dict:
    """Per measure, the median over rounds (a failed run counts only when every round failed)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    cell = {key: statistics.median(r[key] for r in good) for key in good[0]}
    cell["rounds"] = len(good)
    return cell


def server_runs(name: str, version_dir: Path, batching_file: Path, rounds: int, otlp: str = "") -> dict:
    """Every available variant up at once; `rounds` rounds, each measuring each variant once per concurrency and
    protocol in short runs, the order reversed every round; each cell the median over its rounds."""
    from kdeploy.contract.manifest import read_manifest

    signature = read_manifest(version_dir).signature
    shapes = " ".join(f"{s.name}:1,{','.join(str(d) for d in s.shape[1:])}" for s in signature.inputs)
    running: dict[str, tuple[Variant, subprocess.Popen, int, int]] = {}
    results: dict = {}
    logs = []
    with tempfile.TemporaryDirectory() as scratch:
        tls_server, tls_client, pki = tls_files(Path(scratch) / "pki")
        context = ModelContext(name, version_dir, batching_file, Path(scratch), otlp, tuple(tls_server))
        try:
            for variant in VARIANTS:
                missing = variant.available()
                if missing:
                    print(f"  {variant.label}: skipped ({missing})", flush=True)
                    continue
                port, rest_port = free_port(), (free_port() if variant.http else 0)
                command, env = variant.launch(context, port, rest_port)
                # The server's output goes to a file: an unread pipe would block the server once it filled.
                log = open(OUT / f"server-{name}-{variant.label}.log", "w")  # noqa: SIM115 - closed below
                logs.append(log)
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=scratch,
                                           env={**os.environ, "PYTHONPATH": str(ROOT), **env})
                running[variant.label] = (variant, process, port, rest_port)
                start_seconds = wait_model_ready(process, port, name, pki=pki if variant.tls else None)
                results[variant.label] = {"start_s": start_seconds, "rss_mib": rss_mib(process.pid)}
            cells: dict[tuple[str, str], list[dict]] = {}
            for round_number in range(rounds):
                order = list(running.values())
                order = order if round_number % 2 == 0 else order[::-1]
                for concurrency in CONCURRENCY:
                    for protocol in PROTOCOLS:
                        for variant, _process, port, rest_port in order:
                            if protocol not in variant.protocols(name):
                                continue
                            print(f"  round {round_number + 1}/{rounds} {name} {variant.label} {protocol} "
                                  f"c{concurrency}", flush=True)
                            cells.setdefault((variant.label, f"{protocol}_c{concurrency}"), []).append(
                                run_perf(name, rest_port if protocol in REST_KINDS else port, concurrency,
                                         protocol=protocol, shapes=shapes, ssl=tls_client if variant.tls else None))
            for (label, key), runs in cells.items():
                results[label][key] = median_cell(runs)
            for label, (variant, process, port, _rest_port) in running.items():
                results[label]["rss_after_mib"] = rss_mib(process.pid)
                if variant.batch_histogram:
                    results[label]["batch_sizes"] = batch_histogram(port, name)
        finally:
            for _variant, process, _port, _rest_port in running.values():
                process.send_signal(signal.SIGTERM)
            for _variant, process, _port, _rest_port in running.values():
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    process.kill()
            for log in logs:
                log.close()
    return results


def batch_histogram(port: int, model: str) -> dict[str, int]:
    """Executions per batch size over the whole run (Triton's ModelStatistics batch_stats)."""
    import grpc

    from kdeploy.wire.protos.messages import load_protos

    protos = load_protos()
    request = protos.cls("inference.ModelStatisticsRequest")(name=model)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=protos.cls("inference.ModelStatisticsResponse").FromString)
        response = call(request, timeout=10)
    return {str(b.batch_size): b.compute_infer.count for s in response.model_stats for b in s.batch_stats}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def main() -> int:
    if not PERF.exists():
        print("perf_analyzer is missing: run `make perf-analyzer` (or benchmarks/setup_perf_analyzer.sh)",
              file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    batching_file = OUT / "batching_parameters.txt"
    batching_file.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
                             "max_enqueued_batches { value: 64 }\nnum_batch_threads { value: 2 }\n"
                             "allowed_batch_sizes: 1\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\n"
                             "allowed_batch_sizes: 8\nallowed_batch_sizes: 16\nallowed_batch_sizes: 32\n")
    reuse = os.environ.get("BENCH_REUSE_MODELS") == "1" and (OUT / "repo").is_dir()
    versions = ({p.name: sorted(p.iterdir())[-1] for p in sorted((OUT / "repo").iterdir())} if reuse
                else prepare_models())
    wanted = [m for m in os.environ.get("BENCH_MODELS", "").split(",") if m]
    versions = {k: versions[k] for k in wanted if k in versions} if wanted else versions
    from datetime import date

    from otlp_sink import start  # benchmarks/otlp_sink.py, beside this file

    otlp, sink, _ = start()
    results = {"machine": machine(), "date": date.today().isoformat(), "rounds": ROUNDS,
               "load_average": os.getloadavg()[0], "models": {}}
    for name, version_dir in versions.items():
        print(f"model {name}", flush=True)
        results["models"][name] = {"in_process": in_process(version_dir),
                                   "servers": server_runs(name, version_dir, batching_file, ROUNDS, otlp)}
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
    sink.stop(0)
    results["load_average_end"] = os.getloadavg()[0]
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


def render(results: dict) -> str:
    """The Markdown tables of one run (docs/benchmarks.md is written from this)."""
    lines = [f"Machine: {results['machine']}" + (f"; {results['date']}." if "date" in results else ".")
             + (f" Servers alternated in {results['rounds']} rounds, each cell the median over them; load average "
                f"{results['load_average']:.1f} at the start, {results.get('load_average_end', 0):.1f} at the end "
                "(2 cores: above 2, other work shared the machine)." if "rounds" in results else ""), ""]
    lines += ["| model | in-process p50 batch 1 | in-process inf/s batch 1 / 8 / 32 |", "|---|---|---|"]
    for name, data in results["models"].items():
        ip = data["in_process"]
        lines.append(f"| {name} | {ip['1']['p50_us']:.0f} µs | {ip['1']['infer_per_s']:.0f} / "
                     f"{ip['8']['infer_per_s']:.0f} / {ip['32']['infer_per_s']:.0f} |")
    lines += ["", "| model | server | protocol | c1 p50 µs | c1 inf/s | c8 inf/s | c32 inf/s | c32 p99 µs | RSS MiB "
              "| start s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, data in results["models"].items():
        for label, entry in data["servers"].items():
            for protocol in ("kserve", "tfserving", *REST_KINDS):
                if f"{protocol}_c1" not in entry:
                    continue
                cells = [entry.get(f"{protocol}_c{c}", {}) for c in CONCURRENCY]
                if any("error" in c for c in cells):
                    lines.append(f"| {name} | {label} | {protocol} | error: {cells} |")
                    continue
                lines.append(
                    f"| {name} | {label} | {protocol} | {cells[0]['p50_us']:.0f} | {cells[0]['infer_per_s']:.0f} | "
                    f"{cells[1]['infer_per_s']:.0f} | {cells[2]['infer_per_s']:.0f} | {cells[2]['p99_us']:.0f} | "
                    f"{entry['rss_mib']:.0f} | {entry['start_s']:.2f} |")
    return "\n".join([*lines, "", *ratio_table(results)])


def ratio_table(results: dict) -> list[str]:
    """The issue's targets as ratios measured in this run (KServe / TF Serving where both were measured)."""

    def cell(model: str, server: str, protocol: str, concurrency: int, key: str) -> float | None:
        entry = results["models"].get(model, {}).get("servers", {}).get(server, {})
        value = entry.get(f"{protocol}_c{concurrency}", {}).get(key)
        return float(value) if value is not None else None

    def both(compute) -> str:
        values = [compute(protocol) for protocol in ("kserve", "tfserving")]
        return " / ".join("-" if v is None else f"{v:.2f}" for v in values)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    def none_or_sum(a: float | None, b: float) -> float | None:
        return None if a is None else a + b

    lines = ["| target | model | measured (KServe / TF Serving) |", "|---|---|---|"]
    peers = [  # (target, server, concurrency, measure, higher is better, bound)
        ("c1 p50 / plain's ≤ 1.10", "plain", 1, "p50_us", False, 1.10),
        ("c1 p50 / KServe's ≤ 1", "kserve", 1, "p50_us", False, 1.0),
        ("c32 inf/s / plain's ≥ 0.95", "plain", 32, "infer_per_s", True, 0.95),
        ("c32 inf/s / KServe's ≥ 1", "kserve", 32, "infer_per_s", True, 1.0),
        ("c32 inf/s / MLServer's ≥ 3", "mlserver", 32, "infer_per_s", True, 3.0),
    ]
    for model in results["models"]:
        for target, server, level, key, higher, bound in peers:
            if server not in results["models"][model]["servers"]:
                continue
            value = ratio(cell(model, "kdeploy", "kserve", level, key), cell(model, server, "kserve", level, key))
            verdict = "" if value is None else (" met" if (value >= bound if higher else value <= bound) else " missed")
            lines.append(f"| {target} | {model} | " + ("-" if value is None else f"{value:.2f}{verdict}") + " |")
    for model in results["models"]:
        in_process_p50 = results["models"][model]["in_process"]["1"]["p50_us"]
        lines.append(f"| c1 p50 / (null p50 + in-process b1 p50) ≤ 1.15 | {model} | " + both(
            lambda p, m=model, ip=in_process_p50: ratio(cell(m, "kdeploy", p, 1, "p50_us"),
                                                        none_or_sum(cell(m, "null", p, 1, "p50_us"), ip))) + " |")
        lines.append(f"| c32 throughput / null ≥ 0.85 (small models) | {model} | " + both(
            lambda p, m=model: ratio(cell(m, "kdeploy", p, 32, "infer_per_s"), cell(m, "null", p, 32, "infer_per_s")))
            + " |")
        if "kdeploy observed" in results["models"][model]["servers"]:  # runs recorded before it have no such row
            lines.append(f"| traced (always_on) + payload log 1.0 + access log / plain kdeploy at c32 | {model} | "
                         + both(lambda p, m=model: ratio(cell(m, "kdeploy observed", p, 32, "infer_per_s"),
                                                         cell(m, "kdeploy", p, 32, "infer_per_s"))) + " |")
        if "kdeploy+mtls" in results["models"][model]["servers"]:  # runs recorded before TLS have no such rows
            lines.append(f"| mutual TLS / plaintext c1 p50 (KServe) | {model} | " + both(
                lambda p, m=model: ratio(cell(m, "kdeploy+mtls", p, 1, "p50_us"), cell(m, "kdeploy", p, 1, "p50_us")))
                + " |")
            lines.append(f"| mutual TLS / plaintext c32 throughput (KServe) | {model} | " + both(
                lambda p, m=model: ratio(cell(m, "kdeploy+mtls", p, 32, "infer_per_s"),
                                         cell(m, "kdeploy", p, 32, "infer_per_s"))) + " |")
        grpc = cell(model, "kdeploy", "kserve", 32, "infer_per_s")
        rest = [ratio(cell(model, "kdeploy", p, 32, "infer_per_s"), grpc) for p in REST_KINDS]
        if rest != [None, None]:  # records from before HTTP was measured have none
            lines.append(f"| KServe v2 HTTP / gRPC at c32 ≥ 0.8 (binary / JSON tensors) | {model} | "
                         + " / ".join("-" if v is None else f"{v:.2f}" for v in rest) + " |")
        lines.append(f"| workers=auto / 1 worker at c32 | {model} | " + both(
            lambda p, m=model: ratio(cell(m, "kdeploy workers=auto", p, 32, "infer_per_s"),
                                     cell(m, "kdeploy", p, 32, "infer_per_s"))) + " |")
    if "wide" in results["models"]:
        lines.append("| batching / no batching at c32 ≥ 2.5 | wide | " + both(
            lambda p: ratio(cell("wide", "kdeploy+batching", p, 32, "infer_per_s"),
                            cell("wide", "kdeploy", p, 32, "infer_per_s"))) + " |")
    if "mobilenet" in results["models"]:
        in_process = results["models"]["mobilenet"]["in_process"]["1"]["infer_per_s"]
        lines.append("| c32 / in-process throughput ≥ 0.9 | mobilenet | " + both(
            lambda p: ratio(cell("mobilenet", "kdeploy", p, 32, "infer_per_s"), in_process)) + " |")
    for model, data in results["models"].items():
        sizes = data["servers"].get("kdeploy+batching", {}).get("batch_sizes")
        if sizes:
            lines.append(f"| batch sizes formed (size: executions) | {model} | "
                         + ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items(), key=lambda kv: int(kv[0])))
                         + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
