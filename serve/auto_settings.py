"""The settings `auto` stands for, chosen per model at load from its warm-up timing and the machine.

The rule (numbers in docs/serve/tuning.md):

- A **tiny** model (one row in at most `inline_max_seconds`, 200 µs by default) runs inline on the event loop with
  sleeping intra-op threads: a hand-off to a thread costs more than its run, and a spinning pool takes the cores
  the event loop needs to decode and encode requests.
- A **heavier** model runs inline too when one run already uses every core (onnxruntime's default thread count): a
  second concurrent run would only split the same cores, and the hand-off to a thread and back adds two wake-ups per
  request. With fewer intra-op threads than cores it runs on the server's threads, so several runs fill the machine.
- A heavier model's threads are timed both ways at warm-up (two sessions, one row at a time, in alternation), asleep
  and spinning while a run is in flight (`run`: awake between the parallel sections of a run, asleep once the last
  run returns), and keep spinning only when that made a row at least 10 % faster: spinning saves a wake-up per
  section (dozens per MobileNetV2 image) where its threads get the cores, and costs time where other work holds
  them.
- With batching, threads sleep: batches run back to back under load and a spinning pool holds the cores the event
  loop needs to gather the next batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kdeploy.serve.model_settings import RuntimeSettings

SPIN_MIN_GAIN = 0.9
"""Spinning is kept only when it makes a row at least this much faster (below: noise, or a busy machine)."""


def prefer_spinning(asleep_seconds: float, spinning_seconds: float) -> bool:
    """Whether a heavier model keeps spinning threads, from its warm-up timed both ways on this machine."""
    return spinning_seconds <= SPIN_MIN_GAIN * asleep_seconds


@dataclass(frozen=True)
class Choice:
    """What `auto` became for one version."""

    spin_wait: str
    """`on`, `run` or `off`."""
    inline: bool
    """Run requests on the event loop (else on the server's threads)."""
    reason: str
    """Why, for the load log line."""


def usable_cores() -> int:
    """CPUs this process may run on (its affinity: a container's cpuset, a `taskset`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose(settings: RuntimeSettings, row_seconds: float, *, inline_max_seconds: float,
           parallel_runtime: bool = True, cores: int | None = None) -> Choice:
    """Resolve `auto` in `settings` for a model whose one-row run took `row_seconds` at warm-up.

    Args:
        settings: the version's settings; values other than `auto` are kept.
        row_seconds: the fastest one-row run at warm-up (measured with sleeping threads).
        inline_max_seconds: runs at most this long count as tiny.
        parallel_runtime: one run spreads over the intra-op threads (onnxruntime); other runtimes run a heavier
            model on the server's threads, as many at once as they allow.
        cores: CPUs the server may use (default: this process's affinity).
    """
    cores = cores or usable_cores()
    tiny = row_seconds <= inline_max_seconds
    whole_machine = parallel_runtime and (settings.intra_op_threads == 0 or settings.intra_op_threads >= cores)
    reason = ("tiny, " if tiny else "") + f"{row_seconds * 1e6:.0f} µs per row"
    spin = settings.spin_wait
    if spin == "auto":
        spin = "off" if tiny or settings.batching is not None else "run"
    execution = settings.execution
    if execution == "auto":
        execution = "inline" if tiny or whole_machine else "thread"
        if not tiny:
            reason += (", one run uses every core" if whole_machine
                       else f", {settings.intra_op_threads or 'some'} of {cores} cores per run")
    return Choice(spin_wait=spin, inline=execution == "inline", reason=reason)
