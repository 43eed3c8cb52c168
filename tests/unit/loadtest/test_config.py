import subprocess
import sys
from pathlib import Path

import pytest

from kdeploy.common.errors import UsageError
from kdeploy.loadtest.config import (
    LoadTestConfig,
    Target,
    WorkloadSettings,
    default_open_loop_users,
    is_loopback,
    parse_duration,
    parse_rate,
    parse_target,
)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8500", Target("127.0.0.1", 8500)),
    ("localhost:1/", Target("localhost", 1)),
    ("kserve-grpc://127.0.0.1:8500", Target("127.0.0.1", 8500, "kserve-grpc")),
    ("http://127.0.0.1:8501", Target("127.0.0.1", 8501, "tfserving-rest")),
    ("tfs=tfserving-grpc://[::1]:8500", Target("::1", 8500, "tfserving-grpc", "tfs")),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected


def test_target_address_and_name():
    assert parse_target("[::1]:8500").address == "[::1]:8500"
    assert parse_target("127.0.0.1:8500").name("kserve-grpc") == "kserve-grpc://127.0.0.1:8500"
    assert parse_target("a=127.0.0.1:8500").name("kserve-grpc") == "a"


@pytest.mark.parametrize("text", ["127.0.0.1", "ftp://127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:70000", ":8500"])
def test_parse_target_refuses(text):
    with pytest.raises(UsageError):
        parse_target(text)


def test_loopback_never_resolves_names():
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com") and not is_loopback("0.0.0.0")


@pytest.mark.parametrize("text, seconds", [("30", 30), ("30s", 30), ("1m30s", 90), ("2h", 7200), ("1.5s", 1.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "0.5s", "25h", "10 minutes", "s", "1x"])
def test_parse_duration_refuses(text):
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize("text, rate", [("500/s", 500), ("500", 500), ("6000/min", 100), ("2.5 / s", 2.5)])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/s", "-1", "fast", "5/h"])
def test_parse_rate_refuses(text):
    with pytest.raises(UsageError):
        parse_rate(text)


def test_open_loop_users_cover_100_ms_of_latency():
    assert default_open_loop_users(500) == 50
    assert default_open_loop_users(5) == 10 and default_open_loop_users(1e6) == 1000


@pytest.mark.parametrize("kwargs, words", [
    ({}, "--repository REPO"),
    ({"repository": Path("r"), "signature_from_server": True}, "not both"),
    ({"repository": Path("r"), "batch": 0}, "--batch"),
    ({"repository": Path("r"), "protocol": "http"}, "unknown protocol"),
    ({"repository": Path("r"), "rate": 10.0, "shape": "step"}, "--rate"),
    ({"repository": Path("r"), "step_users": 0}, "--step-users"),
])
def test_workload_settings_refuse_bad_combinations(kwargs, words):
    with pytest.raises(UsageError, match=words):
        WorkloadSettings(model="digits", **kwargs)


def test_remote_targets_need_allow_remote(tmp_path):
    workload = WorkloadSettings(model="m", signature_from_server=True)
    with pytest.raises(UsageError, match="--allow-remote"):
        LoadTestConfig(Target("10.0.0.1", 8500), workload, tmp_path)
    assert LoadTestConfig(Target("10.0.0.1", 8500), workload, tmp_path, allow_remote=True).user_count == 10
    open_loop = LoadTestConfig(Target("127.0.0.1", 1), WorkloadSettings(model="m", signature_from_server=True,
                                                                       rate=500.0), tmp_path)
    assert open_loop.user_count == 50 and open_loop.spawn_per_second == 50


def test_settings_survive_locusts_own_argument_parser():
    """to_locust_args -> Locust's parser (with the locustfile's arguments) -> from_options gives the same settings.

    Runs in a child process: importing Locust monkey-patches the interpreter with gevent.
    """
    code = (
        "from pathlib import Path\n"
        "from locust.argument_parser import get_parser\n"
        "from kdeploy.loadtest.config import WorkloadSettings, add_locust_arguments\n"
        "s = WorkloadSettings(model='digits', protocol='kserve-grpc', model_version=3, repository=Path('/r'),\n"
        "                     data=Path('/d.npz'), batch=8, rate=250.0, request_timeout_s=2.5, max_requests=99,\n"
        "                     latency_file=Path('/l.npz'), step_users=None, seed=7)\n"
        "parser = get_parser()\n"
        "add_locust_arguments(parser)\n"
        "options = parser.parse_args(['-f', 'x.py', *s.to_locust_args()])\n"
        "back = WorkloadSettings.from_options(options)\n"
        "print(back == s, back)\n"
        "server = WorkloadSettings(model='m', signature_from_server=True, shape='step', step_users=2)\n"
        "print(WorkloadSettings.from_options(parser.parse_args(['-f', 'x.py', *server.to_locust_args()])) == server)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "True" and proc.stdout.split()[-1] == "True", proc.stdout


def test_tls_settings_survive_locusts_parser_beside_its_own_tls_flags():
    """Locust has --tls-cert/--tls-key of its own (its web UI): the client's travel under other names."""
    code = (
        "from pathlib import Path\n"
        "from locust.argument_parser import get_parser\n"
        "from kdeploy.loadtest.config import WorkloadSettings, add_locust_arguments\n"
        "from kdeploy.wire.tls import ClientTls\n"
        "parser = get_parser()\n"
        "add_locust_arguments(parser)\n"
        "full = ClientTls(Path('/ca.crt'), Path('/c.crt'), Path('/c.key'), 'kdeploy-server')\n"
        "for tls in (full, ClientTls(), None):\n"
        "    s = WorkloadSettings(model='m', signature_from_server=True, tls=tls)\n"
        "    options = parser.parse_args(['-f', 'x.py', *s.to_locust_args()])\n"
        "    print(WorkloadSettings.from_options(options) == s, bool(options.tls_cert))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"] * 3, proc.stdout
