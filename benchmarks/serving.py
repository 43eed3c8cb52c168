"""Serving benchmark: kdeploy's server against in-process onnxruntime, a null server and a plain Python server.

Measures, in one run and on one machine, with Triton's perf_analyzer (C++) as the load generator:
- in-process onnxruntime latency and throughput at batch 1, 8 and 32;
- the null server (grpc.aio, returns a cached tensor) and the plain server (grpc.aio, inline onnxruntime), over
  KServe v2 and TF Serving gRPC (benchmarks/reference_servers.py);
- kdeploy's server over KServe v2 and TF Serving gRPC: one worker, with dynamic batching (and the batch sizes it
  formed), `--workers auto`, and mutual TLS over KServe v2 (perf_analyzer's TF Serving client has no TLS); and
  observed: every request traced (OTLP to a receiver in this process, benchmarks/otlp_sink.py), payload-logged and
  access-logged (files under build/bench-serve/logs); and over KServe v2 HTTP (`perf_analyzer -i http`: binary
  tensors, and JSON tensors for the one-worker server);
at concurrency 1, 8 and 32, plus kdeploy's RSS and start-to-SERVING time, on four models: the tabular MLP, the
digits CNN, a wide MLP (512 -> 2048 -> 2048 -> 10) and MobileNetV2 (random weights, 224x224x3).

Run `make bench-serve` (it installs perf_analyzer in build/perf-venv first). Results: build/bench-serve/results.json
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
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench-serve"
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
PERF_VENV = ROOT / "build" / "perf-venv"
PERF = PERF_VENV / "bin" / "perf_analyzer"
CONCURRENCY = (1, 8, 32)
PY = sys.executable


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


def tls_files(folder: Path) -> tuple[list[str], list[str]]:
    """Certificates for a mutual-TLS server (a CA, the server's for 127.0.0.1, a client's): its flags, and
    perf_analyzer's (which cannot override the name it checks, so the certificate names the address)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests/ is not installed; its certificate helper is what the TLS tests use
    from tests.certificates import make_pki

    pki = make_pki(folder)
    server = ["--tls-cert", str(pki.secret.cert), "--tls-key", str(pki.secret.key), "--tls-client-ca", str(pki.ca_file)]
    client = ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(pki.ca_file),
              "--ssl-grpc-private-key-file", str(pki.client_key), "--ssl-grpc-certificate-chain-file",
              str(pki.client_cert)]
    return server, client


def run_perf(model: str, port: int, concurrency: int, *, tfserving: bool = False, shapes: str = "",
             ssl: list[str] | None = None, http: bool = False, json_tensors: bool = False) -> dict:
    """One perf_analyzer measurement; also how much CPU perf_analyzer itself used (is it the bottleneck?).

    `http`: KServe v2 over HTTP on `port` (a REST port), binary tensors unless `json_tensors`.
    """
    kind = "tfs" if tfserving else ("json" if json_tensors else "http") if http else "kv2"
    csv_path = OUT / f"pa-{model}-{port}-{concurrency}-{kind}.csv"
    command = [str(PERF), "-m", model, "-u", f"127.0.0.1:{port}", "-i", "http" if http else "grpc",
               "--concurrency-range", f"{concurrency}:{concurrency}", "-p", "2000", "-s", "50", "-r", "8",
               "-f", str(csv_path), *(ssl or [])]
    if json_tensors:
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


