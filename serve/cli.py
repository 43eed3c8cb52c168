"""`kdeploy serve` arguments."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from kdeploy.common.errors import UsageError
from kdeploy.runtimes.base import GRAPH_OPTIMIZATIONS
from kdeploy.serve.config import (
    BACKENDS,
    EXECUTION_MODES,
    SPIN_WAIT_MODES,
    BatchingParameters,
    ServeConfig,
    VersionPolicy,
    parse_grpc_channel_arguments,
)
from kdeploy.serve.configs import ConfigsConfig
from kdeploy.serve.tls import CertificateReloader
from kdeploy.wire.tensors import TENSOR_ENCODINGS

logger = logging.getLogger(__name__)

DEFAULTS = ServeConfig(models=())
"""Every flag's default comes from `ServeConfig`, the one place it is written."""
CONFIGS_DEFAULTS = ConfigsConfig(repository=Path(), out_dir=Path())


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="serve a model repository over TF Serving's gRPC/REST API and KServe v2 gRPC/REST",
        description="Serve the models of a repository written by `kdeploy export`, speaking TF Serving's gRPC and "
                    "REST APIs and the KServe v2 (Open Inference) protocol: gRPC on the gRPC port, HTTP on the "
                    "REST port.")
    # Either source may come from the environment (KDEPLOY_REPOSITORY / KDEPLOY_MODEL_CONFIG_FILE).
    env_source = any(os.environ.get(f"{ENV_PREFIX}{n}") for n in ("REPOSITORY", "MODEL_CONFIG_FILE", "MODEL_DIR"))
    source = parser.add_mutually_exclusive_group(required=not env_source)
    source.add_argument("--repository",
                        help="model repository (REPO/NAME/VERSION): a folder, or s3://BUCKET/PREFIX, "
                             "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX (synced into --cache-dir)")
    source.add_argument("--model-config-file", type=Path,
                        help="TF Serving ModelServerConfig text file (models.config), or a kdeploy server config "
                             "(*.toml) that also sets each model's runtime settings; base paths may be URLs")
    source.add_argument("--model-dir", type=Path,
                        help="one model from a folder as KServe's storage initializer leaves it (/mnt/models): a "
                             "version folder, a model folder of versions, or a repository")
    parser.add_argument("--model-name", metavar="NAME",
                        help="with --model-dir: the name to serve the model under (default: the folder's name)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="serve only this model (repeatable; default: every model in the repository)")
    parser.add_argument("--backend", default=DEFAULTS.backend, choices=BACKENDS,
                        help=f"runtime (default {DEFAULTS.backend})")
    parser.add_argument("--host", default=DEFAULTS.host,
                        help=f"address to bind (default {DEFAULTS.host}; 0.0.0.0 for all)")
    parser.add_argument("--grpc-port", type=int, default=DEFAULTS.grpc_port,
                        help=f"gRPC port (default {DEFAULTS.grpc_port}; 0 picks a free one)")
    parser.add_argument("--rest-port", type=int, default=DEFAULTS.rest_port,
                        help=f"REST port: TF Serving's /v1 and KServe v2's /v2 (default {DEFAULTS.rest_port}; 0 picks "
                             "a free one)")
    parser.add_argument("--no-rest", action="store_true", help="do not serve REST")
    parser.add_argument("--version-policy", default=VersionPolicy().describe(),
                        help=f"latest[:N], all or specific:V[,V] (default {VersionPolicy().describe()})")
    parser.add_argument("--max-message-mb", type=int, default=DEFAULTS.max_message_mb,
                        help=f"largest request/response in MiB (default {DEFAULTS.max_message_mb})")
    parser.add_argument("--intra-op-threads", type=int, default=DEFAULTS.intra_op_threads,
                        help="threads per inference (default: the runtime's choice)")
    parser.add_argument("--spin-wait", nargs="?", const="on", default=DEFAULTS.spin_wait, choices=SPIN_WAIT_MODES,
                        help="onnxruntime's idle threads: on (spin, onnxruntime's default; bare --spin-wait), run "
                             "(spin only while a run is in flight), off (sleep), or auto (default: chosen per model "
                             "at load; see the tuning page)")
    parser.add_argument("--execution", default=DEFAULTS.execution, choices=EXECUTION_MODES,
                        help="where requests run: inline on the event loop, thread (the --grpc-threads), or auto "
                             f"(default {DEFAULTS.execution}: chosen per model at load)")
    parser.add_argument("--providers", default=",".join(DEFAULTS.providers),
                        help="onnxruntime execution providers, comma-separated, in order of preference")
    parser.add_argument("--graph-optimization", default=DEFAULTS.graph_optimization, choices=GRAPH_OPTIMIZATIONS,
                        help=f"onnxruntime graph optimisation level (default {DEFAULTS.graph_optimization})")
    parser.add_argument("--grpc-threads", type=int, default=DEFAULTS.grpc_threads,
                        help=f"threads running models too slow to run inline (default {DEFAULTS.grpc_threads})")
    parser.add_argument("--inline-max-micros", type=int, default=DEFAULTS.inline_max_micros,
                        help="with --execution/--spin-wait auto, models whose one-row run takes at most this long "
                             "(measured at load) are tiny: inline on the event loop, threads asleep "
                             f"(default {DEFAULTS.inline_max_micros})")
    parser.add_argument("--predict-tensor-encoding", default=DEFAULTS.predict_tensor_encoding,
                        choices=TENSOR_ENCODINGS,
                        help="TF Serving Predict answers: typed fields (float_val..., TF Serving's default) or "
                             f"tensor_content bytes (default {DEFAULTS.predict_tensor_encoding})")
    parser.add_argument("--tflite-interpreters", type=int, default=DEFAULTS.tflite_interpreters,
                        help=f"TFLite interpreters per version (default {DEFAULTS.tflite_interpreters})")
    parser.add_argument("--enable-batching", action="store_true",
                        help="merge concurrent requests into batches (as TF Serving's --enable_batching)")
    parser.add_argument("--batching-parameters-file", type=Path,
                        help="TF Serving BatchingParameters text file (as `kdeploy configs` writes); a model folder's "
                             "own batching_parameters.txt overrides it")
    parser.add_argument("--metrics-port", type=int, default=DEFAULTS.metrics_port,
                        help=f"Prometheus GET /metrics port (default {DEFAULTS.metrics_port}; 0 picks a free one)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULTS.poll_seconds,
                        help="check the repository for new versions this often "
                             f"(default {DEFAULTS.poll_seconds:g}; 0: never)")
    parser.add_argument("--storage-poll-seconds", type=float, default=DEFAULTS.storage_poll_seconds,
                        help="list object-store model folders this often, jittered, backed off after errors "
                             f"(default {DEFAULTS.storage_poll_seconds:g}; 0: only at start-up)")
    parser.add_argument("--storage-settle-seconds", type=float, default=DEFAULTS.storage_settle_seconds,
                        help="serve an object-store version without manifest.json once it has not changed for this "
                             f"long (default {DEFAULTS.storage_settle_seconds:g})")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULTS.cache_dir,
                        help="local cache of object-store versions (default $XDG_CACHE_HOME/kdeploy or "
                             "~/.cache/kdeploy)")
    parser.add_argument("--drain-seconds", type=float, default=DEFAULTS.drain_seconds,
                        help="on SIGTERM, finish in-flight requests and exit within this time "
                             f"(default {DEFAULTS.drain_seconds:g})")
    parser.add_argument("--drain-grace-seconds", type=float, default=DEFAULTS.drain_grace_seconds,
                        help="on SIGTERM, keep accepting requests this long after health turns NOT_SERVING "
                             f"(default {DEFAULTS.drain_grace_seconds:g})")
    parser.add_argument("--model-config-file-poll-seconds", type=float,
                        default=DEFAULTS.model_config_file_poll_seconds,
                        help="re-read --model-config-file this often and apply a changed config (TF Serving's "
                             "--model_config_file_poll_wait_seconds; default 0: never)")
    parser.add_argument("--allow-config-reload", action="store_true", default=DEFAULTS.allow_config_reload,
                        help="accept ModelService/HandleReloadConfigRequest (TF Serving's RPC that replaces the "
                             "model config; off by default: it makes the server load any path it names)")
    parser.add_argument("--monitoring-config-file", type=Path,
                        help="TF Serving MonitoringConfig text file: Prometheus metrics also on the REST port at "
                             "its prometheus_config.path")
    parser.add_argument("--grpc-socket-path", default=DEFAULTS.grpc_socket_path,
                        help="also serve gRPC on this Unix domain socket (TF Serving's --grpc_socket_path)")
    parser.add_argument("--grpc-channel-arguments", default="",
                        help="further gRPC server arguments NAME=VALUE,... (TF Serving's --grpc_channel_arguments)")
    parser.add_argument("--wait-for-models", action="store_true",
                        help="with polling on, keep running (health NOT_SERVING) while no model can be served, as "
                             "TF Serving does; without it, nothing to serve is an error (exit 2) naming the reasons")
    parser.add_argument("--workers", type=parse_workers, default=DEFAULTS.workers, metavar="N|auto",
                        help="server processes sharing the ports with SO_REUSEPORT, each loading the models; auto: "
                             f"one per CPU this process may use (the production setting; default {DEFAULTS.workers})")
    logs = parser.add_argument_group("payload and access logs (tracing is set by the OTEL_* variables)")
    logs.add_argument("--payload-log-rate", type=float, default=DEFAULTS.payload_log_rate, metavar="SHARE",
                      help="log this share (0-1) of answered requests with their answers (default 0: off)")
    logs.add_argument("--payload-log-file", type=Path, default=DEFAULTS.payload_log_file, metavar="PATH",
                      help="payload log as JSON lines (one CloudEvent per line), rotated by size; with --workers, "
                           "each worker writes PATH with .worker-N before its suffix")
    logs.add_argument("--payload-log-url", default=DEFAULTS.payload_log_url, metavar="URL",
                      help="also POST each event to URL as KServe's logger does (binary-mode CloudEvents)")
    logs.add_argument("--payload-log-max-mb", type=int, default=DEFAULTS.payload_log_max_mb,
                      help="rotate the payload log file at this size in MiB "
                           f"(default {DEFAULTS.payload_log_max_mb}; 0: never)")
    logs.add_argument("--payload-log-backups", type=int, default=DEFAULTS.payload_log_backups,
                      help=f"rotated payload log files kept (default {DEFAULTS.payload_log_backups})")
    logs.add_argument("--access-log", default=DEFAULTS.access_log, metavar="FILE|-",
                      help="one JSON line per request to FILE, or - for standard output (default: off)")
    logs.add_argument("--log-queue-size", type=int, default=DEFAULTS.log_queue_size,
                      help="records each log queues for its writer thread before dropping them (counted in "
                           f"kdeploy_log_records_dropped_total; default {DEFAULTS.log_queue_size})")
    tls = parser.add_argument_group("TLS", "TLS on every port (gRPC, REST, metrics); files renewed in place (as "
                                           "cert-manager does) are picked up without a restart")
    tls.add_argument("--tls-cert", type=Path, default=DEFAULTS.tls_cert, metavar="FILE",
                     help="PEM certificate chain of the server (with --tls-key)")
    tls.add_argument("--tls-key", type=Path, default=DEFAULTS.tls_key, metavar="FILE",
                     help="PEM private key of --tls-cert (unencrypted)")
    tls.add_argument("--tls-client-ca", type=Path, default=DEFAULTS.tls_client_ca, metavar="FILE",
                     help="mutual TLS: PEM CA certificates every client's certificate must chain to")
    tls.add_argument("--ssl-config-file", type=Path, default=DEFAULTS.ssl_config_file, metavar="FILE",
                     help="TF Serving's SSLConfig text file (server_key, server_cert, custom_ca, client_verify) "
                          "instead of the --tls-* files; applied to every port, not only gRPC")
    tls.add_argument("--health-port", type=int, default=DEFAULTS.health_port,
                     help="also answer grpc.health.v1, and nothing else, in plaintext on this port (for kubelet's "
                          "gRPC probe, which does not speak TLS; 0 picks a free one; default off)")
    parser.add_argument("--log-format", default="auto", choices=("auto", "json", "text"),
                        help="log lines as text or JSON (default: JSON when standard error is not a terminal)")
    apply_env_defaults(parser)
    parser.set_defaults(run=run_serve)


