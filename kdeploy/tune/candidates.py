"""The settings `kdeploy tune` tries: kdeploy's defaults first, then threads, spinning, execution, batching, workers.

Each candidate sets every runtime key explicitly, so a `kdeploy.toml` already in the model folder does not leak into
the measurement; the order is the order of measurement, so a short `--budget` still covers the likeliest winners.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdeploy.serve.model_settings import ModelSettings


@dataclass(frozen=True)
class Candidate:
    """One configuration to measure."""

    label: str
    settings: ModelSettings
    workers: int = 1
    """Server processes (a server flag, not a per-model setting: the report says to pass `--workers`)."""

    def describe(self) -> str:
        s = self.settings
        parts = [f"threads={s.intra_op_threads or 'auto'}", f"spin={s.spin_wait}", f"exec={s.execution}"]
        if s.batching_enabled:
            parts.append(f"batch={s.batching.get('max_batch_size')}/{s.batching.get('batch_timeout_micros')}µs")
        if self.workers > 1:
            parts.append(f"workers={self.workers}")
        return " ".join(parts)


def runtime(threads: int = 0, spin: str = "auto", execution: str = "auto", **batching: int) -> ModelSettings:
    """A full settings layer (batching off unless parameters are given)."""
    params: dict[str, int | tuple[int, ...]] = dict(batching)
    if params:
        max_size = batching["max_batch_size"]
        params["allowed_batch_sizes"] = tuple(sorted({1, *(2 ** i for i in range(1, 12) if 2 ** i < max_size),
                                                      max_size}))
    return ModelSettings(intra_op_threads=threads, spin_wait=spin, execution=execution,
                         batching_enabled=bool(params), batching=params, source="kdeploy tune")


def candidate_grid(cores: int, *, batching: bool = True, workers: bool = True) -> list[Candidate]:
    """The candidates for a machine with `cores` CPUs, in the order they are measured.

    Args:
        cores: CPUs the server may use.
        batching: include dynamic batching candidates (a model without a batch dimension cannot batch).
        workers: include a candidate with one server process per core.
    """
    grid = [
        Candidate("defaults", runtime()),
        Candidate("spin-inline", runtime(spin="on", execution="inline")),
        Candidate("sleep-thread", runtime(spin="off", execution="thread")),
        Candidate("run-thread", runtime(spin="run", execution="thread")),
        Candidate("sleep-inline", runtime(spin="off", execution="inline")),
    ]
    if cores > 1:
        grid += [Candidate("1thread-sleep", runtime(threads=1, spin="off", execution="thread")),
                 Candidate("1thread-spin", runtime(threads=1, spin="on", execution="thread"))]
    if batching:
        grid += [
            Candidate("batch8", runtime(max_batch_size=8, batch_timeout_micros=500, num_batch_threads=1)),
            Candidate("batch32", runtime(max_batch_size=32, batch_timeout_micros=2000, num_batch_threads=1)),
        ]
        if cores > 1:
            grid.append(Candidate("batch16-1thread", runtime(threads=1, max_batch_size=16, batch_timeout_micros=1000,
                                                             num_batch_threads=cores)))
    if workers and cores > 1:
        grid.append(Candidate(f"workers{cores}", runtime(), workers=cores))
    return grid
