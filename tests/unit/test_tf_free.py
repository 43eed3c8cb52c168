"""The contract modules and the onnxruntime backend must load without TensorFlow (the server image has none)."""

import subprocess
import sys


def test_signature_manifest_and_onnxruntime_backend_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import kdeploy.contract.signature, kdeploy.contract.manifest, "
        "kdeploy.contract.repository, kdeploy.runtimes.onnxruntime_backend\n"
        "import kdeploy.export.parity, kdeploy.runtimes.base\n"
        "import kdeploy.serve.server, kdeploy.serve.cli, kdeploy.serve.sources\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules)\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_help_is_fast_to_load():
    proc = subprocess.run([sys.executable, "-c", "import sys; from kdeploy.cli import build_parser; build_parser();"
                           "sys.exit('tensorflow' in sys.modules)"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
