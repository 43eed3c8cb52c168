"""A/B comparison of servers on a noisy machine: every server runs at once, perf_analyzer alternates between them.

`make bench-serve` measures one server after another, so a machine whose speed drifts over minutes (a shared VM)
moves whole rows. Here all the variants are up together and each round measures each of them once per
concurrency, in short runs, reversing the order every round; the medians over rounds compare variants that saw
the same machine. Use it to decide whether a change helps, then record the result with `make bench-serve`.

Variants:
- `null`, `plain`: the reference servers of `reference_servers.py` (environment after a colon: `plain:PLAIN_SPIN=1`).
- `kdeploy`: this checkout's server; flags after a colon, `;`-separated (`kdeploy:--enable-batching`); an item
  `NAME=VALUE` with an upper-case NAME is an environment variable instead, where `{otlp}` becomes the endpoint of
  an OTLP receiver started here (benchmarks/otlp_sink.py) and `{tmp}` a scratch folder
  (`kdeploy:OTEL_EXPORTER_OTLP_ENDPOINT={otlp};--payload-log-rate=1;--payload-log-file={tmp}/p.jsonl`).
- `kdeploy-mtls`: this checkout's server with mutual TLS (certificates made for the run), loaded over TLS (KServe only:
  perf_analyzer's TF Serving client has no TLS).
- `NAME=PATH`: the server of another checkout of this repository (a `git worktree` of the commit to compare),
  `NAME=PATH:FLAGS` with flags.

Run: `python benchmarks/ab_serve.py MODEL ROUNDS VARIANT... [--concurrency 1,32,1t,32t,32h,32j]` ("t": TF Serving's
Predict instead of KServe gRPC; "h": KServe v2 over HTTP with binary tensors, "j": with JSON tensors, on kdeploy's
REST port) after `make bench-serve` made `build/bench-serve/repo`. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from serving import OUT, PERF, ROOT, free_port, perf_env, tls_files, wait_ready  # benchmarks/serving.py, beside it

from kdeploy.contract.manifest import read_manifest

# Points the editable install's packages at another checkout (the install itself points at this one).
_SITECUSTOMIZE = """import sys
for _name, _module in list(sys.modules.items()):
    if _name.startswith("__editable___kdeploy") and hasattr(_module, "MAPPING"):
        for _key, _path in list(_module.MAPPING.items()):
            _module.MAPPING[_key] = _path.replace({here!r}, {there!r})
