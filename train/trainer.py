"""`kdeploy train`: fit a recipe's model and write model.keras, metrics.json and validation.npz."""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.common.errors import UsageError
from kdeploy.common.files import atomic_path, write_json_atomic
from kdeploy.common.native_log import import_tensorflow_quietly
from kdeploy.common.versions import library_versions
from kdeploy.train.recipes import Dataset, Recipe, RecipeRegistry, default_registry

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
VALIDATION_FILE = "validation.npz"


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    recipe: str
    out_dir: Path
    epochs: int | None = None
    """Default: the recipe's."""
    batch_size: int | None = None
    """Default: the recipe's."""
    seed: int = 42
    val_split: float = 0.2
    """Share of rows held out for validation (stratified)."""
    data: Path | None = None
    """Train the recipe's architecture on this .npz (arrays x and y) instead of its bundled data."""

    def check(self) -> None:
        """Raises: UsageError naming the first bad value."""
        if not 0.0 < self.val_split < 1.0:
            raise UsageError(f"--val-split must be between 0 and 1, got {self.val_split}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UsageError(f"--out {self.out_dir} is a file, not a directory")


@dataclass
class TrainResult:
    """Where the run wrote its files and how well the model did."""

    model_path: Path
    metrics_path: Path
    validation_path: Path
    metrics: dict[str, Any]


def load_user_data(path: Path, recipe: Recipe) -> Dataset:
    """A user's `.npz` with arrays `x` and `y`, put into the recipe's input layout.

    Raises:
        UsageError: when the file is missing, unreadable or lacks `x` or `y`.
    """
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise UsageError(f"{path} has arrays {sorted(arrays.files)}; expected 'x' and 'y'")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}") from None
    if len(x) != len(y):
        raise UsageError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    return Dataset(x=recipe.prepare(x), y=np.asarray(y).astype(np.int64), description=f"user data {path}")


def split(dataset: Dataset, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/validation split (plain shuffle when a class is too small to stratify)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(dataset.y.astype(np.int64)) if dataset.y.ndim == 1 else np.array([])
    stratify = dataset.y if counts.size and counts[counts > 0].min() >= 2 else None
    try:
        return tuple(train_test_split(dataset.x, dataset.y, test_size=val_split, random_state=seed, stratify=stratify))
    except ValueError as exc:
        raise UsageError(f"cannot split {len(dataset.y)} rows with --val-split {val_split}: {exc}") from None


def epoch_lines(total: int, write: Callable[[str], None]) -> Any:
    """A Keras callback writing one line per epoch, for logs and pipes where a progress bar is noise."""
    import keras

    class EpochLines(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
            write(f"epoch {epoch + 1}/{total} {shown}")

    return EpochLines()


def train(
    config: TrainConfig,
    registry: RecipeRegistry | None = None,
    write: Callable[[str], None] = print,
    progress_bar: bool | None = None,
) -> TrainResult:
    """Train a recipe and write its model, metrics and held-out data into `config.out_dir`.

    Args:
        config: the run.
        registry: where recipes are looked up (default: built-in plus entry-point plug-ins).
        write: sink for progress lines.
        progress_bar: Keras' progress bar (default: when standard output is a terminal), else a line per epoch.
    """
    config.check()
    recipe = (registry or default_registry()).get(config.recipe)
    dataset = load_user_data(config.data, recipe) if config.data else recipe.load_data()
    if config.data is None:
        dataset = Dataset(x=recipe.prepare(dataset.x), y=dataset.y, description=dataset.description)
    x_train, x_val, y_train, y_val = split(dataset, config.val_split, config.seed)

    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    # Same seed, same model: seed Python, NumPy and the backend, and make TF's kernels deterministic.
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    epochs = config.epochs or recipe.epochs
    batch_size = config.batch_size or recipe.batch_size
    model = recipe.build_model(x_train, y_train)
    bar = sys.stdout.isatty() if progress_bar is None else progress_bar
    write(f"train {recipe.name}: {dataset.description}; {len(x_train)} train / {len(x_val)} validation rows, "
          f"{epochs} epochs, batch {batch_size}, seed {config.seed}")
    started = time.perf_counter()
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size,
        verbose=1 if bar else 0, callbacks=[] if bar else [epoch_lines(epochs, write)], shuffle=True,
    )
    wall = time.perf_counter() - started
    evaluation = model.evaluate(x_val, y_val, verbose=0, return_dict=True)

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    with atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    validation_path = out / VALIDATION_FILE
    buffer = io.BytesIO()
    np.savez(buffer, x=x_val, y=y_val)
    with atomic_path(validation_path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    validation = {k: float(v) for k, v in evaluation.items()}
    metrics: dict[str, Any] = {
        "recipe": recipe.name,
        "data": dataset.description,
        "rows": {"train": len(x_train), "validation": len(x_val)},
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": config.seed,
        "val_split": config.val_split,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "validation": validation,
        "train_seconds": round(wall, 3),
        "versions": library_versions(("kdeploy", "tensorflow", "keras", "numpy", "scikit-learn")),
    }
    metrics_path = out / METRICS_FILE
    write_json_atomic(metrics_path, metrics)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in validation.items())
    write(f"train {recipe.name}: validation {shown} after {wall:.1f} s; wrote {model_path}")
    return TrainResult(model_path, metrics_path, validation_path, metrics)

