"""Micro-batching: up to `batch_size` decoded images, or whatever came within `max_wait`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def next_batch(
    source: queue.Queue[T],
    batch_size: int,
    max_wait_s: float,
    stop: threading.Event,
    more_coming: Callable[[], bool] = lambda: True,
    idle_poll_s: float = 0.2,
) -> list[T]:
    """Block until one item arrives (or `stop` is set, or `idle_poll_s` passes: returns []),
    then collect more until the batch is full, `max_wait_s` has passed since the first, or
    nothing is queued and `more_coming()` says nothing is on its way: a lone picture does
    not wait out `max_wait_s` for company that will not come."""
    try:
        first = source.get(timeout=idle_poll_s)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + max_wait_s
    while len(batch) < batch_size and not stop.is_set():
        try:
            batch.append(source.get_nowait())
            continue
        except queue.Empty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not more_coming():
            break
        try:
            batch.append(source.get(timeout=min(remaining, 0.005)))
        except queue.Empty:
            continue
    return batch