def server_runs(name: str, version_dir: Path, batching_file: Path, otlp: str = "") -> dict:
    from kdeploy.contract.manifest import read_manifest

    signature = read_manifest(version_dir).signature
    shapes = " ".join(f"{s.name}:1,{','.join(str(d) for d in s.shape[1:])}" for s in signature.inputs)
    repo = version_dir.parent.parent
    results: dict = {}
    reference = [PY, str(ROOT / "benchmarks" / "reference_servers.py")]
    tls_server, tls_client = tls_files(OUT / "pki")
    variants: list[tuple[str, list[str] | None, list[str]]] = [
        ("null", [*reference, "null", str(version_dir)], []),
        ("plain", [*reference, "plain", str(version_dir)], []),
        ("kdeploy", None, []),
        ("kdeploy+mtls", None, tls_server),
        ("kdeploy+batching", None, ["--enable-batching", "--batching-parameters-file", str(batching_file)]),
        ("kdeploy workers=auto", None, ["--workers", "auto"]),
    ]
    logs = OUT / "logs" / name
    observed = ["--payload-log-rate", "1", "--payload-log-file", str(logs / "payload.jsonl"), "--access-log",
                str(logs / "access.jsonl"), "--payload-log-max-mb", "50", "--payload-log-backups", "1"]
    if otlp:
        variants.append(("kdeploy observed", None, observed))
    observed_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_SAMPLER": "always_on",
                    "OTEL_BSP_MAX_QUEUE_SIZE": "8192"}
    for label, base, flags in variants:
        port, rest_port = free_port(), free_port()
        if base is None:
            command = [PY, "-m", "kdeploy", "serve", "--repository", str(repo), "--model", name, "--grpc-port",
                       str(port), "--rest-port", str(rest_port), "--no-metrics", "--poll-seconds", "0",
                       "--drain-grace-seconds", "0", "--log-format", "text", *flags]
            marker = "kdeploy serve: SERVING"
        else:
            command, marker = [*base, str(port)], "ready on"
        # The server's log goes to a file: an unread pipe would block the server once it filled.
        log = open(OUT / f"server-{name}-{label}.log", "w")  # noqa: SIM115 - closed with the process below
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT),
                                        **(observed_env if label == "kdeploy observed" else {})})
        try:
            start_seconds = wait_ready(process, marker)
            entry: dict = {"start_s": start_seconds, "rss_mib": rss_mib(process.pid)}
            for concurrency in CONCURRENCY:
                print(f"  {name} {label} kserve c{concurrency}", flush=True)
                entry[f"kserve_c{concurrency}"] = run_perf(name, port, concurrency,
                                                           ssl=tls_client if "mtls" in label else None)
                if "mtls" in label:
                    continue  # perf_analyzer's TF Serving client speaks plaintext only
                if "batching" not in label or name == "wide":
                    print(f"  {name} {label} tfserving c{concurrency}", flush=True)
                    entry[f"tfserving_c{concurrency}"] = run_perf(name, port, concurrency, tfserving=True,
                                                                  shapes=shapes)
                if base is None and "batching" not in label:
                    print(f"  {name} {label} kserve-rest c{concurrency}", flush=True)
                    entry[f"kserve-rest_c{concurrency}"] = run_perf(name, rest_port, concurrency, http=True)
                if label == "kdeploy":
                    print(f"  {name} {label} kserve-rest-json c{concurrency}", flush=True)
                    entry[f"kserve-rest-json_c{concurrency}"] = run_perf(name, rest_port, concurrency, http=True,
                                                                         json_tensors=True)
            entry["rss_after_mib"] = rss_mib(process.pid)
            if "batching" in label:
                entry["batch_sizes"] = batch_histogram(port, name)
            results[label] = entry
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
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
    versions = prepare_models()
    from datetime import date

    from otlp_sink import start  # benchmarks/otlp_sink.py, beside this file

    otlp, sink, _ = start()
    results = {"machine": machine(), "date": date.today().isoformat(), "models": {}}
    for name, version_dir in versions.items():
        print(f"model {name}", flush=True)
        results["models"][name] = {"in_process": in_process(version_dir), "servers": server_runs(name, version_dir,
                                                                                                 batching_file, otlp)}
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
    sink.stop(0)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


def render(results: dict) -> str:
    """The Markdown tables of one run (docs/benchmarks.md is written from this)."""
    lines = [f"Machine: {results['machine']}" + (f"; {results['date']}." if "date" in results else "."), ""]
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
            for protocol in ("kserve", "tfserving", "kserve-rest", "kserve-rest-json"):
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
        lines.append(f"| workers=auto / 1 worker at c32 | {model} | " + both(
            lambda p, m=model: ratio(cell(m, "kdeploy workers=auto", p, 32, "infer_per_s"),
                                     cell(m, "kdeploy", p, 32, "infer_per_s"))) + " |")
    for model in results["models"]:
        grpc = cell(model, "kdeploy", "kserve", 32, "infer_per_s")
        rest = [ratio(cell(model, "kdeploy", p, 32, "infer_per_s"), grpc) for p in ("kserve-rest", "kserve-rest-json")]
        if rest != [None, None]:  # records from before HTTP was measured have none
            lines.append(f"| KServe v2 HTTP / gRPC at c32 ≥ 0.8 (binary / JSON tensors) | {model} | "
                         + " / ".join("-" if v is None else f"{v:.2f}" for v in rest) + " |")
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
