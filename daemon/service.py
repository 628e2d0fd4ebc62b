"""The service lifecycle, all in one place: capture signals → start → main loop → drain → stop.

`sortbox run` and `sortbox sort` are both a `Service`; only the intake differs: the watched
inbox (`WatchIntake`) or the files given (`ListIntake`, and then it stops when every one is
handled).

Threads and queues (data flows one way):

    intake ─arrivals→ decoders ─decoded→ main loop ─classified→ placer
    (running/intakes.py:  (running/       (batch, classify,       (running/placer.py:
     watch + stability,    decoders.py:    decide; the model        place_batch: copy,
     or the given files)   read, hash,     in model_slot.py)        journal; tells the
                           decode)                                  intake how it ended)

The placer writes one batch while the main loop classifies the next: disk and CPU overlap.
Each part owns its state: the model is the main loop's (ModelSlot), the library, its index
and journal the placer's, the stability tracker the intake's. What they all read, how much
work is under way and whether placing is paused, sits in `Workload`, behind its own lock.

Every failure is a per-file outcome or a loud exit, never a silent stall: a worker thread that
dies takes the service down with exit status 1 (systemd restarts it), and the watchdog is only
pinged while work moves or there is none (running/health.py).
"""

from __future__ import annotations

import contextlib
import gc
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog
from sortbox.daemon.intake.files import Arrival
from sortbox.daemon.running.batch import next_batch
from sortbox.daemon.running.decoders import Decoders
from sortbox.daemon.running.health import Health
from sortbox.daemon.running.heap import limit_heaps, release_free_memory
from sortbox.daemon.running.intakes import Intake, ListIntake, OnBatch, WatchIntake
from sortbox.daemon.running.metrics import Metrics
from sortbox.daemon.running.model_slot import ModelSlot
from sortbox.daemon.running.notify import Notifier, Reporter
from sortbox.daemon.running.placer import Placer
from sortbox.daemon.running.reload import reload_now
from sortbox.daemon.running.state_file import StateFile, state_file_of
from sortbox.daemon.running.workload import Workload
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.library import open_library
from sortbox.daemon.sorting.read import Decoded
from sortbox.daemon.sorting.stages import Classified, classify_batch

log = structlog.get_logger(__name__)

_DRAIN_TIMEOUT_S = 5.0


