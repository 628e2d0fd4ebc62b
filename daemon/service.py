"""The service lifecycle, all in one place: capture signals → start → main loop → drain → stop.

`sortbox run` and `sortbox sort` are both a `Service`; only the intake differs: the watched
inbox (`WatchIntake`) or the files given (`ListIntake`, and then it stops when every one is
handled).

Threads and queues (data flows one way):

    intake ─arrivals→ decoders ─decoded→ main loop ─classified→ placer
    (running/intakes.py:  (sorting/read:  (batch, classify,       (running/placer.py:
     watch + stability,    read, hash,     decide; the model        place_batch: copy,
     or the given files)   decode)         in model_slot.py)        journal; tells the
                                                                    intake how it ended)

The placer writes one batch while the main loop classifies the next: disk and CPU overlap.
Each part owns its state: the model is the main loop's (ModelSlot), the library, its index
and journal the placer's, the stability tracker the intake's. What they all read, how much
work is under way and whether placing is paused, sits in `Workload`, behind its own lock.

Every failure is a per-file outcome or a loud exit, never a silent stall: a worker thread that
dies takes the service down with exit status 1 (systemd restarts it), and the watchdog is only
pinged while work moves or there is none.
"""

from __future__ import annotations

import dataclasses
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
from sortbox.daemon.running.heap import limit_heaps, release_free_memory
from sortbox.daemon.running.intakes import Intake, ListIntake, OnBatch, WatchIntake
from sortbox.daemon.running.metrics import Metrics
from sortbox.daemon.running.model_slot import ModelSlot
from sortbox.daemon.running.notify import Notifier, Reporter
from sortbox.daemon.running.placer import Placer
from sortbox.daemon.running.state_file import StateFile, state_file_of
from sortbox.daemon.running.workload import Workload
from sortbox.daemon.settings import ConfigError, Settings
from sortbox.daemon.sorting.classify import Classifier
from sortbox.daemon.sorting.journal import ModelLoaded
from sortbox.daemon.sorting.library import open_library
from sortbox.daemon.sorting.read import Decoded, lower_thread_priority, read_group
from sortbox.daemon.sorting.stages import Classified, classify_batch

log = structlog.get_logger(__name__)

