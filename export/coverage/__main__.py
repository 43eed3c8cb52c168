"""`python -m kdeploy.export.coverage`: the layer-by-format coverage sweep (what `make coverage` runs)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kdeploy.common.versions import library_versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdeploy.export.coverage", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where coverage.md and coverage.json go")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per model (default 240)")
    parser.add_argument("--only", action="append", help="run only these rows (repeatable; substring match)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other rows of an existing OUT/coverage.json (with --only)")
    parser.add_argument("--no-applications", action="store_true", help="leave out keras.applications")
    args = parser.parse_args(argv)

    from kdeploy.export.coverage.report import write_coverage
    from kdeploy.export.coverage.sweep import CaseResult, run_sweep
    from kdeploy.export.coverage.zoo import NOT_COVERED, all_cases

    cases = [c for c in all_cases() if not (args.no_applications and c.slow)]
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    if not cases:
        print("no case matches --only", file=sys.stderr)
        return 2
    # The slow ones first, so the two workers finish together.
    cases.sort(key=lambda c: not c.slow)
    started = time.perf_counter()
    print(f"coverage: {len(cases)} models, {args.jobs} workers, {args.timeout:.0f} s limit each", flush=True)
    results = run_sweep([c.name for c in cases], {c.name: c.group for c in cases}, jobs=args.jobs,
                        timeout=args.timeout, progress=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    if args.update and (args.out / "coverage.json").is_file():
        previous = json.loads((args.out / "coverage.json").read_text())
        ran = {r.name for r in results}
        results += [CaseResult(row["name"], row["group"], row["cells"], row["seconds"])
                    for row in previous["rows"] if row["name"] not in ran]
        seconds = float(previous.get("seconds", 0.0))
    order = {c.name: i for i, c in enumerate(all_cases())}
    results.sort(key=lambda r: order.get(r.name, 0))
    meta = {"jobs": args.jobs, "timeout": args.timeout, "seconds": round(seconds, 1), "samples": 32,
            "versions": library_versions(("tensorflow", "keras", "tf2onnx", "onnxruntime", "ai-edge-litert"))}
    summary = write_coverage(results, args.out, meta, NOT_COVERED)
    print(f"coverage: {seconds:.0f} s; fp32 cells passing {summary['fp32_passed']}/{summary['fp32_cells']} "
          f"({summary['fp32_pass_rate']:.1%}); written {args.out / 'coverage.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
