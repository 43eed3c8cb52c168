"""`kdeploy demo`: the main job end to end on the embedded default (the digits model)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="train the digits model, export it to every format and verify parity")
    parser.add_argument("--out", type=Path, default=Path("build/demo"), help="work directory (default build/demo)")
    parser.add_argument("--name", default="digits", help="model name in the repository (default digits)")
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from export.exporter import ExportConfig, export_model
    from export.parity_report import to_console
    from train.trainer import TrainConfig, train

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
    return 0 if result.ok else 1
