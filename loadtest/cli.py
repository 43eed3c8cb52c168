"""`kdeploy loadtest` and `kdeploy loadtest compare` arguments.

Importing this module is cheap: Locust, gRPC, NumPy and Matplotlib are imported only when a command runs
(`kdeploy --help` builds every stage's parser).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.loadtest.config import (
    PROTOCOLS,
    SHAPES,
    LoadTestConfig,
    Target,
    WorkloadSettings,
    parse_duration,
    parse_rate,
    parse_target,
)

logger = logging.getLogger(__name__)


def add_loadtest_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "loadtest", help="load-test a model server with Locust (TF Serving gRPC/REST, KServe v2 gRPC)",
        description="Run Locust headless against a model server and report exact latency percentiles, throughput "
                    "and errors (summary.json, latency.png, Locust's CSV and HTML). Exit status 1 when --slo is "
                    "missed, 2 for bad arguments or an unreachable target.")
    _add_run_arguments(parser, compare=False)
    parser.set_defaults(run=run_loadtest_command)
    subcommands = parser.add_subparsers(dest="loadtest_command", metavar="{compare}")
    compare = subcommands.add_parser(
        "compare", help="the same load against several targets; one table and one plot",
        description="Run the same load against each --target in turn (e.g. kdeploy's server and TF Serving, or "
                    "two protocols) and write one table (comparison.md) and one plot (comparison.png) side by side.")
    _add_run_arguments(compare, compare=True)
    compare.set_defaults(run=run_compare_command)


def _add_run_arguments(parser: argparse.ArgumentParser, compare: bool) -> None:
    # Nothing is `required=True`: the compare subcommand's flags come after its name, where the parent
    # parser's required flags would not see them. The run functions check instead.
    if compare:
        parser.add_argument("--target", action="append", default=[], metavar="[LABEL=][PROTOCOL://]HOST:PORT",
                            help="a server to load (repeat for each; PROTOCOL:// overrides --protocol for it)")
    else:
        parser.add_argument("--target", metavar="[PROTOCOL://]HOST:PORT", help="the server, e.g. 127.0.0.1:8500")
    parser.add_argument("--model", help="model name on the server")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="wire protocol (default tfserving-grpc)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--repository", type=Path,
                        help="model repository with the model's manifest (REPO, REPO/NAME or REPO/NAME/VERSION)")
    source.add_argument("--signature-from-server", action="store_true",
                        help="ask the server for the signature (GetModelMetadata / ModelMetadata) instead")
    parser.add_argument("--model-version", type=int, help="model version (default: the server's latest)")
    parser.add_argument("--data", type=Path,
                        help=".npz of input rows, or a payload log (file or folder) whose logged requests are "
                             "replayed (default: the version's validation.npz)")
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--users", type=int, help="concurrent users (default 10; with --rate, enough for the rate)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second (default: all within 1 s)")
    parser.add_argument("--duration", default="30s", help="run time, e.g. 30s, 2m (default 30s; at most 24h)")
    parser.add_argument("--rate", help="open loop: total requests per second, e.g. 500/s (default: closed loop)")
    parser.add_argument("--shape", choices=SHAPES, default="constant",
                        help="constant users, step (capacity search) or ramp (default constant)")
    parser.add_argument("--step-users", type=int, help="users added per step with --shape step (default users/5)")
    parser.add_argument("--slo", help="objectives that must hold, e.g. 'p99<50ms,errors<0.1%%,rps>200' (exit 1 if not)")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="stop after this many requests (default 1000000)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust processes; above 1 runs a Locust master and workers (default 1)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a target that is not this machine")
    parser.add_argument("--out", type=Path, help="output folder for the reports")


def config_from_args(args: argparse.Namespace, target: Target, out_dir: Path) -> LoadTestConfig:
    """A run's typed config from the parsed flags (raises UsageError for values argparse cannot check)."""
    if not args.model:
        raise UsageError("--model NAME is required")
    protocol = target.protocol or args.protocol or "tfserving-grpc"
    workload = WorkloadSettings(
        model=args.model, protocol=protocol, model_version=args.model_version, repository=args.repository,
        signature_from_server=args.signature_from_server, data=args.data, batch=args.batch,
        rate=parse_rate(args.rate) if args.rate else None, request_timeout_s=args.request_timeout,
        max_requests=args.max_requests, shape=args.shape, step_users=args.step_users,
    )
    return LoadTestConfig(target=target, workload=workload, out_dir=out_dir, users=args.users,
                          spawn_rate=args.spawn_rate, duration_s=parse_duration(args.duration), slo=args.slo,
                          processes=args.processes, allow_remote=args.allow_remote)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is None:
        raise UsageError("--out DIR is required (where the reports go)")
    return args.out


def run_loadtest_command(args: argparse.Namespace) -> int:
    from kdeploy.loadtest.runner import run_loadtest

    if not args.target:
        raise UsageError("--target HOST:PORT is required")
    result = run_loadtest(config_from_args(args, parse_target(args.target), _out_dir(args)))
    return 1 if result.slo_held is False else 0


def run_compare_command(args: argparse.Namespace) -> int:
    from kdeploy.loadtest.runner import run_compare

    if len(args.target) < 2:
        raise UsageError("compare needs at least two --target")
    out_dir = _out_dir(args)
    configs = [config_from_args(args, parse_target(t), out_dir) for t in args.target]
    results = run_compare(configs, out_dir)
    return 1 if any(r.slo_held is False for r in results) else 0
