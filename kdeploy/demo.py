"""`kdeploy demo`: the main job end to end on the embedded default (the digits model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdeploy.common.errors import KdeployError


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="train the digits model, export it to every format and verify parity")
    parser.add_argument("--out", type=Path, default=Path("build/demo"), help="work directory (default build/demo)")
    parser.add_argument("--name", default="digits", help="model name in the repository (default digits)")
    parser.add_argument("--load-seconds", type=float, default=20.0,
                        help="length of the load test per gRPC protocol (default 20; 0 skips it)")
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from kdeploy.export.exporter import ExportConfig, export_model
    from kdeploy.export.parity_report import to_console
    from kdeploy.train.trainer import TrainConfig, train

    out: Path = args.out
    trained = train(TrainConfig(recipe="digits-cnn", out_dir=out / "train"))
    result = export_model(
        ExportConfig(model_path=trained.model_path, repository=out / "models", name=args.name, version=1, force=True),
        progress=print,
    )
    print()
    if result.parity is not None:
        print(to_console(result.parity))
    print()
    accuracy = trained.metrics["validation"].get("accuracy", float("nan"))
    print(f"trained model     {trained.model_path} (validation accuracy {accuracy:.2%})")
    print(f"model repository  {out / 'models'}")
    print(f"version           {result.version_dir}")
    for fmt, artifact in result.manifest.artifacts.items():
        print(f"  {fmt:<11} {artifact.path:<16} {artifact.bytes / 1024:8.1f} KiB")
    for fmt, reason in result.failed_formats.items():
        print(f"  {fmt:<11} FAILED: {reason}")
    if result.parity is not None:
        print(f"parity report     {result.version_dir / 'parity.md'} and parity.png: "
              f"{'PASS' if result.parity.passed else 'FAIL'}")
    if not result.ok:
        return 1
    print()
    serve_and_call(out / "models", args.name, result.version_dir, out / "loadtest", args.load_seconds)
    return 0


def serve_and_call(repository: Path, name: str, version_dir: Path, report_dir: Path, load_seconds: float) -> None:
    """Start the server, send one validation image through each protocol, load-test both gRPC protocols, stop."""
    import time

    import numpy as np

    from kdeploy.contract.manifest import read_manifest
    from kdeploy.contract.signature import load_data_file
    from kdeploy.serve.config import ServeConfig, VersionPolicy
    from kdeploy.serve.server import build_server
    from kdeploy.serve.sources import sources_from_repository
    from kdeploy.wire.clients import connect
    from kdeploy.wire.protocols import PROTOCOLS, REST_PROTOCOLS

    manifest = read_manifest(version_dir)
    if manifest.validation_data is None:
        raise KdeployError(f"{version_dir} has no held-out data to send; the demo exports a trained recipe")
    feed, labels = load_data_file(version_dir / manifest.validation_data, manifest.signature)
    row = {key: value[:1] for key, value in feed.items()}
    config = ServeConfig(models=tuple(sources_from_repository(repository, [name], VersionPolicy())),
                         grpc_port=0, rest_port=0, metrics_port=None, poll_seconds=0, drain_grace_seconds=0)
    running = build_server(config)
    try:
        label = int(labels[0]) if labels is not None else "?"
        print(f"serving {name} on grpc 127.0.0.1:{running.grpc_port} and rest 127.0.0.1:{running.rest_port} "
              f"(onnx backend); one held-out image (label {label}) through each protocol:")
        for protocol in PROTOCOLS:
            port = running.rest_port if protocol in REST_PROTOCOLS else running.grpc_port
            client = connect(protocol, f"127.0.0.1:{port}", name, manifest.version, manifest.signature)
            try:
                started = time.perf_counter()
                outputs = client.infer(row)
                elapsed = (time.perf_counter() - started) * 1000
            finally:
                client.close()
            scores = next(iter(outputs.values()))[0]
            print(f"  {protocol:<15} predicted {int(np.argmax(scores))} (p={float(np.max(scores)):.3f}) "
                  f"in {elapsed:.1f} ms")
        if load_seconds > 0:
            print(f"\nload test: {load_seconds:.0f} s per gRPC protocol, 10 users, batch 1, validation images")
            load_test(f"127.0.0.1:{running.grpc_port}", name, repository, report_dir, load_seconds)
    finally:
        running.stop()
    print("server stopped")


def load_test(address: str, name: str, repository: Path, report_dir: Path, seconds: float) -> None:
    """Locust against both gRPC protocols of the running server; one table and one plot side by side."""
    from kdeploy.loadtest.config import LoadTestConfig, WorkloadSettings, parse_target
    from kdeploy.loadtest.runner import run_compare

    configs = [
        LoadTestConfig(target=parse_target(f"{protocol}://{address}"),
                       workload=WorkloadSettings(model=name, protocol=protocol, repository=repository),
                       out_dir=report_dir, users=10, duration_s=seconds)
        for protocol in ("tfserving-grpc", "kserve-grpc")
    ]
    run_compare(configs, report_dir)
    print(f"load-test reports  {report_dir}/<protocol>/summary.json, latency.png, locust.html; "
          f"side by side: {report_dir}/comparison.md and comparison.png")
