"""The service lifecycle, all in one place: capture signals → start → main loop → stop.

Threads and queues (data flows one way):

    observer ─notices→ intake ─arrivals→ decoders ─decoded→ main loop ─classified→ placer
                  (stability, rescans)             (batch, classify, decide)   (place, journal)

The placer writes one batch while the main loop classifies the next: disk and CPU overlap.

Signal handlers only set flags. Queues are bounded: when they are full, intake waits and
the files simply stay in the inbox a little longer; nothing is dropped.
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
from sortbox.daemon.batch import next_batch
from sortbox.daemon.classify import Classifier, load_classifier, load_current
from sortbox.daemon.decode import Decoded, lower_thread_priority, read_and_prepare
from sortbox.daemon.index import DoneIndex
from sortbox.daemon.intake import Arrival, Identity, inside, is_ignored, walk_files
from sortbox.daemon.journal import Journal, ModelLoaded
from sortbox.daemon.manifest import ModelError, current_version, retarget
from sortbox.daemon.metrics import Metrics, write_textfile
from sortbox.daemon.notify import Notifier
from sortbox.daemon.place import remove_leftover_temps
from sortbox.daemon.settings import ConfigError, Settings
from sortbox.daemon.sorter import Classified, Sorter
from sortbox.daemon.stability import StabilityTracker
from sortbox.daemon.watch import Notice, resolve_watch_mode, start_observer
from watchdog.observers.api import BaseObserver

log = structlog.get_logger(__name__)

_STOP = None  # end-of-work marker on the arrivals queue
_MODEL_CHECK_INTERVAL_S = 1.0
_DRAIN_TIMEOUT_S = 5.0
_LIVE_SETTINGS = {"target_precision"}  # what SIGHUP applies without a restart


class Service:
    def __init__(
        self,
        settings: Settings,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        """`reload_settings` re-reads config.toml on SIGHUP; without it, SIGHUP only looks
        for a new model."""
        self.settings = settings
        self._reload_settings = reload_settings
        self._reload_requested = False
        self.notifier = notifier or Notifier()
        self.should_exit = threading.Event()
        self.force_exit = False
        self.metrics = Metrics()
        self.tracker = StabilityTracker(settings.quiet_period_s)
        self._notices: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self._arrivals: queue.Queue[Arrival | None] = queue.Queue(maxsize=settings.queue_size)
        # one batch ahead: decoded items hold their file's bytes until they are copied
        self._decoded: queue.Queue[Decoded] = queue.Queue(maxsize=settings.batch_size)
        self._classified: queue.Queue[Classified | None] = queue.Queue(maxsize=1)
        self._decoders: list[threading.Thread] = []
        self._placer: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._failed_version: str | None = None
        self._next_model_check = 0.0
        self._next_watchdog = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        self._capture_signals()
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()

    def _capture_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_exit_signal)
        signal.signal(signal.SIGINT, self._on_exit_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_exit_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit.is_set():  # a second Ctrl-C: don't wait for in-flight work
            self.force_exit = True
        self.should_exit.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True  # re-read config.toml ...
        self._next_model_check = 0.0  # ... and look at models_dir/current now

    def startup(self) -> None:
        s = self.settings
        for folder in (s.inbox, s.library, s.models_dir, s.journal.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.classifier = load_current(
            s.models_dir, s.inference_threads, s.inference_run_size, s.target_precision
        )
        removed = remove_leftover_temps(s.library)
        self.index = DoneIndex.load(s.journal, s.library)
        self.journal = Journal(s.journal)
        self.sorter = Sorter(s.library, self.index, self.journal, s.on_success)
        self.journal.append([ModelLoaded(model=self.classifier.version, reason="daemon started")])
        self.metrics.model = self.classifier.version

        self._placer = self._start_thread(self._placer_loop, "placer")
        self._decoders = [
            self._start_thread(self._decode_loop, f"decode-{n}") for n in range(s.decode_workers)
        ]
        self._start_thread(self._intake_loop, "intake")
        mode = resolve_watch_mode(s.watch_mode, s.inbox)
        self._observer = start_observer(s.inbox, mode, s.poll_interval_s, self._notices)

        log.info(
            "started",
            inbox=str(s.inbox),
            library=str(s.library),
            model=self.classifier.version,
            watch_mode=mode,
            known_contents=self.index.contents,
            temp_files_removed=removed,
        )
        self.notifier.ready(self.metrics.status_line())

    def main_loop(self) -> None:
        max_wait_s = self.settings.max_wait_ms / 1000
        while not self.should_exit.is_set():
            batch = next_batch(
                self._decoded, self.settings.batch_size, max_wait_s, self.should_exit
            )
            if batch:
                self._classify(batch)
            if self._reload_requested:
                self._reload()
            self._maybe_switch_model()
            self._heartbeat()

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.should_exit.set()
        # 1. No new notices: stop the observer.
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=_DRAIN_TIMEOUT_S)
        # 2. Inputs not yet decoded stay in the inbox for the next start; tell decoders to stop.
        self._discard_pending_arrivals()
        for _ in range(self.settings.decode_workers):
            self._arrivals.put(_STOP)
        # 3. Finish in-flight work within the timeout: classify what the decoders finish,
        #    and let the placer place and journal it.
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while not self.force_exit and time.monotonic() < deadline:
            batch = self._drain_decoded()
            if batch:
                self._classify(batch)
            elif not any(t.is_alive() for t in self._decoders):
                break
            else:
                time.sleep(0.02)
        if self._placer is not None:
            self._classified.put(None)
            self._placer.join(timeout=max(0.1, deadline - time.monotonic()))
        # 4. Make the journal durable and close it.
        self.journal.close()
        self._write_metrics()
        self.notifier.close()
        log.info("stopped", **{k: self.metrics.total(k) for k in ("sorted", "review", "rejected")})

    # -- the stages --------------------------------------------------------------------------

    def _start_thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _intake_loop(self) -> None:
        """Notices → stability → arrivals. Also the start-up scan and periodic rescans."""
        next_rescan = 0.0
        while not self.should_exit.is_set():
            now = time.monotonic()
            if now >= next_rescan:
                self._rescan()
                next_rescan = now + self.settings.rescan_interval_s
            due_in = self.tracker.next_due_in()
            timeout = min(0.5, next_rescan - now, due_in if due_in is not None else 0.5)
            try:
                self._notice(*self._notices.get(timeout=max(0.005, timeout)))
                while True:
                    self._notice(*self._notices.get_nowait())
            except queue.Empty:
                pass
            for path, identity in self.tracker.take_stable():
                self._admit(path, identity)
            self.metrics.queue_depth = self.tracker.waiting

    def _notice(self, kind: str, path: Path) -> None:
        if not self._wanted(path):
            return
        if kind == "opened":
            self.tracker.opened(path)
        elif kind == "closed":
            self.tracker.closed(path)
        else:
            self.tracker.touched(path)

    def _wanted(self, path: Path) -> bool:
        inbox = self.settings.inbox
        if not path.is_relative_to(inbox) or path == inbox:
            return False
        return not is_ignored(path.relative_to(inbox).as_posix(), self.settings.ignore)

    def _rescan(self) -> None:
        for path in walk_files(self.settings.inbox, self.settings.ignore):
            if not self.tracker.is_tracked(path):
                self.tracker.touched(path)

    def _admit(self, path: Path, identity: Identity) -> None:
        done = self.index.source(path, identity)
        if done is not None:
            if done.original_removed:
                # journaled as placed, but we stopped before removing the original
                path.unlink(missing_ok=True)
            self.tracker.finished(path)
            return
        if not inside(path, self.settings.inbox):
            log.warning("outside_inbox_skipped", path=str(path))
            self.tracker.finished(path)
            return
        arrival = Arrival(path, self.settings.inbox, identity, complete_at=time.monotonic())
        while not self.should_exit.is_set():
            try:
                self._arrivals.put(arrival, timeout=0.2)
                return
            except queue.Full:
                continue  # back-pressure: intake waits, the file waits in the inbox
        self.tracker.finished(path)

    def _decode(self, arrival: Arrival) -> Decoded:
        s = self.settings
        spec = self.classifier.manifest.preprocessing
        return read_and_prepare(arrival, spec, s.max_pixels, s.max_file_bytes)

    def _decode_loop(self) -> None:
        lower_thread_priority()
        while (arrival := self._arrivals.get()) is not _STOP:
            self._decoded.put(self._decode(arrival))

    def _classify(self, batch: list[Decoded]) -> None:
        """Main loop: run the model, then hand the batch to the placer (waits if it is busy)."""
        spec = self.classifier.manifest.preprocessing
        # decoded before a model switch that changed the preprocessing: decode again
        batch = [d if d.spec == spec else self._decode(d.arrival) for d in batch]
        try:
            classified = self.sorter.classify(batch, self.classifier)
        except Exception:
            # The service must not die on one batch; its files stay in the inbox for a rescan.
            log.exception("classification_failed", files=len(batch))
            for item in batch:
                self.tracker.finished(item.arrival.path)
            return
        self._classified.put(classified)

    def _placer_loop(self) -> None:
        while (classified := self._classified.get()) is not None:
            self._place(classified)

    def _place(self, classified: Classified) -> None:
        started = time.monotonic()
        s = self.settings
        try:
            for event in self.journal.take_foreign():  # `sortbox undo` / `sort` running beside us
                self.index.record(event)
            result = self.sorter.place(classified)
        except Exception:
            # A full disk while journaling, say. Copies already made have no journal line yet:
            # the next attempt adopts them. The inputs stay in the inbox.
            log.exception("batch_failed", files=len(classified.items))
            self.index = DoneIndex.load(s.journal, s.library)
            self.sorter = Sorter(s.library, self.index, self.journal, s.on_success)
            result = None
        finally:
            for item in classified.items:
                self.tracker.finished(item.arrival.path)
        if result is None:
            return
        self.metrics.observe_batch(result.events, time.monotonic() - started)
        for event in result.events:
            log.info(
                event.event,
                src=event.src,
                dest=event.dest,
                label=event.label,
                confidence=event.confidence,
                reason=event.reason,
            )
        self._write_metrics()

    def _drain_decoded(self) -> list[Decoded]:
        batch = []
        while True:
            try:
                batch.append(self._decoded.get_nowait())
            except queue.Empty:
                return batch

    def _discard_pending_arrivals(self) -> None:
        while True:
            try:
                self._arrivals.get_nowait()
            except queue.Empty:
                return

    # -- model switching and health ----------------------------------------------------------

    def _maybe_switch_model(self) -> None:
        now = time.monotonic()
        if now < self._next_model_check:
            return
        self._next_model_check = now + _MODEL_CHECK_INTERVAL_S
        version = current_version(self.settings.models_dir)
        if version is None or version in (self.classifier.version, self._failed_version):
            return
        try:
            new = load_classifier(
                self.settings.models_dir / version,
                self.settings.inference_threads,
                self.settings.inference_run_size,
                self.settings.target_precision,
            )
        except ModelError as exc:
            self._failed_version = version
            log.error("model_refused", version=version, error=str(exc))
            return
        self._switch_to(new, f"switched from {self.classifier.version}")

    def _switch_to(self, new: Classifier, reason: str) -> None:
        old = self.classifier.version
        self.classifier = new
        self.metrics.model = new.version
        self.journal.append([ModelLoaded(model=new.version, reason=reason)])
        log.info("model_switched", old=old, new=new.version, reason=reason)

    def _reload(self) -> None:
        """SIGHUP: take the decision settings from config.toml again. Everything else (folders,
        threads, watching) is wired at start-up and needs a restart; the log says which."""
        self._reload_requested = False
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
        if "target_precision" in changed:
            target = fresh.target_precision
            self.settings = self.settings.model_copy(update={"target_precision": target})
            manifest = retarget(self.classifier.manifest, target)
            self._switch_to(
                dataclasses.replace(self.classifier, manifest=manifest),
                f"thresholds re-derived for target precision {target}",
            )

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self._next_watchdog:
            return
        interval = self.notifier.watchdog_interval_s or 5.0
        self._next_watchdog = now + min(interval, 5.0)
        self.notifier.watchdog()
        self.notifier.status(self.metrics.status_line())

    def _write_metrics(self) -> None:
        path = self.settings.metrics_textfile
        if path is None:
            return
        try:
            write_textfile(path, self.metrics.render())
        except OSError as exc:
            log.warning("metrics_not_written", path=str(path), error=str(exc))