"""


def server_command(variant: str, model: str, version_dir: Path, port: int, scratch: Path, otlp: str = "",
                   tls_server: list[str] | None = None, rest_port: int = 0) -> tuple[list[str], dict[str, str], str]:
    """The command, extra environment and readiness marker of one variant (REST on `rest_port`, if not 0)."""
    head, _, options = variant.partition(":")
    if head in ("null", "plain"):
        env = dict(item.split("=", 1) for item in options.split(";") if item)
        return ([sys.executable, str(ROOT / "benchmarks" / "reference_servers.py"), head, str(version_dir), str(port)],
                env, "ready")
    env: dict[str, str] = {}
    items = [item.replace("{tmp}", str(scratch)).replace("{otlp}", otlp) for item in options.split(";") if item]
    env_items = [item for item in items if re.match(r"^[A-Z][A-Z0-9_]*=", item)]
    env.update(item.split("=", 1) for item in env_items)
    options = ";".join(item for item in items if item not in env_items)
    if head == "kdeploy-mtls":
        options = ";".join([*(tls_server or []), options])
    elif "=" in head:
        name, tree = head.split("=", 1)
        site = scratch / name
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(here=str(ROOT), there=str(Path(tree).resolve())))
        env["PYTHONPATH"] = str(site)
    flags = [f for f in options.split(";") if f]
    return ([sys.executable, "-m", "kdeploy", "serve", "--repository", str(OUT / "repo"), "--model", model,
             "--grpc-port", str(port), *(["--rest-port", str(rest_port)] if rest_port else ["--no-rest"]),
             "--metrics-port", "0", "--poll-seconds", "0", *flags],
            env, "kdeploy serve:")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def perf(model: str, ports: tuple[int, int], concurrency: str, shapes: str, windows: int = 3, stability: int = 1000,
         ssl: list[str] | None = None, pid: int | None = None) -> tuple[float, float, float] | None:
    """Inferences per second, p50 µs and the server's CPU µs per inference of one short perf_analyzer run (None if
    it failed or never settled); `ports`: gRPC, REST.

    CPU per inference (the server's CPU time over the run / the inferences it answered, estimated as the measured
    rate times the run's wall time) hardly moves when other work slows the machine, where latency and rate do.
    """
    kind = concurrency[-1] if concurrency[-1] in "thj" else ""
    level = concurrency.rstrip("thj")
    http = kind in ("h", "j")
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        command = [str(PERF), "-m", model, "-u", f"127.0.0.1:{ports[1] if http else ports[0]}",
                   "-i", "http" if http else "grpc",
                   "--concurrency-range", f"{level}:{level}", "-p", "1500", "-r", str(windows), "-s", str(stability),
                   "-f", out.name]
        command += ["--service-kind=tfserving", "--shape", shapes] if kind == "t" else ["-x", "1"]
        if kind == "j":
            command += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
        command += ssl or []
        cpu_before, started = (cpu_seconds(pid) if pid else 0.0), time.monotonic()
        subprocess.run(command, capture_output=True, text=True, env=perf_env(), timeout=300, check=False)
        wall, cpu = time.monotonic() - started, (cpu_seconds(pid) - cpu_before if pid else 0.0)
        with open(out.name) as written:
            row = next(csv.DictReader(written), None)
    if row is None:
        return None
    rate = float(row["Inferences/Second"])
    return rate, float(row["p50 latency"]), cpu / (rate * wall) * 1e6 if rate else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("rounds", type=int)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--windows", type=int, default=3,
                        help="perf_analyzer's measurement windows per run (more windows steady a variant whose "
                             "throughput swings, as with logging threads on a busy machine)")
    parser.add_argument("--stability", type=int, default=1000,
                        help="perf_analyzer's -s: how far (percent) the last windows may differ (default 1000: the "
                             "check off, since on a busy machine runs never settle; the alternated rounds and their "
                             "medians stand in for it)")
    args = parser.parse_args()
    version_dir = sorted((OUT / "repo" / args.model).iterdir())[-1]
    signature = read_manifest(version_dir).signature
    shapes = " ".join(f"{s.name}:1,{','.join(str(d) for d in s.shape[1:])}" for s in signature.inputs)
    levels = args.concurrency.split(",")
    servers: dict[str, tuple[subprocess.Popen, tuple[int, int]]] = {}
    results: dict[str, dict[str, list[tuple[float, float, float] | None]]] = {v: {c: [] for c in levels}
                                                                              for v in args.variants}
    sink, endpoint = None, ""
    if any("{otlp}" in variant for variant in args.variants):
        from otlp_sink import start

        endpoint, sink, _ = start()
    with tempfile.TemporaryDirectory() as scratch:
        tls_server, tls_client, _ = tls_files(Path(scratch) / "pki")
        try:
            for variant in args.variants:
                port, rest_port = free_port(), free_port()
                command, env, marker = server_command(variant, args.model, version_dir, port, Path(scratch),
                                                      endpoint, tls_server, rest_port)
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           env={**os.environ, **env})
                wait_ready(process, marker)
                threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe from filling
                servers[variant] = (process, (port, rest_port))
            for round_number in range(args.rounds):
                order = args.variants if round_number % 2 == 0 else args.variants[::-1]
                for level in levels:
                    for variant in order:
                        process, ports = servers[variant]
                        ssl = tls_client if variant.startswith("kdeploy-mtls") else None
                        results[variant][level].append(perf(args.model, ports, level, shapes, args.windows,
                                                            args.stability, ssl, process.pid))
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for process, _ports in servers.values():
                process.kill()
            if sink is not None:
                sink.stop(0)
    print(f"| variant ({args.model}, medians of {args.rounds} rounds) | "
          + " | ".join(f"c{c} inf/s | c{c} p50 µs | c{c} server CPU µs/inf" for c in levels) + " |")
    print("|---|" + "---|---|---|" * len(levels))
    for variant in args.variants:
        cells = []
        for level in levels:
            runs = [r for r in results[variant][level] if r is not None]
            # A run perf_analyzer could not settle (a busy machine) has no numbers: left out, and counted.
            missing = f" ({len(results[variant][level]) - len(runs)} unsettled)" if len(runs) < args.rounds else ""
            if not runs:
                cells += ["-" + missing, "-", "-"]
                continue
            cells += [f"{statistics.median(r[0] for r in runs):.0f}{missing}",
                      f"{statistics.median(r[1] for r in runs):.0f}", f"{statistics.median(r[2] for r in runs):.0f}"]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
