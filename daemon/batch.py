"""Micro-batching: up to `batch_size` decoded images, or whatever came within `max_wait`."""

from __future__ import annotations

import queue
import threading
import time
from typing import TypeVar

T = TypeVar("T")


def next_batch(
    source: queue.Queue[T],
    batch_size: int,
    max_wait_s: float,
    stop: threading.Event,
    idle_poll_s: float = 0.2,
) -> list[T]:
    """Block until one item arrives (or `stop` is set, or `idle_poll_s` passes: returns []),
    then collect more until the batch is full or `max_wait_s` has passed since the first."""
    try:
        first = source.get(timeout=idle_poll_s)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + max_wait_s
    while len(batch) < batch_size and not stop.is_set():
        remaining = deadline - time.monotonic()
        try:
            batch.append(source.get(timeout=remaining) if remaining > 0 else source.get_nowait())
        except queue.Empty:
            break
    return batch
