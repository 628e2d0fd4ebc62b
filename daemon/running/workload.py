"""How much work is in the service, and whether placing is paused.

These few figures are read by every part of the service (intake waits while placing is
paused, the heartbeat asks whether work is stuck, `sort` asks whether it is done). Each is
changed by the part that causes the change, behind this class's own lock; nothing else is
shared between the parts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PAUSE_FIRST_S, PAUSE_MAX_S = 1.0, 60.0  # back-off while the library cannot be written


@dataclass(frozen=True)
class Pause:
    reason: str  # "library disk full"
    backoff_s: float
    until: float  # monotonic


class Workload:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._outstanding = 0  # admitted, not yet placed or given up
        self._decoding = 0  # arrivals a decoder has taken and not yet handed on
        self._pause: Pause | None = None
        self._last_progress = clock()

    # -- admitted and settled ----------------------------------------------------------------

    def admitted(self) -> None:
        with self._lock:
            self._outstanding += 1

    def settled(self) -> None:
        """Placed, or left where it is for a later look."""
        with self._lock:
            self._outstanding -= 1

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        with self._lock:
            self._decoding += 1
        try:
            yield
        finally:
            with self._lock:
                self._decoding -= 1

    @property
    def decoders_busy(self) -> bool:
        with self._lock:
            return self._decoding > 0

    # -- progress and stalls -----------------------------------------------------------------

    def progressed(self) -> None:
        with self._lock:
            self._last_progress = self._clock()

    def stalled(self, limit_s: float) -> bool:
        """Work waiting, not paused, and nothing placed for `limit_s`; idle counts as progress."""
        with self._lock:
            now = self._clock()
            if not self._outstanding:
                self._last_progress = now
                return False
            return self._pause is None and now - self._last_progress > limit_s

    # -- pausing while the library cannot be written ------------------------------------------

    def pause_for(self, reason: str) -> tuple[Pause, bool]:
        """Pause placing (back-off doubling up to a minute); True if the reason is new."""
        with self._lock:
            before = self._pause
            backoff = PAUSE_FIRST_S if before is None else min(before.backoff_s * 2, PAUSE_MAX_S)
            self._pause = Pause(reason, backoff, self._clock() + backoff)
            return self._pause, before is None or before.reason != reason

    def resume(self) -> Pause | None:
        """Placing works again; the pause there was, if any."""
        with self._lock:
            before, self._pause = self._pause, None
            return before

    @property
    def pause(self) -> Pause | None:
        with self._lock:
            return self._pause

    def wait_while_paused(self, should_exit: threading.Event) -> None:
        while not should_exit.is_set():
            pause = self.pause
            if pause is None or self._clock() >= pause.until:
                return
            time.sleep(min(0.2, max(0.0, pause.until - self._clock())))
