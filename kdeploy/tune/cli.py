"""`kdeploy tune` arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdeploy.common.errors import UsageError

LOAD_GENERATORS = ("auto", "perf_analyzer", "locust")


def add_tune_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tune", help="measure runtime settings for one model and write the best into its kdeploy.toml",
        description="Serve REPO/NAME with each candidate setting (intra-op threads, spinning, inline or thread "
                    "execution, batching, workers), load it at a few concurrency levels, and write the best for the "
                    "objective (and SLO) into REPO/NAME/kdeploy.toml, with a report (tune.md, tune.json, tune.png). "
                    "Exit status 1 when no candidate held the SLO.")
    parser.add_argument("model_dir", type=Path, metavar="REPO/NAME", help="the model folder to tune")
    parser.add_argument("--slo", help="objective that must hold at a level for it to count, e.g. 'p99<20ms'")
    parser.add_argument("--objective", choices=("throughput", "latency"), default="throughput",
                        help="throughput: most inferences/s where the SLO holds (default); latency: lowest c1 p50")
    parser.add_argument("--budget", default="5m", help="time for the whole search, e.g. 90s, 5m (default 5m)")
    parser.add_argument("--concurrency", default="1,4,16,32",
                        help="closed-loop concurrency levels per candidate (default 1,4,16,32)")
    parser.add_argument("--level-seconds", type=float, default=3.0, help="seconds of load per level (default 3)")
    parser.add_argument("--load-generator", choices=LOAD_GENERATORS, default="auto",
                        help="perf_analyzer (Triton's, C++; `make perf-analyzer`), locust (kdeploy loadtest's), or "
                             "auto: perf_analyzer when found, else locust")
    parser.add_argument("--perf-analyzer", type=Path, help="the perf_analyzer binary (default: build/perf-venv's "
                                                           "or one on PATH)")
    parser.add_argument("--candidates", help="only these candidates (comma-separated labels; defaults always run)")
    parser.add_argument("--out", type=Path, help="report folder (default build/tune/NAME)")
    parser.add_argument("--no-write", action="store_true",
                        help="write only the report, not REPO/NAME/kdeploy.toml")
    parser.set_defaults(run=run_tune_command)


def run_tune_command(args: argparse.Namespace) -> int:
    from kdeploy.loadtest.config import parse_duration
    from kdeploy.tune.measure import Locust, PerfAnalyzer, find_perf_analyzer
    from kdeploy.tune.runner import TuneConfig, run_tune

    try:
        levels = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--concurrency {args.concurrency!r}: expected numbers like 1,8,32") from None
    model_dir = args.model_dir
    config = TuneConfig(model_dir=model_dir, out_dir=args.out or Path("build") / "tune" / model_dir.name,
                        slo=args.slo, objective=args.objective, budget_s=parse_duration(args.budget),
                        concurrency=levels, level_seconds=args.level_seconds, write=not args.no_write,
                        candidates=tuple(c.strip() for c in (args.candidates or "").split(",") if c.strip()))
    config.check()
    binary = find_perf_analyzer(args.perf_analyzer)
    if args.load_generator == "perf_analyzer" and binary is None:
        raise UsageError("perf_analyzer not found: run `make perf-analyzer`, pass --perf-analyzer PATH, or use "
                         "--load-generator locust")
    if binary is not None and args.load_generator != "locust":
        load: PerfAnalyzer | Locust = PerfAnalyzer(binary)
    else:
        load = Locust(config.out_dir / "locust")
    print(f"kdeploy tune: {config.model} with {load.name}, objective {config.objective}"
          + (f", SLO {config.slo}" if config.slo else "") + f", budget {config.budget_s:.0f} s", flush=True)
    result = run_tune(config, load, echo=lambda line: print(line, flush=True))
    document = result.document
    if result.best is None:
        print("kdeploy tune: no candidate held the SLO at any level; nothing written. Report: "
              f"{config.out_dir / 'tune.md'}")
        return 1
    gain = document["gain_over_defaults"]
    print(f"kdeploy tune: best {document['best']} ({result.best.candidate.describe()})"
          + (f", {gain:.2f} x the defaults" if gain else ""))
    for path in result.written:
        print(f"  wrote {path}")
    return 0