class Service:
    def __init__(
        self,
        settings: Settings,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        *,
        inputs: list[Arrival] | None = None,
        dry_run: bool = False,
        on_batch: OnBatch | None = None,
    ) -> None:
        """`inputs=None` watches the inbox until stopped; a list sorts those files and stops.
        `reload_settings` re-reads config.toml on SIGHUP. `on_batch(events, finished)` is told
        after every placed batch (the progress bar of `sortbox sort`)."""
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.should_exit = threading.Event()
        self.force_exit = False
        self.done = False  # `sort`: every input was handled
        self.metrics = Metrics()
        self.workload = Workload()
        self._intake_kind = WatchIntake if inputs is None else ListIntake
        self._inputs = inputs
        self._dry_run = dry_run
        self._on_batch = on_batch
        self._reload_settings = reload_settings
        self._reload_requested = False
        self._crashed: str | None = None
        self._arrivals: queue.Queue[Arrival | None] = queue.Queue(maxsize=settings.queue_size)
        self._classified: queue.Queue[Classified | None] = queue.Queue(maxsize=1)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """0 when stopped or done; 1 when a worker died (systemd then restarts us)."""
        signal.signal(signal.SIGTERM, self._on_exit_signal)
        signal.signal(signal.SIGINT, self._on_exit_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()
        return 1 if self._crashed else 0

    def _on_exit_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit.is_set():  # a second Ctrl-C: don't wait for in-flight work
            self.force_exit = True
        self.should_exit.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True  # config.toml, and models_dir/current, looked at again

    def startup(self) -> None:
        s, kind = self.settings, self._intake_kind
        limit_heaps()  # before ONNX Runtime and our workers start their threads
        if not self._dry_run:
            for folder in (s.library, s.models_dir, s.journal.parent):
                folder.mkdir(parents=True, exist_ok=True)
        # first: a second daemon on this library stops here, before it loads or touches a thing
        state_file = StateFile(state_file_of(s.library)) if kind.long_running else None
        reporter = Reporter(self.notifier, state_file)
        self.slot = ModelSlot(s)
        self.library = open_library(s, dry_run=self._dry_run, watching=kind.long_running)
        self.slot.warm_up()
        # What start-up made (modules, the model, the done-index) lives as long as we do: out
        # of the collector's way, so its full passes stay short (1.5 % more pictures a second)
        gc.freeze()
        self.metrics.model = self.slot.version
        self.health = Health(
            self.notifier, reporter, self.workload, self.metrics, self.library, self.slot
        )
        self.intake = self._make_intake()
        self.decoders = Decoders(s, self._arrivals, self.workload, self.slot.preprocessing)
        self.placer = Placer(
            self.library,
            self.intake,
            self.workload,
            self.metrics,
            state_changed=self.health.publish,
            metrics_file=s.metrics_textfile if kind.long_running else None,
            on_batch=self._on_batch,
        )
        self._placer_thread = self._start_thread(
            lambda: self.placer.loop(self._classified), "placer"
        )
        self.decoders.start(self._start_thread)
        self.intake.announce(self.slot.version, self.placer.journal_later)
        self.intake.start(self._start_thread)
        self.notifier.ready(self.health.status_line())
        self.health.publish()

    def _make_intake(self) -> Intake:
        parts = (self.settings, self.library, self._arrivals, self.workload, self.should_exit)
        if self._inputs is None:
            return WatchIntake(*parts, self.metrics)
        return ListIntake(self._inputs, *parts, self._on_batch)

    def main_loop(self) -> None:
        max_wait_s = self.settings.max_wait_ms / 1000
        worked = False
        while not self.should_exit.is_set():
            batch = next_batch(
                self.decoders.decoded,
                self.settings.batch_size,
                max_wait_s,
                self.should_exit,
                more_coming=self.decoders.more_queued,
                idle_poll_s=self.intake.idle_poll_s,
            )
            if batch:
                self._classify(batch)
                worked = True
            elif worked and not self.decoders.more_coming():
                # the work ran out, not just a pause between batches: give back what it freed
                # (heap.py); trimming mid-burst only makes the decoders fault the pages in again
                release_free_memory()
                worked = False
            if self._reload_requested:
                self._reload_requested = False
                self.settings = reload_now(
                    self.settings, self._reload_settings, self.slot, self.placer.journal_later
                )
            self._switch_model_if_new()
            if not self.health.beat():
                self._crashed = "stalled"
                self.should_exit.set()
            if self.intake.all_done():
                self.done = True
                break

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.should_exit.set()
        # 1. No new notices: stop the observer.
        self.intake.stop()
        # 2. Inputs not yet decoded stay where they are for the next start; stop the decoders.
        self.decoders.stop()
        # 3. Finish in-flight work within the timeout: classify what the decoders finish,
        #    and let the placer place and journal it.
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        self.decoders.finish(self._classify, deadline, lambda: self.force_exit)
        self._classified.put(None)
        self._placer_thread.join(timeout=max(0.1, deadline - time.monotonic()))
        # 4. Make the journal durable and close it (and leave the index for the next start).
        self.placer.close(clean=not self._crashed and not self._placer_thread.is_alive())
        self.health.reporter.close()
        log.info(
            "stopped",
            exit_status=1 if self._crashed else 0,
            **{k: self.metrics.total(k) for k in ("sorted", "review", "rejected")},
        )

    def _start_thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def guarded() -> None:
            _name_in_the_kernel(name)
            try:
                target()
            except BaseException:
                # Never a zombie that pings the watchdog: the whole service goes down, loudly.
                log.critical("worker_died", thread=name, exc_info=True)
                self._crashed = name
                self.should_exit.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    # -- the main loop's own work: classify, switch models ------------------------------------

    def _classify(self, batch: list[Decoded]) -> None:
        """Run the model, then hand the batch to the placer (waits if it is busy)."""
        batch = self.decoders.redecoded(batch)
        try:
            classified = classify_batch(
                batch, self.slot.classifier, self.library, self.settings.audit_rate
            )
        except Exception:
            # The service must not die on one batch; its files stay where they are, and the
            # next rescan (or restart) brings them back.
            log.exception("classification_failed", files=len(batch))
            for item in batch:
                self.intake.failed(item)
                self.intake.finished(item.arrival)
            return
        self._classified.put(classified)

    def _switch_model_if_new(self) -> None:
        switched = self.slot.look()
        if switched is not None:
            self.metrics.model = switched.model
            self.decoders.spec = self.slot.preprocessing
            self.placer.journal_later(switched)
            self.health.publish()


def _name_in_the_kernel(name: str) -> None:
    """Give the calling thread its name where `top -H`, `ps -L` and /proc look ("decode-0",
    "placer"), not only inside Python, so an admin (or a benchmark) can tell which part uses
    the CPU. Linux keeps at most 15 bytes; elsewhere the thread stays unnamed."""
    with contextlib.suppress(OSError):
        Path("/proc/thread-self/comm").write_bytes(name.encode()[:15])
