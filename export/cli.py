"""`kdeploy export` and `kdeploy verify` arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.contract.manifest import FORMATS, TFLITE_QUANTIZATIONS
from kdeploy.wire.protocols import PROTOCOLS


def parse_per_format(values: list[str] | None, flag: str) -> dict[str, float]:
    """`--atol onnx=1e-4 --atol 1e-3` as {format: value}; a bare number applies to every format.

    Names are formats, or protocols for served parity (`--atol tfserving-rest=1e-4`).
    """
    names = FORMATS + PROTOCOLS
    result: dict[str, float] = {}
    for value in values or []:
        fmt, _, number = value.rpartition("=")
        targets = [fmt] if fmt else list(names)
        if fmt and fmt not in names:
            raise UsageError(f"{flag} {value!r}: unknown format {fmt!r}; choose from {', '.join(names)}")
        try:
            parsed = float(number)
        except ValueError:
            raise UsageError(f"{flag} {value!r}: expected a number or FORMAT=NUMBER") from None
        if parsed < 0:
            raise UsageError(f"{flag} {value!r}: tolerance must not be negative")
        result.update({t: parsed for t in targets})
    return result


def _add_verify_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verify")
    group.add_argument("--data", type=Path, help="labelled inputs (.npz), or a payload log (file or folder) that "
                                                 "`kdeploy serve --payload-log-file` wrote: its requests are replayed "
                                                 "and its answers compared too; default: the version's "
                                                 "validation.npz, else inputs generated from the signature")
    group.add_argument("--samples", type=int, default=256, help="rows to compare (default 256)")
    group.add_argument("--max-batch", type=int, default=32, help="largest batch; 1 and max/2 are used too (default 32)")
    group.add_argument("--report", type=Path, help="report directory (default: the version directory)")
    group.add_argument("--atol", action="append", metavar="[FORMAT=]X", help="absolute tolerance override (repeatable)")
    group.add_argument("--rtol", action="append", metavar="[FORMAT=]X", help="relative tolerance override (repeatable)")


def _verify_config(args: argparse.Namespace):  # noqa: ANN202 - VerifyConfig, imported lazily
    from kdeploy.export.verify import VerifyConfig

    return VerifyConfig(data=args.data, samples=args.samples, max_batch=args.max_batch, report_dir=args.report,
                        atol=parse_per_format(args.atol, "--atol"), rtol=parse_per_format(args.rtol, "--rtol"))


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="export a Keras model or a SavedModel to SavedModel, TFLite and ONNX in a model repository",
        description="Export MODEL (a .keras or .h5 file, or a SavedModel folder) into REPO/NAME/VERSION/ with a "
                    "manifest, then verify parity with it.")
    parser.add_argument("model", type=Path, help="a .keras or .h5 file, or a SavedModel folder")
    parser.add_argument("--repository", required=True, type=Path, help="model repository root")
    parser.add_argument("--name", required=True, help="model name (folder in the repository)")
    parser.add_argument("--version", type=int, help="version number (default: next)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated (default {','.join(FORMATS)})")
    parser.add_argument("--tflite-quantization", default="none", choices=TFLITE_QUANTIZATIONS)
    parser.add_argument("--representative-data", type=Path, help="int8 calibration inputs (.npz)")
    parser.add_argument("--onnx-opset", type=int, default=17)
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument("--allow-partial", action="store_true", help="exit 0 even if some formats fail to convert")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check")
    parser.add_argument("--unsafe", action="store_true", help="allow Lambda layers (Keras unsafe deserialisation)")
    parser.add_argument("--signature", metavar="NAME",
                        help="the SavedModel signature to export (default serving_default; SavedModel folders only)")
    _add_verify_options(parser)
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from kdeploy.export.exporter import ExportConfig, export_model
    from kdeploy.export.parity_report import to_console

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    config = ExportConfig(
        model_path=args.model, repository=args.repository, name=args.name, version=args.version, formats=formats,
        tflite_quantization=args.tflite_quantization, representative_data=args.representative_data,
        onnx_opset=args.onnx_opset, force=args.force, allow_partial=args.allow_partial, verify=not args.no_verify,
        verify_config=_verify_config(args), unsafe=args.unsafe, signature=args.signature,
    )
    result = export_model(config, progress=print, cancel=getattr(args, "interrupted", None))
    if result.parity is not None:
        print(to_console(result.parity))
    for fmt, reason in result.failed_formats.items():
        print(f"kdeploy export: {fmt} could not be converted: {reason}")
    if not result.published:
        print(f"kdeploy export: parity failed, version NOT published; kept for inspection in {result.version_dir}")
        for failure in result.parity.failures if result.parity else []:
            print(f"  {failure}")
        return 1
    print(f"kdeploy export: wrote {result.version_dir}")
    if result.failed_formats and not args.allow_partial:
        return 1
    return 0


def add_verify_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("verify", help="check that every exported format predicts what the source model "
                                                "predicts",
                                 description="Run the source model (Keras, or the SavedModel it was exported from) "
                                             "and every format of a version on the same inputs and compare them "
                                             "within per-format tolerances.")
    parser.add_argument("model_dir", type=Path, metavar="REPO/NAME", help="model folder (or a version folder)")
    parser.add_argument("--version", type=int, help="version (default: latest)")
    parser.add_argument("--endpoint", metavar="HOST:PORT",
                        help="compare what a running server (kdeploy, TF Serving, Triton) returns instead of the files")
    parser.add_argument("--protocol", default="tfserving-grpc", choices=PROTOCOLS,
                        help="protocol of --endpoint (default tfserving-grpc; REST needs the REST port)")
    _add_verify_options(parser)
    parser.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from kdeploy.contract.repository import resolve_version_dir
    from kdeploy.export.parity_report import to_console
    from kdeploy.export.verify import verify_version

    config = _verify_config(args)
    version_dir = resolve_version_dir(args.model_dir, args.version)
    candidates = None
    if args.endpoint:
        from dataclasses import replace

        from kdeploy.contract.manifest import MANIFEST_FILE, read_manifest
        from kdeploy.wire.clients import connect

        if not (version_dir / MANIFEST_FILE).exists():
            raise UsageError(f"{version_dir} has no manifest.json: --endpoint compares a server with the version's "
                             "source model, which only an exported version keeps; verify it without --endpoint")
        manifest = read_manifest(version_dir)
        client = connect(args.protocol, args.endpoint, manifest.name, manifest.version, manifest.signature)
        candidates = {args.protocol: client}
        if config.report_dir is None:
            # Keep the files' own parity report; served parity goes beside it.
            config = replace(config, report_dir=version_dir / f"served-{args.protocol}")
    report = verify_version(version_dir, config, progress=print, candidates=candidates)
    print(to_console(report))
    print(f"kdeploy verify: report in {config.report_dir or version_dir}")
    if not report.passed:
        for failure in report.failures:
            print(f"kdeploy verify: FAIL {failure}")
        return 1
    return 0
