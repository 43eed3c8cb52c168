"""`kdeploy verify --data LOGS`: the requests a server logged (`kdeploy serve --payload-log-*`) as verify's inputs,
and the answers it gave as one more thing to compare with the reference.

The logged inputs are replayed through the reference and every format (or a server, with `--endpoint`); the
logged answers of the same model version become the `logged` candidate, so the report says whether what the
server answered in production agrees with the source model on those very inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.contract.manifest import Manifest
from kdeploy.contract.signature import Feed, ModelSignature, batch_size
from kdeploy.wire.payload_log import LoggedRequest, read_payload_log, replay_rows, stacked_inputs

LOGGED = "logged"
"""The candidate name of the logged answers in the parity report."""


def _row_key(feed: Feed, index: int) -> tuple:
    """One input row's identity: its values' bytes (strings as themselves)."""
    parts: list[object] = []
    for name in sorted(feed):
        row = np.asarray(feed[name][index])
        parts.append(tuple(row.ravel().tolist()) if row.dtype == object else row.tobytes())
    return tuple(parts)


class LoggedAnswers:
    """A backend that answers the logged inputs with the logged outputs (looked up by the input row's bytes)."""

    format = LOGGED

    def __init__(self, signature: ModelSignature, records: list[LoggedRequest]) -> None:
        self._signature = signature
        self._rows: dict[tuple, dict[str, np.ndarray]] = {}
        for record in records:
            assert record.outputs is not None
            for index in range(batch_size(record.inputs)):
                self._rows.setdefault(_row_key(record.inputs, index),
                                      {name: value[index] for name, value in record.outputs.items()})

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        rows = [self._rows[_row_key(feed, index)] for index in range(batch_size(feed))]
        return {name: np.stack([row[name] for row in rows]) for name in self._signature.output_names}

    def close(self) -> None:
        self._rows = {}


def logged_inputs(path: Path, manifest: Manifest) -> tuple[dict[str, np.ndarray], str, LoggedAnswers | None, str]:
    """The logged requests of the manifest's model as one feed, a description, and the logged answers of this
    version when every such request has them (else None, and the fourth item says why).

    Raises:
        UsageError: when the log holds no request this model's signature takes.
    """
    records = replay_rows(read_payload_log(path, manifest.name), manifest.signature)
    feed = stacked_inputs(records)
    described = f"{len(records)} logged requests ({batch_size(feed)} rows) from {path}"
    others = sorted({r.version for r in records} - {manifest.version})
    if others:
        return feed, described, None, (f"logged answers not compared: version(s) {others} answered some of the "
                                       f"logged requests, not only version {manifest.version}")
    wanted = set(manifest.signature.output_names)
    if any(r.outputs is None or set(r.outputs) != wanted for r in records):
        return feed, described, None, ("logged answers not compared: some lack outputs (a request that asked for "
                                       "some outputs only, or a response that was not logged)")
    return feed, described, LoggedAnswers(manifest.signature, records), ""
