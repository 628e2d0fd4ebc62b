"""The placer: the only writer of the library, its index and its journal.

It takes classified batches from the main loop and places them (stages.place_batch), one
batch while the main loop classifies the next, so disk and CPU overlap. It tells the intake
how each input ended, pauses placing while the library or journal cannot be written, keeps
the counters, and journals the model lines others hand it. When idle it looks at its journal
once a second, so a journal deleted or emptied behind its back is said at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sortbox.daemon.running.intakes import Intake, OnBatch
from sortbox.daemon.running.metrics import Metrics, write_textfile
from sortbox.daemon.running.workload import Workload
from sortbox.daemon.sorting.journal import Event
from sortbox.daemon.sorting.library import Library
from sortbox.daemon.sorting.stages import Classified, Placed, is_disk_full, place_batch

log = structlog.get_logger(__name__)

JOURNAL_CHECK_INTERVAL_S = 1.0  # when idle, the placer looks at its journal this often


class Placer:
    def __init__(
        self,
        library: Library,
        intake: Intake,
        workload: Workload,
        metrics: Metrics,
        state_changed: Callable[[], None],
        metrics_file: Path | None = None,
        on_batch: OnBatch | None = None,
    ) -> None:
        self.library = library
        self.intake = intake
        self.workload = workload
        self.metrics = metrics
        self.state_changed = state_changed  # the service publishes its state (status, notify)
        self.metrics_file = metrics_file
        self.on_batch = on_batch
        self._lock = threading.Lock()  # guards the model lines waiting to be journaled
        self._unjournaled: list[Event] = []

    def loop(self, batches: queue.Queue[Classified | None]) -> None:
        """The placer thread: place each batch until the end marker (None)."""
        while True:
            try:
                classified = batches.get(timeout=JOURNAL_CHECK_INTERVAL_S)
            except queue.Empty:
                self.look_at_journal()  # idle: a journal deleted now is said now
                continue
            if classified is None:
                return
            self.place(classified)

    def place(self, classified: Classified) -> None:
        started = time.monotonic()
        placed = self._place_isolated(classified)
        if placed.failure is not None:
            self._pause_for(placed.failure, placed.failed_writing)
        elif placed.events:
            self._resume()
        self._tell_intake(classified, placed)
        self.workload.progressed()
        self.journal_later()
        self.metrics.observe_batch(placed.events, time.monotonic() - started)
        for event in placed.events:
            log.info(
                event.event,
                src=event.src,
                dest=event.dest,
                label=event.label,
                confidence=event.confidence,
                reason=event.reason,
            )
        if self.on_batch is not None:
            retried = {id(item) for item in placed.retry}
            handled = [i for i in classified.items if id(i) not in retried]
            members = sum(1 + len(i.companions) for i in handled) - len(placed.alone)
            self.on_batch(placed.events, members)
        self.state_changed()  # `status` says at once that the journal lost lines, or a pause
        self.write_metrics()

    def _tell_intake(self, classified: Classified, placed: Placed) -> None:
        for item in placed.retry:
            self.intake.retry(item.arrival, awaiting_rest=item.awaiting_rest)
        retried = {id(item) for item in placed.retry}
        for item in classified.items:
            if id(item) not in retried:
                self.intake.finished(item.arrival)
        for companion in placed.alone:
            self.intake.alone(companion.arrival)

    def _place_isolated(self, classified: Classified) -> Placed:
        """place_batch, with an unexpected error confined to the file that causes it."""
        try:
            return place_batch(classified, self.library)
        except Exception:
            if len(classified.items) == 1:
                # left in the inbox and logged; a restart or the next rescan tries it again
                log.exception("placement_failed", path=str(classified.items[0].arrival.path))
                self.intake.failed(classified.items[0])
                return Placed()
        log.warning("batch_failed_placing_one_by_one", files=len(classified.items))
        placed = Placed()
        for item, decision in zip(classified.items, classified.decisions, strict=True):
            one = self._place_isolated(Classified([item], [decision], classified.model))
            placed.events += one.events
            placed.retry += one.retry
            if one.failure is not None:
                placed.failure, placed.failed_writing = one.failure, one.failed_writing
        return placed

    # -- faults: pause and resume ------------------------------------------------------------

    def _pause_for(self, failure: OSError, where: str) -> None:
        what = "disk full" if is_disk_full(failure) else f"cannot be written: {failure.strerror}"
        pause, new = self.workload.pause_for(f"{where} {what}")
        if new:
            log.error("paused", reason=pause.reason, retry_in_s=pause.backoff_s, error=str(failure))

    def _resume(self) -> None:
        before = self.workload.resume()
        if before is not None:
            log.info("resumed", after=before.reason)

    # -- the journal ---------------------------------------------------------------------------

    def journal_later(self, event: Event | None = None) -> None:
        """Journal a model line now if the disk lets us, else with the next batch. Called from
        the main loop (a model switch) as well as from the placer."""
        with self._lock:
            if event is not None:
                self._unjournaled.append(event)
            pending, self._unjournaled = self._unjournaled, []
        if self.library.journal is None or not pending:
            return
        try:
            self.library.journal.append(pending)
        except OSError as exc:
            log.error("journal_write_failed", error=str(exc), events=len(pending))
            with self._lock:
                self._unjournaled = pending + self._unjournaled

    def look_at_journal(self) -> None:
        try:
            self.library.look_at_journal()
        except OSError as exc:  # a full disk: said, and tried again at the next look
            log.error("journal_write_failed", error=str(exc))
        self.state_changed()

    def close(self, clean: bool) -> None:
        """Shutdown, step 4: the journal durable and closed; after a clean drain, the index
        snapshot for the next start."""
        self.journal_later()
        if clean:
            self.library.save_index_snapshot()
        if self.library.journal is not None:
            self.library.journal.close()
        self.write_metrics()

    def write_metrics(self) -> None:
        if self.metrics_file is None:
            return
        try:
            write_textfile(self.metrics_file, self.metrics.render())
        except OSError as exc:
            log.warning("metrics_not_written", path=str(self.metrics_file), error=str(exc))