ENV_PREFIX = "KDEPLOY_"


def parse_workers(text: str) -> int:
    """`--workers N` or `auto`: one worker per CPU the process may run on (its affinity, as a container's cpuset)."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {text!r}") from None


def env_var(flag: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable a flag defaults to: `--grpc-port` -> `KDEPLOY_GRPC_PORT`."""
    return prefix + flag.lstrip("-").replace("-", "_").upper()


def apply_env_defaults(parser: argparse.ArgumentParser) -> None:
    """Let every `--some-flag` default to the environment variable `KDEPLOY_SOME_FLAG` (container settings).

    Command-line flags still win. Boolean flags take 1/true/yes; repeatable ones a comma-separated list.
    """
    parser.set_defaults(env_prefix=ENV_PREFIX)  # how the reference pages (tools/docs.py) learn of the variables
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public list of actions
        long_names = [o for o in action.option_strings if o.startswith("--")]
        if not long_names or action.dest == "help":
            continue
        value = os.environ.get(env_var(long_names[0]))
        if value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            action.default = value.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):  # noqa: SLF001
            action.default = [v.strip() for v in value.split(",") if v.strip()]
        else:
            action.default = value  # argparse converts string defaults with the action's type and choices


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    from kdeploy.serve.batching import read_batching_parameters
    from kdeploy.serve.sources import sources_from_model_config, sources_from_repository
    from kdeploy.storage.urls import parse_location

    if args.model_name is not None and args.model_dir is None:
        raise UsageError("--model-name goes with --model-dir")
    if args.model_config_file is not None:
        models = sources_from_model_config(args.model_config_file, args.cache_dir)
    elif args.model_dir is not None:
        from kdeploy.serve.model_dir import sources_from_model_dir

        models = sources_from_model_dir(args.model_dir, args.model_name, VersionPolicy.parse(args.version_policy))
    else:
        models = sources_from_repository(parse_location(args.repository), args.model,
                                         VersionPolicy.parse(args.version_policy), args.cache_dir)
    batching = None
    if args.enable_batching:
        batching = (read_batching_parameters(args.batching_parameters_file) if args.batching_parameters_file
                    else BatchingParameters())
    elif args.batching_parameters_file:
        raise UsageError("--batching-parameters-file needs --enable-batching")
    return ServeConfig(
        models=tuple(models), backend=args.backend, host=args.host, grpc_port=args.grpc_port,
        batching=batching, metrics_port=None if args.no_metrics else args.metrics_port,
        poll_seconds=args.poll_seconds, drain_seconds=args.drain_seconds,
        drain_grace_seconds=args.drain_grace_seconds, workers=args.workers, wait_for_models=args.wait_for_models,
        rest_port=None if args.no_rest else args.rest_port, max_message_mb=args.max_message_mb,
        intra_op_threads=args.intra_op_threads, spin_wait=_spin_wait(args.spin_wait), execution=args.execution,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
        graph_optimization=args.graph_optimization, grpc_threads=args.grpc_threads,
        inline_max_micros=args.inline_max_micros, predict_tensor_encoding=args.predict_tensor_encoding,
        tflite_interpreters=args.tflite_interpreters, model_config_file=args.model_config_file,
        model_config_file_poll_seconds=args.model_config_file_poll_seconds,
        allow_config_reload=args.allow_config_reload, grpc_socket_path=args.grpc_socket_path or None,
        grpc_channel_arguments=parse_grpc_channel_arguments(args.grpc_channel_arguments),
        rest_metrics_path=(read_monitoring_path(args.monitoring_config_file)
                           if args.monitoring_config_file is not None else None),
        payload_log_rate=args.payload_log_rate, payload_log_file=args.payload_log_file,
        payload_log_url=args.payload_log_url, payload_log_max_mb=args.payload_log_max_mb,
        payload_log_backups=args.payload_log_backups, access_log=args.access_log,
        log_queue_size=args.log_queue_size,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, ssl_config_file=args.ssl_config_file, health_port=args.health_port,
        storage_poll_seconds=args.storage_poll_seconds, storage_settle_seconds=args.storage_settle_seconds,
        cache_dir=args.cache_dir,
    )


