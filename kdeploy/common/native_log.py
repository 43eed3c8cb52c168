"""Quiet TensorFlow's start-up lines without hiding real errors.

TensorFlow's C++ code logs through absl before absl's logging is initialised, and such lines ignore
`TF_CPP_MIN_LOG_LEVEL`: every command that imports TensorFlow printed `oneDNN custom operations are on` and
`Could not find cuda drivers` before its own output. `import_tensorflow_quietly()` imports TensorFlow once with the
process's standard error (file descriptor 2, which C++ writes to) sent to a temporary file, then writes back every
line that is not known start-up chatter: an error during the import still reaches the user.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|Created TensorFlow Lite XNNPACK delegate for CPU"
)
"""Lines TensorFlow prints at import on a machine without a GPU, and LiteRT for each interpreter; nothing else is
dropped."""


@contextmanager
def native_stderr_filtered(noise: re.Pattern[str] = STARTUP_NOISE) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block, then replay what does not match `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (and Keras, which loads it) with its start-up chatter dropped; a no-op once imported.

    Called where kdeploy first needs TensorFlow, so commands that fail on their arguments never pay for the import.
    TensorFlow's Python warnings (its `tensorflow` logger) are kept to errors. With `TF_CPP_MIN_LOG_LEVEL=0`
    (`kdeploy -v`) nothing is dropped.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0":
        # TensorFlow's Python warnings (deprecations of the TF1 APIs a TF1 SavedModel needs, "Unable to create a
        # python object for variable ... reference variable") go through its logger: errors only, unless -v.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return
    # Imported by name, as `load_backend` imports runtimes: this module is on the TensorFlow-free server's path too,
    # and only calls that need TensorFlow load it. Keras (TensorFlow backend) initialises TensorFlow as it loads.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        importlib.import_module("keras")
        return
    with native_stderr_filtered():
        importlib.import_module("keras")
