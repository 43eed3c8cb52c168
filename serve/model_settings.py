"""Per-model runtime settings: threads, spinning, inline or thread execution and batching, for one model.

Three layers, each overriding the one before for the keys it sets:

1. the server-wide flags (`kdeploy serve --intra-op-threads ... --enable-batching`), through `ServeConfig`;
2. the model folder's own `kdeploy.toml` (`REPO/NAME/kdeploy.toml`, beside the versions; `kdeploy tune` writes it);
3. the model's entry in a kdeploy server config (`--model-config-file models.toml`).

They are read when a version loads, so a changed `kdeploy.toml` takes effect with the next version that loads (a
new version folder, or a restart); versions already serving keep theirs. The file format (TOML):

    [runtime]
    intra_op_threads = 2        # 0: the runtime decides
    spin_wait = "auto"          # "auto", true, false or "run" (spin only while a run is in flight)
    execution = "auto"          # "auto", "inline" or "thread"

    [batching]                  # present: batching on for this model (unless enabled = false)
    enabled = true
    max_batch_size = 32
    batch_timeout_micros = 1000
    max_enqueued_batches = 100
    num_batch_threads = 2
    allowed_batch_sizes = [1, 2, 4, 8, 16, 32]
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.serve.config import EXECUTION_MODES, SPIN_WAIT_MODES, BatchingParameters

SETTINGS_FILE = "kdeploy.toml"
"""A model folder's own runtime settings, beside its version folders."""
RUNTIME_KEYS = ("intra_op_threads", "spin_wait", "execution")
BATCHING_KEYS = ("enabled", "max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                 "allowed_batch_sizes")


@dataclass(frozen=True)
class RuntimeSettings:
    """The settings one version loads with (after every layer is applied)."""

    intra_op_threads: int = 0
    """Threads per inference inside the runtime; 0 lets the runtime decide."""
    spin_wait: str = "auto"
    """onnxruntime's idle intra-op threads: `on` spin, `run` spin while a run is in flight, `off` sleep, `auto`
    chosen at load from the warm-up timing (see `kdeploy.serve.auto_settings`)."""
    execution: str = "auto"
    """Where a request runs: `inline` on the event loop, `thread` on the server's threads, `auto` chosen at load."""
    batching: BatchingParameters | None = None
    """Dynamic batching parameters, or None for no batching."""

    def describe(self) -> str:
        batching = "off" if self.batching is None else (f"max {self.batching.max_batch_size} rows, "
                                                         f"{self.batching.batch_timeout_micros} µs")
        return (f"intra_op_threads={self.intra_op_threads or 'runtime'} spin_wait={self.spin_wait} "
                f"execution={self.execution} batching={batching}")


@dataclass(frozen=True)
class ModelSettings:
    """One layer of per-model settings: only the keys it sets (None: the layer below decides)."""

    intra_op_threads: int | None = None
    spin_wait: str | None = None
    execution: str | None = None
    batching_enabled: bool | None = None
    batching: dict[str, Any] = field(default_factory=dict)
    """BatchingParameters fields this layer sets."""
    source: str = ""
    """Where the layer came from (a file, or a file and a model), for messages."""

    def apply(self, base: RuntimeSettings) -> RuntimeSettings:
        """`base` with this layer's keys applied.

        Raises:
            UsageError: naming the source when the batching parameters that result are not valid.
        """
        changes: dict[str, Any] = {key: getattr(self, key) for key in RUNTIME_KEYS if getattr(self, key) is not None}
        enabled = self.batching_enabled if self.batching_enabled is not None else (
            True if self.batching else base.batching is not None)
        if not enabled:
            changes["batching"] = None
        elif self.batching or base.batching is None:
            changes["batching"] = merge_batching(base.batching or BatchingParameters(), self.batching,
                                                 f"{self.source} [batching]")
        return dataclasses.replace(base, **changes)

    def to_toml(self) -> str:
        """The layer as a `kdeploy.toml` text (what `kdeploy tune` writes)."""
        lines = ["[runtime]"]
        for key in RUNTIME_KEYS:
            value = getattr(self, key)
            if value is not None:
                lines.append(f"{key} = {_toml_value(key, value)}")
        if self.batching_enabled is not None or self.batching:
            lines += ["", "[batching]"]
            if self.batching_enabled is not None:
                lines.append(f"enabled = {'true' if self.batching_enabled else 'false'}")
            lines += [f"{key} = {_toml_value(key, value)}" for key, value in self.batching.items()]
        return "\n".join(lines) + "\n"


def _toml_value(key: str, value: Any) -> str:
    if key == "spin_wait":
        return {"on": "true", "off": "false"}.get(value, f'"{value}"')
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def read_settings_file(path: Path) -> ModelSettings:
    """A model folder's `kdeploy.toml`.

    Raises:
        UsageError: one line naming the file (and the key) when it cannot be read or a setting is not valid.
    """
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"settings file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"runtime", "batching"})
    if unknown:
        raise UsageError(f"{path}: unknown table or key {unknown[0]!r}; expected [runtime] and [batching]")
    return settings_from_tables(document.get("runtime", {}), document.get("batching"), str(path))


def settings_from_tables(runtime: Any, batching: Any, source: str) -> ModelSettings:
    """A settings layer from its `[runtime]` and `[batching]` tables (already parsed).

    Raises:
        UsageError: naming `source` and the key for anything not valid.
    """
    if not isinstance(runtime, dict):
        raise UsageError(f"{source}: runtime must be a table of settings")
    if batching is not None and not isinstance(batching, dict):
        raise UsageError(f"{source}: batching must be a table of settings")
    for key in runtime:
        if key not in RUNTIME_KEYS:
            raise UsageError(f"{source}: unknown key runtime.{key}; expected one of {', '.join(RUNTIME_KEYS)}")
    for key in batching or {}:
        if key not in BATCHING_KEYS:
            raise UsageError(f"{source}: unknown key batching.{key}; expected one of {', '.join(BATCHING_KEYS)}")
    threads = runtime.get("intra_op_threads")
    if threads is not None and (not _is_int(threads) or threads < 0):
        raise UsageError(f"{source}: runtime.intra_op_threads must be an integer >= 0, got {threads!r}")
    spin = runtime.get("spin_wait")
    if spin is not None:
        if isinstance(spin, bool):
            spin = "on" if spin else "off"
        if spin not in SPIN_WAIT_MODES:
            raise UsageError(f"{source}: runtime.spin_wait must be true, false, \"run\" or \"auto\", got {spin!r}")
    execution = runtime.get("execution")
    if execution is not None and execution not in EXECUTION_MODES:
        raise UsageError(f"{source}: runtime.execution must be one of {', '.join(EXECUTION_MODES)}, got {execution!r}")
    params: dict[str, Any] = {}
    enabled = None
    for key, value in (batching or {}).items():
        if key == "enabled":
            if not isinstance(value, bool):
                raise UsageError(f"{source}: batching.enabled must be true or false, got {value!r}")
            enabled = value
        elif key == "allowed_batch_sizes":
            if not isinstance(value, list) or not all(_is_int(v) for v in value):
                raise UsageError(f"{source}: batching.allowed_batch_sizes must be a list of integers, got {value!r}")
            params[key] = tuple(value)
        elif not _is_int(value):
            raise UsageError(f"{source}: batching.{key} must be an integer, got {value!r}")
        else:
            params[key] = value
    if batching is not None and enabled is None:
        enabled = True  # a [batching] table turns batching on for the model
    settings = ModelSettings(intra_op_threads=threads, spin_wait=spin, execution=execution,
                             batching_enabled=enabled, batching=params, source=source)
    if params:  # bad values are reported when the file is read, not only when a version loads
        merge_batching(BatchingParameters(), params, f"{source} [batching]")
    return settings


def merge_batching(base: BatchingParameters, params: dict[str, Any], source: str) -> BatchingParameters:
    """`base` with `params` applied. Allowed sizes given alone set the maximum to their last; a maximum given alone
    drops inherited allowed sizes that end elsewhere.

    Raises:
        UsageError: naming `source` when the result is not valid.
    """
    params = dict(params)
    sizes = params.get("allowed_batch_sizes")
    if sizes and "max_batch_size" not in params:
        params["max_batch_size"] = sizes[-1]
    if "max_batch_size" in params and sizes is None and base.allowed_batch_sizes[-1:] != (params["max_batch_size"],):
        params["allowed_batch_sizes"] = ()
    merged = dataclasses.replace(base, **params)
    merged.check(source)
    return merged


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_folder_settings(base_path: Path) -> ModelSettings | None:
    """The model folder's `kdeploy.toml`, or None when it has none.

    Raises:
        UsageError: as `read_settings_file`.
    """
    path = Path(base_path) / SETTINGS_FILE
    return read_settings_file(path) if path.is_file() else None