_STOP = None  # end-of-work marker on the arrivals queue
_DRAIN_TIMEOUT_S = 5.0
_LIVE_SETTINGS = {"target_precision", "audit_rate"}  # what SIGHUP applies without a restart
# Work waiting and no batch finished for this long: something is stuck. Stop pinging the
# watchdog and exit 1 rather than look healthy while doing nothing.
STALL_LIMIT_S = 120.0


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
        `reload_settings` re-reads config.toml on SIGHUP. `on_batch(events, finished)` is
        told after every placed batch (the progress bar of `sortbox sort`)."""
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.should_exit = threading.Event()
        self.force_exit = False
        self.done = False  # `sort`: every input was handled
        self.metrics = Metrics()
        self.workload = Workload()
        self._inputs = inputs
        self._dry_run = dry_run
        self._on_batch = on_batch
        self._reload_settings = reload_settings
        self._reload_requested = False
        self._crashed: str | None = None
        self._arrivals: queue.Queue[Arrival | None] = queue.Queue(maxsize=settings.queue_size)
        # one batch ahead: decoded items hold their file's bytes until they are copied
        self._decoded: queue.Queue[Decoded] = queue.Queue(maxsize=settings.batch_size)
        self._classified: queue.Queue[Classified | None] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
        self._next_watchdog = 0.0

    @property
    def watching(self) -> bool:
        return self._inputs is None

    @property
    def classifier(self) -> Classifier:
        return self.slot.classifier

    @property
    def unfinished(self) -> list[Path]:
        """`sort`: inputs given up on (kept changing, gone, or outside their folder)."""
        return self.intake.unfinished if isinstance(self.intake, ListIntake) else []

    @property
    def failed(self) -> list[Path]:
        """`sort`: inputs an unexpected error stopped (logged)."""
        return self.intake.failed_paths if isinstance(self.intake, ListIntake) else []

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """0 when stopped or done; 1 when a worker died (systemd then restarts us)."""
        self._capture_signals()
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()
        return 1 if self._crashed else 0

    def _capture_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_exit_signal)
        signal.signal(signal.SIGINT, self._on_exit_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_exit_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit.is_set():  # a second Ctrl-C: don't wait for in-flight work
            self.force_exit = True
        self.should_exit.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True  # config.toml, and models_dir/current, looked at again

    def startup(self) -> None:
        s = self.settings
        limit_heaps()  # before ONNX Runtime and our workers start their threads
        if not self._dry_run:
            for folder in (s.library, s.models_dir, s.journal.parent):
                folder.mkdir(parents=True, exist_ok=True)
        # first: a second daemon on this library stops here, before it loads or touches a thing
        state_file = StateFile(state_file_of(s.library)) if self.watching else None
        self._reporter = Reporter(self.notifier, state_file)
        self.slot = ModelSlot(s)
        self.library = open_library(s, dry_run=self._dry_run, watching=self.watching)
        self.slot.warm_up()
        self.metrics.model = self.slot.version
        self.intake = self._make_intake()
        self.placer = Placer(
            self.library,
            self.intake,
            self.workload,
            self.metrics,
            state_changed=self._publish_state,
            metrics_file=s.metrics_textfile if self.watching else None,
            on_batch=self._on_batch,
        )
        self._start_thread(lambda: self.placer.loop(self._classified), "placer")
        for n in range(s.decode_workers):
            self._start_thread(self._decode_loop, f"decode-{n}")
        if isinstance(self.intake, WatchIntake):
            self.placer.journal_later(ModelLoaded(model=self.slot.version, reason="daemon started"))
            log.info(
                "started",
                inbox=str(s.inbox),
                library=str(s.library),
                model=self.slot.version,
                watch_mode=self.intake.mode,
                known_contents=self.library.index.contents,
            )
        self.intake.start(self._start_thread)
        self.notifier.ready(self.status_line())
        self._publish_state()

    def _make_intake(self) -> Intake:
        parts = (self.settings, self.library, self._arrivals, self.workload, self.should_exit)
        if self._inputs is None:
            return WatchIntake(*parts, self.metrics)
        return ListIntake(self._inputs, *parts, self._on_batch)

    def main_loop(self) -> None:
        max_wait_s = self.settings.max_wait_ms / 1000
        # `sort` ends when the placer has placed the last batch; look for that often, so
        # the command does not sit idle for a daemon's poll interval after its work is done
        idle_poll_s = 0.2 if self.watching else 0.01
        worked = False
        while not self.should_exit.is_set():
            batch = next_batch(
                self._decoded,
                self.settings.batch_size,
                max_wait_s,
                self.should_exit,
                more_coming=self._decoding_more,
                idle_poll_s=idle_poll_s,
            )
            if batch:
                self._classify(batch)
                worked = True
            elif worked:  # the work ran out: give back what it freed (see heap.py)
                release_free_memory()
                worked = False
            if self._reload_requested:
                self._reload()
            self._switch_model_if_new()
            self._heartbeat()
            if self.intake.all_done():
                self.done = True
                break

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.should_exit.set()
        # 1. No new notices: stop the observer.
        self.intake.stop()
        # 2. Inputs not yet decoded stay where they are for the next start; stop the decoders.
        _drain(self._arrivals)
        for _ in range(self.settings.decode_workers):
            self._arrivals.put(_STOP)
        # 3. Finish in-flight work within the timeout: classify what the decoders finish,
        #    and let the placer place and journal it.
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        decoders = [t for t in self._threads if t.name.startswith("decode")]
        while not self.force_exit and time.monotonic() < deadline:
            batch = _drain(self._decoded)
            if batch:
                self._classify(batch)
            elif not any(t.is_alive() for t in decoders):
                break
            else:
                time.sleep(0.02)
        placer = next(t for t in self._threads if t.name == "placer")
        self._classified.put(None)
        placer.join(timeout=max(0.1, deadline - time.monotonic()))
        # 4. Make the journal durable and close it (and leave the index for the next start).
        self.placer.close(clean=not self._crashed and not placer.is_alive())
        self._reporter.close()
        log.info(
            "stopped",
            exit_status=1 if self._crashed else 0,
            **{k: self.metrics.total(k) for k in ("sorted", "review", "rejected")},
        )

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException:
                # Never a zombie that pings the watchdog: the whole service goes down, loudly.
                log.critical("worker_died", thread=name, exc_info=True)
                self._crashed = name
                self.should_exit.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- decode and classify -----------------------------------------------------------------

    def _decode(self, arrival: Arrival) -> Decoded:
        s = self.settings
        spec = self.classifier.manifest.preprocessing
        return read_group(arrival, spec, s.max_pixels, s.max_file_bytes)

    def _decode_loop(self) -> None:
        lower_thread_priority()
        while (arrival := self._arrivals.get()) is not _STOP:
            with self.workload.decoding():
                self._decoded.put(self._decode(arrival))

    def _decoding_more(self) -> bool:
        """Pictures on their way to the batch: queued for decoding, or being decoded."""
        return self.workload.decoders_busy or not self._arrivals.empty()

    def _classify(self, batch: list[Decoded]) -> None:
        """Main loop: run the model, then hand the batch to the placer (waits if it is busy)."""
        spec = self.classifier.manifest.preprocessing
        # decoded before a model switch that changed the preprocessing: decode again
        batch = [d if d.spec == spec else self._decode(d.arrival) for d in batch]
        try:
            classified = classify_batch(
                batch, self.classifier, self.library, self.settings.audit_rate
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

    # -- the model, settings reloads, health -------------------------------------------------

    def _switch_model_if_new(self) -> None:
        switched = self.slot.look()
        if switched is not None:
            self.metrics.model = switched.model
            self.placer.journal_later(switched)
            self._publish_state()

    def _reload(self) -> None:
        """SIGHUP: take the decision settings from config.toml again, and look at the model
        (a refused one too). Everything else (folders, threads, watching) is wired at start-up
        and needs a restart; the log says which."""
        self._reload_requested = False
        self.slot.look_now()
        if self._reload_settings is None:
            return
        try:
            fresh = self._reload_settings()
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc))  # keep running as configured
            return
        changed = sorted(
            key
            for key in Settings.model_fields
            if getattr(fresh, key) != getattr(self.settings, key)
        )
        needs_restart = [key for key in changed if key not in _LIVE_SETTINGS]
        if needs_restart:
            log.warning("reload_needs_restart", keys=needs_restart)
        if "audit_rate" in changed:
            self.settings = self.settings.model_copy(update={"audit_rate": fresh.audit_rate})
            log.info("audit_rate_changed", audit_rate=fresh.audit_rate)
        if "target_precision" in changed:
            target = fresh.target_precision
            self.settings = self.settings.model_copy(update={"target_precision": target})
            retargeted = self.slot.retarget(self.settings)
            if retargeted is not None:
                self.placer.journal_later(retargeted)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self._next_watchdog:
            return
        interval = self.notifier.watchdog_interval_s or 5.0
        self._next_watchdog = now + min(interval, 5.0)
        if self.workload.stalled(STALL_LIMIT_S):
            log.critical("stalled", waiting=self.workload.outstanding, seconds=STALL_LIMIT_S)
            self._crashed = "stalled"
            self.should_exit.set()
            return
        self.notifier.watchdog()
        self.notifier.status(self.status_line())
        self._publish_state()  # "sorting" and "idle" as they come
        release_free_memory()

    # -- what the service says about itself --------------------------------------------------

    def status_line(self) -> str:
        pause = self.workload.pause
        prefix = f"paused: {pause.reason}; " if pause is not None else ""
        return prefix + self.metrics.status_line()

    def _publish_state(self) -> None:
        """The daemon's state for `status` (and systemd's STATUS=), said when it changes."""
        pause, loss = self.workload.pause, self.library.journal_loss
        busy = "sorting" if self.workload.outstanding else "idle"
        extra = {"journal_lost": dataclasses.asdict(loss)} if loss is not None else {}
        self._reporter.report(
            f"paused: {pause.reason}" if pause else busy,
            self.slot.version,
            self.status_line(),
            extra,
        )


def _drain(source: queue.Queue) -> list:
    taken = []
    while True:
        try:
            taken.append(source.get_nowait())
        except queue.Empty:
            return taken
