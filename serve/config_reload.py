"""A new model config for a running server, as TF Serving takes one: from the model config file, re-read every
`--model-config-file-poll-seconds` (TF Serving's `--model_config_file_poll_wait_seconds`), or from
`ModelService/HandleReloadConfigRequest` (only with `--allow-config-reload`: the RPC makes the server load any
SavedModel path it names).

The new config supersedes the old one (models left out unload, new ones load, changed policies and labels apply), is
checked first as TF Serving checks it (one entry per name, absolute base paths in a request, a platform kdeploy
serves), and answers once the new versions have loaded. A file that does not parse keeps the config in force.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.serve.config import ModelSource
from kdeploy.serve.models import ModelManager, VersionState
from kdeploy.serve.sources import ModelConfigError, sources_from_config, sources_from_model_config
from kdeploy.wire.errors import ErrorKind, ServeError

logger = logging.getLogger(__name__)


class ModelConfigReloader:
    """Applies new model configs to the model manager, one at a time."""

    def __init__(self, models: ModelManager, on_change: Callable[[], None], *, config_file: Path | None = None,
                 allow_requests: bool = False) -> None:
        """
        Args:
            models: the model manager to reconfigure.
            on_change: called after a config is applied (health per model follows the models served).
            config_file: the model config file the server started from (None: it started from a repository).
            allow_requests: whether HandleReloadConfigRequest may change the config.
        """
        self._models = models
        self._on_change = on_change
        self._file = config_file
        self._allow_requests = allow_requests
        self._lock = threading.Lock()
        self._file_text: str | None = config_file.read_text(encoding="utf-8") if config_file is not None else None
        """The file's text as last applied (or refused): a poll applies only a change."""

    def reload_file(self) -> bool:
        """Re-read the model config file and apply it if it changed.

        Returns:
            Whether a new config was applied. A file that is missing, does not parse or cannot be served is logged
            once and the config in force stays.
        """
        if self._file is None:
            return False
        try:
            text = self._file.read_text(encoding="utf-8")
        except OSError as exc:
            logger.error("cannot read the model config file %s: %s; keeping the config in force", self._file, exc)
            return False
        if text == self._file_text:
            return False
        self._file_text = text
        try:
            self._apply(sources_from_model_config(self._file))
        except (UsageError, ServeError) as exc:
            logger.error("model config file %s not applied: %s", self._file, exc)
            return False
        logger.info("model config file %s applied: models %s", self._file, ", ".join(self._models.model_names))
        return True

    def reload_request(self, config: Any) -> None:
        """Apply the `ModelServerConfig` of a HandleReloadConfigRequest (base paths must be absolute).

        Raises:
            ServeError: FAILED_PRECONDITION when requests may not reload the config, or a label names a version that
                is not available; INVALID_INPUT for a config TF Serving refuses too (its message).
        """
        if not self._allow_requests:
            raise ServeError(ErrorKind.FAILED_PRECONDITION, "HandleReloadConfigRequest is turned off on this server "
                             "(it loads any path it is given); start kdeploy serve with --allow-config-reload")
        try:
            sources = sources_from_config(config, relative_to=None, origin="ReloadConfigRequest")
        except ModelConfigError as exc:
            raise ServeError(exc.kind, str(exc)) from None
        self._apply(sources)
        logger.info("model config reloaded by request: models %s", ", ".join(self._models.model_names))

    def _apply(self, sources: list[ModelSource]) -> None:
        # The object-store mirror is set up from the start-up config: a reload can keep such a model (in the cache
        # folder it has), not add one.
        mirrored = {(s.name, s.url): s for s in self._models.sources if s.url is not None}
        added = sorted(s.name for s in sources if s.url is not None and (s.name, s.url) not in mirrored)
        if added:
            raise ServeError(ErrorKind.FAILED_PRECONDITION, f"models {added} have object-store base paths this server "
                             "did not start with; restart it with them (a reload adds local base paths only)")
        sources = [s if s.url is None else dataclasses.replace(mirrored[s.name, s.url], policy=s.policy,
                                                               labels=s.labels) for s in sources]
        with self._lock:
            self._models.reconfigure(sources)
            self._on_change()
            for source in sources:
                states = {s.version: s.state for s in self._models.statuses(source.name)} if source.labels else {}
                for label, version in sorted(source.labels.items()):
                    if states.get(version) is not VersionState.AVAILABLE:
                        raise ServeError(ErrorKind.FAILED_PRECONDITION,
                                         f"Request to assign label to version {version} of model {source.name}, "
                                         f"which is not currently available for inference (label {label!r})")

    def poll_forever(self, seconds: float, stopping: threading.Event) -> None:
        """Re-read the model config file every `seconds` until `stopping` is set (run in a thread)."""
        while not stopping.wait(seconds):
            try:
                self.reload_file()
            except Exception:  # a bad reload must not stop the next one
                logger.exception("model config reload failed")
