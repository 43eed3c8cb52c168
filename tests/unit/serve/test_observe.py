"""When tracing is on, how a request's trace context and route are read, and that tracing off loads no SDK."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdeploy.serve.observe import http_route, parse_traceparent, tracing_wanted

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(("environ", "wanted"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no endpoint: nowhere to send
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "false"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_tracing_is_on_only_when_an_otlp_endpoint_is_set_and_the_sdk_not_disabled(environ, wanted):
    assert tracing_wanted(environ) is wanted


@pytest.mark.parametrize(("value", "ids"), [
    (f"00-{TRACE}-{SPAN}-01", (TRACE, SPAN)),
    (f"00-{TRACE.upper()}-{SPAN}-00", (TRACE, SPAN)),  # not sampled: still the request's trace for the logs
    (f"00-{'0' * 32}-{SPAN}-01", ("", "")),  # the all-zero trace id is invalid
    (f"00-{TRACE}-{'0' * 16}-01", ("", "")),
    ("garbage", ("", "")),
    (None, ("", "")),
])
def test_traceparent_is_read_as_w3c_defines_it(value, ids):
    assert parse_traceparent(value) == ids


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/v1/models/digits:predict", ("tfserving-rest", "POST /v1/models/{model}:predict", "digits", "")),
    ("POST", "/v1/models/digits/versions/3:classify?x=1",
     ("tfserving-rest", "POST /v1/models/{model}/versions/{version}:classify", "digits", "3")),
    ("GET", "/v1/models/digits/metadata", ("tfserving-rest", "GET /v1/models/{model}/metadata", "digits", "")),
    ("POST", "/v2/models/digits/versions/2/infer",
     ("kserve-rest", "POST /v2/models/{model}/versions/{version}/infer", "digits", "2")),
    ("GET", "/v2/health/ready", ("http", "GET", "", "")),  # no model in the route: the method alone names the span
])
def test_http_routes_name_spans_without_the_model_name(method, path, expected):
    assert http_route(method, path) == expected


def test_a_server_without_otlp_settings_never_imports_opentelemetry(tmp_path):
    code = (
        "import os, sys\n"
        "from kdeploy.serve.config import ServeConfig\n"
        "from kdeploy.serve.metrics import ServerMetrics\n"
        "from kdeploy.serve.observe import build_observers\n"
        "import kdeploy.serve.server\n"
        f"config = ServeConfig(models=(), access_log={str(tmp_path / 'access.jsonl')!r})\n"
        "observers = build_observers(config, ServerMetrics(), {'OTEL_SERVICE_NAME': 'x'})\n"
        "assert observers is not None and observers.tracing is None and observers.access_log is not None\n"
        "observers.close()\n"
        "assert build_observers(ServeConfig(models=()), ServerMetrics(), {}) is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_otlp_protocol_other_than_grpc_is_refused_in_one_line():
    from kdeploy.common.errors import UsageError
    from kdeploy.serve.tracing import Tracing

    with pytest.raises(UsageError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf.*grpc"):
        Tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