def _spin_wait(value: str) -> str:
    """`--spin-wait` as a mode; KDEPLOY_SPIN_WAIT=1/0 (from when it was a switch) still means on/off."""
    text = str(value).strip().lower()
    return {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(text, text)


def read_monitoring_path(path: Path) -> str | None:
    """The Prometheus path of a TF Serving MonitoringConfig text file (None when it does not enable Prometheus).

    Raises:
        UsageError: when the file is missing or not a MonitoringConfig.
    """
    from google.protobuf import text_format

    from kdeploy.serve.configs import PROMETHEUS_PATH
    from kdeploy.wire.protos.messages import load_protos

    protos = load_protos()
    config = protos.cls("tensorflow.serving.MonitoringConfig")()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config, descriptor_pool=protos.pool)
    except OSError as exc:
        raise UsageError(f"cannot read --monitoring-config-file {path}: {exc.strerror or exc}") from None
    except text_format.ParseError as exc:
        raise UsageError(f"{path} is not a valid TF Serving MonitoringConfig: {exc}") from None
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or PROMETHEUS_PATH


def run_serve(args: argparse.Namespace) -> int:
    from kdeploy.common.logs import configure_logging
    from kdeploy.serve.server import build_server, exit_process

    level = logging.DEBUG if args.verbose else logging.INFO
    configure_logging(level, args.log_format)
    config = config_from_args(args)
    config.check()
    if config.workers > 1:
        return run_workers(config, level, args.log_format)
    running = build_server(config)
    problems = running.models.problems()
    if len(problems) == len(config.models) and not (config.wait_for_models and config.poll_seconds > 0):
        running.stop(release_ports=False, grace_seconds=0.0)
        reasons = "; ".join(f"model {name}: {reason}" for name, reason in problems.items())
        raise UsageError(f"nothing to serve ({reasons}); pass --wait-for-models to keep polling until a version "
                         "appears")
    # Every version the server knows (a model with no version folder at all shows only under unservable=).
    versions = ",".join(f"{s.name}:{s.version}({s.state.name})" for name in running.models.model_names
                        for s in running.models.statuses(name) if s.version > 0)
    rest = f"{config.host}:{running.rest_port}" if running.rest_port is not None else "off"
    metrics = f"{config.host}:{running.metrics_port}" if running.metrics_port is not None else "off"
    unservable = f" unservable={','.join(sorted(problems))}" if problems else ""
    try:  # a SIGTERM right after the start-up line (a client that read it) drains too
        print(f"kdeploy serve: {'SERVING' if running.models.is_ready() else 'NOT_SERVING'} "
              f"grpc={config.host}:{running.grpc_port} rest={rest} metrics={metrics} backend={config.backend} "
              f"models={versions}{unservable}{_security_banner(config.host, running.tls, running.health_port)}",
              flush=True)
        while not running.stopping.wait(3600):
            pass
    except KeyboardInterrupt:
        logger.info("SIGTERM or SIGINT: draining for up to %.0f s", config.drain_seconds)
    # A second signal during the drain must not cut it short (Kubernetes sends SIGKILL when it is out of patience).
    signal.signal(signal.SIGTERM, _already_draining)
    signal.signal(signal.SIGINT, _already_draining)
    running.stop(release_ports=False)  # the process exits next
    print("kdeploy serve: stopped", file=sys.stderr, flush=True)
    exit_process(0)


