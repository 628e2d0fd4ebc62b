"""What the service says about itself, and whether it is still working.

Systemd hears READY/STATUS/WATCHDOG (notify.py), `sortbox status` reads the state file;
both are told the same state ("sorting", "idle", "paused: library disk full") when it
changes. The heartbeat pings the watchdog only while work moves or there is none: work
waiting and nothing placed for STALL_LIMIT_S is a stall, and the service exits 1 rather
than look healthy while doing nothing (systemd restarts it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import structlog
from sortbox.daemon.running.heap import release_free_memory
from sortbox.daemon.running.metrics import Metrics
from sortbox.daemon.running.model_slot import ModelSlot
from sortbox.daemon.running.notify import Notifier, Reporter
from sortbox.daemon.running.workload import Workload
from sortbox.daemon.sorting.library import Library

log = structlog.get_logger(__name__)

STALL_LIMIT_S = 120.0


class Health:
    def __init__(
        self,
        notifier: Notifier,
        reporter: Reporter,
        workload: Workload,
        metrics: Metrics,
        library: Library,
        slot: ModelSlot,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.reporter = reporter
        self.workload = workload
        self.metrics = metrics
        self.library = library
        self.slot = slot
        self._clock = clock
        self._next_beat = 0.0

    def status_line(self) -> str:
        pause = self.workload.pause
        prefix = f"paused: {pause.reason}; " if pause is not None else ""
        return prefix + self.metrics.status_line()

    def publish(self) -> None:
        """The daemon's state for `status` (and systemd's STATUS=), said when it changes."""
        pause, loss = self.workload.pause, self.library.journal_loss
        busy = "sorting" if self.workload.outstanding else "idle"
        extra = {"journal_lost": dataclasses.asdict(loss)} if loss is not None else {}
        self.reporter.report(
            f"paused: {pause.reason}" if pause else busy,
            self.slot.version,
            self.status_line(),
            extra,
        )

    def beat(self) -> bool:
        """Every few seconds: ping the watchdog and say the state. False: stalled."""
        now = self._clock()
        if now < self._next_beat:
            return True
        interval = self.notifier.watchdog_interval_s or 5.0
        self._next_beat = now + min(interval, 5.0)
        if self.workload.stalled(STALL_LIMIT_S):
            log.critical("stalled", waiting=self.workload.outstanding, seconds=STALL_LIMIT_S)
            return False
        self.notifier.watchdog()
        self.notifier.status(self.status_line())
        self.publish()  # "sorting" and "idle" as they come
        release_free_memory()
        return True
