"""`kdeploy serve` with per-model settings: bad files are one-line errors (exit 2), good ones are logged as applied."""

from __future__ import annotations

import subprocess
import sys

from tests.bare_models import write_linear_onnx
from tests.conftest import start_server


def serve(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdeploy", "serve", "--grpc-port", "0", "--no-rest", "--no-metrics",
                           *map(str, args)], capture_output=True, text=True, timeout=60)


def test_a_bad_kdeploy_toml_is_exit_2_naming_the_file_and_key(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    write_linear_onnx(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "kdeploy.toml").write_text("[runtime]\nspin_wait = \"fast\"\n")
    proc = serve("--repository", tmp_path)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "m" / "kdeploy.toml") in last and "runtime.spin_wait" in last
    assert "Traceback" not in proc.stderr


def test_a_bad_server_config_is_exit_2_naming_the_file_and_key(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text('[[model]]\nname = "m"\nbase_path = "m"\n[model.batching]\nmax_batch = 4\n')
    proc = serve("--model-config-file", config)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"kdeploy serve: error: {config}: model 'm': unknown key batching.max_batch; expected one of enabled, "
        "max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads, allowed_batch_sizes")


def test_the_settings_a_model_serves_with_are_logged(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    write_linear_onnx(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "kdeploy.toml").write_text("[runtime]\nintra_op_threads = 1\nexecution = \"thread\"\n"
                                                 "[batching]\nmax_batch_size = 8\n")
    proc = start_server("--repository", tmp_path, "--no-rest", "--log-format", "text")
    try:
        assert "SERVING" in proc.banner
    finally:
        assert proc.stop() == 0
    assert "intra_op_threads=1 spin_wait=off execution=thread batching=max 8 rows" in proc.log()