def run_workers(config: ServeConfig, level: int, log_format: str) -> int:
    """`--workers N`: start N server processes on the same ports, report, and drain them all on SIGTERM."""
    from kdeploy.serve.workers import WorkerPool

    pool = WorkerPool(config, level, log_format)
    pool.start()
    rest = f"{config.host}:{pool.config.rest_port}" if pool.config.rest_port is not None else "off"
    metrics = f"{config.host}:{pool.metrics_port}" if pool.metrics_port is not None else "off"
    models = ",".join(m.name for m in config.models)
    print(f"kdeploy serve: {'SERVING' if pool.all_ready else 'NOT_SERVING'} grpc={config.host}:{pool.config.grpc_port} "
          f"rest={rest} metrics={metrics} backend={config.backend} workers={config.workers} models={models}"
          f"{_security_banner(config.host, pool.tls, pool.config.health_port)}", flush=True)
    died = None
    try:
        died = pool.wait()
        logger.error("a worker exited with status %s; stopping the others", died)
    except KeyboardInterrupt:
        logger.info("SIGTERM or SIGINT: draining %d workers for up to %.0f s", config.workers, config.drain_seconds)
    signal.signal(signal.SIGTERM, _already_draining)
    signal.signal(signal.SIGINT, _already_draining)
    code = pool.stop()
    print("kdeploy serve: stopped", file=sys.stderr, flush=True)
    return 1 if died is not None else code


