"""Which install extra each command needs, and a one-line error naming it when it is missing (standard library only).

kdeploy installs by role (`pip install 'kdeploy[serve]'`, `[loadtest]`, `[export]`, `[all]`): the base package has
the command line and the manifest contract, and each role's libraries come with its extra. Before a command runs,
`require_extra` looks for the modules its extra brings (without importing them) and refuses with the `pip install`
line that fixes it, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import importlib.util

from kdeploy.common.errors import UsageError

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "serve": ("onnxruntime", "grpc", "grpc_health", "grpc_reflection", "aiohttp", "prometheus_client", "obstore"),
    "loadtest": ("locust", "matplotlib", "grpc"),
    "export": ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "sklearn", "matplotlib", "grpc", "obstore"),
    "tracing": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc"),
}
"""The modules each extra installs that its commands import (a module several extras bring counts for each)."""

COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("export",),
    "export": ("export",),
    "verify": ("export",),
    "serve": ("serve",),
    "configs": ("serve",),
    "loadtest": ("loadtest",),
    "demo": ("export", "serve", "loadtest"),
}
"""The extras a command needs; commands not listed (`k8s`) run on the base install."""

BACKEND_EXTRAS: dict[str, tuple[str, ...]] = {"savedmodel": ("export",)}
"""`kdeploy serve --backend savedmodel` runs TensorFlow, which comes with the export extra."""

BACKEND_MODULES: dict[str, str] = {"tflite": "ai_edge_litert"}


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [m for m in EXTRA_MODULES[extra] if _find(m) is None]


def require_extra(command: str, backend: str | None = None) -> None:
    """Refuse a command whose extra is not installed.

    Raises:
        UsageError: naming the extra and how to install it.
    """
    extras = COMMAND_EXTRAS.get(command, ()) + (BACKEND_EXTRAS.get(backend or "", ()))
    for extra in extras:
        missing = missing_modules(extra)
        if missing:
            raise UsageError(f"needs the {extra} extra: pip install 'kdeploy[{extra}]' "
                             f"({', '.join(missing)} not installed)")
    module = BACKEND_MODULES.get(backend or "")
    if module is not None and importlib.util.find_spec(module) is None:
        raise UsageError(f"--backend {backend} needs {module}, which the serve extra brings: "
                         "pip install 'kdeploy[serve]'")


def require_tracing_extra() -> None:
    """Refuse to start tracing (an OTLP endpoint is set) without the OpenTelemetry SDK the tracing extra brings.

    Raises:
        UsageError: naming the extra and how to install it.
    """
    missing = missing_modules("tracing")
    if missing:
        raise UsageError("an OTLP endpoint is set (OTEL_EXPORTER_OTLP_*ENDPOINT), and traces need the tracing extra: "
                         f"pip install 'kdeploy[tracing]' ({', '.join(missing)} not installed)")


def _find(module: str) -> object | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return None