def _security_banner(host: str, tls: CertificateReloader | None, health_port: int | None) -> str:
    """` tls=on|mutual` and ` health=HOST:PORT` for the start-up line (nothing when off)."""
    text = "" if tls is None else f" tls={'mutual' if tls.mutual else 'on'}"
    return text + (f" health={host}:{health_port}" if health_port is not None else "")


def _already_draining(signum: int, frame: object) -> None:
    logger.warning("%s while draining: still draining", signal.Signals(signum).name)


def add_configs_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "configs", help="write TF Serving and Triton configuration for a model repository",
        description="Write models.config, batching_parameters.txt and monitoring.config for TF Serving, and "
                    "config.pbtxt per model for Triton, from the repository's manifests.")
    parser.add_argument("--repository", required=True,
                        help="model repository: a folder, or s3://, gs://, az:// (manifests are read in place)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (tfserving/ and triton/ inside)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME", help="only this model (repeatable)")
    parser.add_argument("--base-path", default=CONFIGS_DEFAULTS.base_path,
                        help="repository mount point in the TF Serving container")
    parser.add_argument("--version-policy", default=VersionPolicy().describe(),
                        help="latest[:N], all or specific:V[,V]")
    parser.add_argument("--max-batch-size", type=int, default=CONFIGS_DEFAULTS.max_batch_size)
    parser.add_argument("--batch-timeout-micros", type=int, default=CONFIGS_DEFAULTS.batch_timeout_micros)
    parser.add_argument("--allowed-batch-sizes", default=",".join(map(str, CONFIGS_DEFAULTS.allowed_batch_sizes)),
                        help="comma-separated, ascending")
    parser.add_argument("--triton-into-repository", action="store_true",
                        help="also write REPO/NAME/config.pbtxt, where Triton reads it (uploaded, for an object store)")
    parser.add_argument("--cache-dir", type=Path,
                        help="where versions without a manifest are downloaded from an object store (default "
                             "$XDG_CACHE_HOME/kdeploy or ~/.cache/kdeploy)")
    parser.set_defaults(run=run_configs)


def run_configs(args: argparse.Namespace) -> int:
    from kdeploy.serve.configs import ConfigsConfig, write_configs

    try:
        allowed = tuple(int(v) for v in args.allowed_batch_sizes.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--allowed-batch-sizes {args.allowed_batch_sizes!r}: "
                         "expected comma-separated integers") from None
    from kdeploy.storage.urls import parse_location

    config = ConfigsConfig(
        repository=parse_location(args.repository), cache_dir=args.cache_dir, out_dir=args.out,
        models=tuple(args.model), base_path=args.base_path,
        policy=VersionPolicy.parse(args.version_policy), max_batch_size=args.max_batch_size,
        batch_timeout_micros=args.batch_timeout_micros, allowed_batch_sizes=allowed,
        triton_into_repository=args.triton_into_repository,
    )
    for path in write_configs(config):
        print(f"kdeploy configs: wrote {path}")
    return 0
