"""The service lifecycle, all in one place: capture signals → start → main loop → drain → stop.

`sortbox run` and `sortbox sort` are both a `Service`; only the source of inputs differs:
the watched inbox, or a fixed list of files (then it stops when every one is handled).

Threads and queues (data flows one way):

    intake ─arrivals→ decoders ─decoded→ main loop ─classified→ placer
    (watch + stability,    (read, hash,     (batch, classify,       (place_batch:
     or the given files)    decode)          decide)                 copy, journal)

The placer writes one batch while the main loop classifies the next: disk and CPU overlap.
Each piece of shared state has one owner: the model is the main loop's, the library (index,
journal) the placer's, the stability tracker intake's; counters shared across threads sit
behind `_lock`.

Every failure is a per-file outcome or a loud exit, never a silent stall: a worker thread that
dies takes the service down with exit status 1 (systemd restarts it), and the watchdog is only
pinged while work moves or there is none.
"""

from __future__ import annotations

import dataclasses
import io
import os
import queue
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import numpy as np
import structlog
from PIL import Image
from sortbox.daemon.batch import next_batch
from sortbox.daemon.classify import Classifier, load_classifier, load_current
from sortbox.daemon.decode import Decoded, lower_thread_priority, read_group
from sortbox.daemon.group import Grouper, group_all
from sortbox.daemon.heap import limit_heaps, release_free_memory
from sortbox.daemon.index import DoneIndex
from sortbox.daemon.intake import (
    Arrival,
    Identity,
    identity_of,
    inside,
    is_ignored,
    refreshed,
    walk_files,
)
from sortbox.daemon.journal import Event, Journal, ModelLoaded, Placement
from sortbox.daemon.manifest import current_version, retarget
from sortbox.daemon.metrics import Metrics, write_textfile
from sortbox.daemon.notify import Notifier, StateFile, state_file_of
from sortbox.daemon.pipeline import (
    Classified,
    JournalLoss,
    Library,
    Placed,
    classify_batch,
    is_disk_full,
    place_batch,
    remove_crash_leftovers,
)
from sortbox.daemon.preprocess import prepare
from sortbox.daemon.settings import ConfigError, Settings
from sortbox.daemon.stability import StabilityTracker
from sortbox.daemon.watch import Notice, OverflowNotice, resolve_watch_mode, start_observer
from watchdog.observers.api import BaseObserver

log = structlog.get_logger(__name__)

_STOP = None  # end-of-work marker on the arrivals queue
_MODEL_CHECK_INTERVAL_S = 1.0
_INBOX_CHECK_INTERVAL_S = 1.0
_JOURNAL_CHECK_INTERVAL_S = 1.0  # the placer, when idle, looks at its journal this often
_DRAIN_TIMEOUT_S = 5.0
_OVERFLOW_RESCAN_DELAY_S = 1.0
# A file some program keeps open this long is named in the log (once): it waits, not silently
HELD_OPEN_WARNING_S = 60.0
_LIVE_SETTINGS = {"target_precision", "audit_rate"}  # what SIGHUP applies without a restart
# Work waiting and no batch finished for this long: something is stuck. Stop pinging the
# watchdog and exit 1 rather than look healthy while doing nothing.
STALL_LIMIT_S = 120.0
PAUSE_FIRST_S, PAUSE_MAX_S = 1.0, 60.0  # back-off while the library cannot be written
MAX_ATTEMPTS = 5  # `sort`: a file that keeps changing is left alone after this many tries


def _files_identity(folder: Path) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) of every file in a model version's folder: a model refused and then
    fixed in place (its model.onnx copied over) is a different model to look at."""
    try:
        files = sorted(os.scandir(folder), key=lambda entry: entry.name)
        return tuple(
            (st.st_ino, st.st_size, st.st_mtime_ns) for st in (entry.stat() for entry in files)
        )
    except OSError:
        return ()


@dataclasses.dataclass
class Pause:
    reason: str  # "library disk full"
    backoff_s: float
    until: float  # monotonic


class Service:
    def __init__(
        self,
        settings: Settings,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        *,
        inputs: list[Arrival] | None = None,
        dry_run: bool = False,
        on_batch: Callable[[list[Placement], int], None] | None = None,
    ) -> None:
        """`inputs=None` watches the inbox until stopped; a list sorts those files and stops.
        `reload_settings` re-reads config.toml on SIGHUP. `on_batch(events, finished)` is
        told after every placed batch (the progress bar of `sortbox sort`)."""
        self.settings = settings
        self.watching = inputs is None
        self._inputs = inputs
        self._dry_run = dry_run
        self._on_batch = on_batch
        self._reload_settings = reload_settings
        self._reload_requested = False
        self.notifier = notifier or Notifier()
        self.should_exit = threading.Event()
        self.force_exit = False
        self.metrics = Metrics()
        self.unfinished: list[Path] = []  # `sort`: inputs given up on (kept changing)
        self.failed: list[Path] = []  # `sort`: inputs an unexpected error stopped (logged)
        self.done = False  # `sort`: every input was handled
        self._crashed: str | None = None
        self._arrivals: queue.Queue[Arrival | None] = queue.Queue(maxsize=settings.queue_size)
        # one batch ahead: decoded items hold their file's bytes until they are copied
        self._decoded: queue.Queue[Decoded] = queue.Queue(maxsize=settings.batch_size)
        self._classified: queue.Queue[Classified | None] = queue.Queue(maxsize=1)
        self._notices: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._observer: BaseObserver | None = None
        self._watched_inbox: tuple[int, int] | None = None
        self._inbox_gone = False  # the observer saw the inbox folder itself go
        self._overflow_notice: OverflowNotice | None = None
        self._rescan_soon = False  # the kernel dropped events: rescan the inbox now
        self._lock = threading.Lock()  # guards the counters below
        self._outstanding = 0  # admitted, not yet placed or given up
        self._decoding = 0  # arrivals a decoder has taken and not yet handed on
        self._again: deque[Arrival] = deque()  # `sort`: to be admitted again
        self._attempts: Counter[Path] = Counter()
        self._listed = False  # `sort`: every given input was admitted once
        self._pause: Pause | None = None
        self._last_progress = time.monotonic()
        self._unjournaled: list[Event] = []
        # the version last refused, and its files as they were: refused again only as such
        self._refused: tuple[str, tuple[tuple[int, int, int], ...]] | None = None
        self._next_model_check = 0.0
        self._next_watchdog = 0.0
        self._loss_published: JournalLoss | None = None

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
        self._reload_requested = True  # re-read config.toml ...
        self._next_model_check = 0.0  # ... and look at models_dir/current now

    def startup(self) -> None:
        s = self.settings
        limit_heaps()  # before ONNX Runtime and our workers start their threads
        if not self._dry_run:
            for folder in (s.library, s.models_dir, s.journal.parent):
                folder.mkdir(parents=True, exist_ok=True)
        # first: a second daemon on this library stops here, before it loads or touches a thing
        self._state = StateFile(state_file_of(s.library)) if self.watching else None
        self.classifier = load_current(
            s.models_dir, s.inference_threads, s.inference_run_size, s.target_precision
        )
        removed = 0 if self._dry_run else remove_crash_leftovers(s.library)
        journal = None if self._dry_run else Journal(s.journal)
        self.library = Library(
            s.library,
            DoneIndex.load(s.journal, s.library),
            journal,
            remove_originals=self.watching and s.on_success == "delete",
            inbox=s.inbox,
        )
        if not self._dry_run:
            self.library.record_unjournaled_copies()
        self._warm_up()
        self.metrics.model = self.classifier.version

        self._start_thread(self._placer_loop, "placer")
        for n in range(s.decode_workers):
            self._start_thread(self._decode_loop, f"decode-{n}")
        if self.watching:
            s.inbox.mkdir(parents=True, exist_ok=True)
            self._journal_later(ModelLoaded(model=self.classifier.version, reason="daemon started"))
            mode = resolve_watch_mode(s.watch_mode, s.inbox)
            # Polling only sees what changed between two polls: a shorter quiet period means
            # nothing there, and a file must look the same at two checks, not one.
            quiet = max(s.quiet_period_s, s.poll_interval_s) if mode == "poll" else s.quiet_period_s
            self.tracker = StabilityTracker(quiet, confirmations=2 if mode == "poll" else 1)
            self.grouper = Grouper(s.pair_wait_s)
            self._watch_mode = mode
            self._watch_inbox()
            self._start_thread(self._intake_loop, "intake")
            log.info(
                "started",
                inbox=str(s.inbox),
                library=str(s.library),
                model=self.classifier.version,
                watch_mode=mode,
                known_contents=self.library.index.contents,
                temp_files_removed=removed,
            )
        else:
            self._start_thread(self._feed_loop, "intake")
        self.notifier.ready(self.status_line())
        self._publish_state()

    def _warm_up(self) -> None:
        """Pay before READY what the first picture would: Pillow's plugin imports on the first
        decode (about 60 ms) and ONNX Runtime's first allocations. Only a saving: a failure
        here is met again, and handled, on the first real batch."""
        spec = self.classifier.manifest.preprocessing
        sample = io.BytesIO()
        try:
            Image.new("RGB", (spec.crop, spec.crop)).save(sample, "JPEG")
            pixels = prepare(sample.getvalue(), spec, self.settings.max_pixels, "warm-up.jpg")
            self.classifier.logits(pixels[np.newaxis])
        except Exception:
            log.warning("warm_up_failed", exc_info=True)

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
            self._maybe_switch_model()
            self._heartbeat()
            if not self.watching and self._all_done():
                self.done = True
                break

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.should_exit.set()
        # 1. No new notices: stop the observer.
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=_DRAIN_TIMEOUT_S)
        if self._overflow_notice is not None:
            self._overflow_notice.detach()
        # 2. Inputs not yet decoded stay where they are for the next start; stop the decoders.
        self._discard_pending_arrivals()
        for _ in range(self.settings.decode_workers):
            self._arrivals.put(_STOP)
        # 3. Finish in-flight work within the timeout: classify what the decoders finish,
        #    and let the placer place and journal it.
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        decoders = [t for t in self._threads if t.name.startswith("decode")]
        while not self.force_exit and time.monotonic() < deadline:
            batch = self._drain_decoded()
            if batch:
                self._classify(batch)
            elif not any(t.is_alive() for t in decoders):
                break
            else:
                time.sleep(0.02)
        placer = next(t for t in self._threads if t.name == "placer")
        self._classified.put(None)
        placer.join(timeout=max(0.1, deadline - time.monotonic()))
        # 4. Make the journal durable and close it.
        if self._unjournaled:
            self._journal_later()
        if not self._crashed and not placer.is_alive():
            self.library.save_index_snapshot()
        if self.library.journal is not None:
            self.library.journal.close()
        if self.watching:
            self._write_metrics()
        if self._state is not None:
            self._state.close({"state": "stopped"})
        self.notifier.close()
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

    # -- intake: the watched inbox -----------------------------------------------------------

    def _intake_loop(self) -> None:
        """Notices → stability → arrivals. Also rescans, and a vanished inbox comes back."""
        next_rescan = next_inbox_check = 0.0
        while not self.should_exit.is_set():
            now = time.monotonic()
            if now >= next_inbox_check:
                if self._inbox_replaced():
                    self._watch_inbox()
                    next_rescan = 0.0
                self._name_files_held_open()
                next_inbox_check = now + _INBOX_CHECK_INTERVAL_S
            if self._rescan_soon:
                self._rescan_soon = False
                # a second after the overflow: watchdog has rebuilt its watches by then
                next_rescan = min(next_rescan, now + _OVERFLOW_RESCAN_DELAY_S)
            if now >= next_rescan:
                self._rescan()
                next_rescan = now + self.settings.rescan_interval_s
            waits = (self.tracker.next_due_in(), self.grouper.next_due_in())
            timeout = min(0.5, next_rescan - now, *(w for w in waits if w is not None))
            try:
                self._notice(*self._notices.get(timeout=max(0.005, timeout)))
                while True:
                    self._notice(*self._notices.get_nowait())
            except queue.Empty:
                pass
            for path, identity in self.tracker.take_stable():
                arrival = self._consider(path, identity, self.settings.inbox)
                if arrival is not None:
                    self.grouper.add(arrival)
                else:
                    self.grouper.forget(path)  # nothing to wait for
            for arrival in self.grouper.take_ready():
                self._admit(arrival)
            self.metrics.queue_depth = self.tracker.waiting + self.grouper.holding

    def _name_files_held_open(self) -> None:
        # once a second, with the inbox check: not at every event, through every waiting file
        for path in self.tracker.held_open(HELD_OPEN_WARNING_S):
            log.warning(
                "still_open",
                path=str(path),
                waiting_s=HELD_OPEN_WARNING_S,
                hint="a program still has it open; sortbox takes it once it is closed",
            )

    def _watch_inbox(self) -> None:
        inbox = self.settings.inbox
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=_DRAIN_TIMEOUT_S)
            log.warning("inbox_rewatched", inbox=str(inbox))
        inbox.mkdir(parents=True, exist_ok=True)
        st = os.stat(inbox)
        self._watched_inbox = (st.st_dev, st.st_ino)
        self._observer = start_observer(
            inbox, self._watch_mode, self.settings.poll_interval_s, self._notices
        )
        if self._overflow_notice is None:
            self._overflow_notice = OverflowNotice(inbox, self._notices)
            self._overflow_notice.attach()

    def _inbox_replaced(self) -> bool:
        """The inbox folder was deleted (and maybe recreated): its watch sees nothing now."""
        if self._inbox_gone:
            self._inbox_gone = False
            return True
        try:
            st = os.stat(self.settings.inbox)
        except FileNotFoundError:
            return True
        observer = self._observer
        watching = observer is not None and all(e.is_alive() for e in observer.emitters)
        return not watching or (st.st_dev, st.st_ino) != self._watched_inbox

    def _notice(self, kind: str, path: Path) -> None:
        if kind == "gone":
            self._inbox_gone = True
            return
        if kind == "overflowed":
            log.warning(
                "events_lost", why="inotify queue overflowed", action="rescanning the inbox"
            )
            self.tracker.events_lost()
            self._rescan_soon = True
            return
        if not self._wanted(path):
            return
        self.grouper.noticed(path)  # a picture that becomes complete first waits for it
        if kind == "renamed":
            self.tracker.renamed(path)
        elif kind == "created":
            self.tracker.created(path)
        elif kind == "opened":
            self.tracker.opened(path)
        elif kind in ("written", "closed"):
            self.tracker.closed(path, wrote=kind == "written")
        else:
            self.tracker.touched(path)

    def _wanted(self, path: Path) -> bool:
        inbox = self.settings.inbox
        if not path.is_relative_to(inbox) or path == inbox:
            return False
        return not is_ignored(path.relative_to(inbox).as_posix(), self.settings.ignore)

    def _rescan(self) -> None:
        """Find what no event told us about. A file the journal already has, unchanged, is
        passed over here: an inbox kept full (on_success = "keep") is not queued again and
        again, so memory and CPU stay flat however many files it holds."""
        index = self.library.index
        for path in walk_files(self.settings.inbox, self.settings.ignore):
            if self.tracker.is_tracked(path):
                continue
            identity = identity_of(path)
            if identity is None:
                continue
            done = index.source(path, identity)
            if done is not None and not (done.original_removed and self.library.remove_originals):
                continue  # (an original still due for removal goes on, to _consider)
            self.grouper.noticed(path)
            self.tracker.touched(path)

    # -- intake: the given files (`sortbox sort`) ----------------------------------------------

    def _feed_loop(self) -> None:
        assert self._inputs is not None
        fresh = [self._consider(a.path, a.identity, a.root) for a in self._inputs]
        for arrival in group_all([a for a in fresh if a is not None]):
            if self.should_exit.is_set():
                return
            self._admit(arrival)
        self._listed = True
        while not self.should_exit.is_set():
            with self._lock:
                arrival = self._again.popleft() if self._again else None
                if arrival is not None:
                    self._outstanding += 1  # before the queue: never "all done" in between
            if arrival is None:
                time.sleep(0.05)
                continue
            self._wait_while_paused()
            self._enqueue(arrival, counted=True)

    def _all_done(self) -> bool:
        with self._lock:
            return self._listed and self._outstanding == 0 and not self._again

    # -- intake: both ------------------------------------------------------------------------

    def _consider(self, path: Path, identity: Identity, root: Path) -> Arrival | None:
        """The file as an arrival to sort, or None: done before, or outside its folder."""
        done = self.library.index.source(path, identity)
        if done is not None:
            if done.original_removed and self.library.remove_originals:
                # journaled as placed, but we stopped before removing the original
                self.library.remove_original(Arrival(path, root, identity), identity)
            self._finish(Arrival(path, root, identity), counted=False)
            if self._on_batch is not None:
                self._on_batch([], 1)  # `sort`: done before, counts towards the progress bar
            return None
        if not inside(path, root):
            log.warning("outside_inbox_skipped", path=str(path))
            self._finish(Arrival(path, root, identity), counted=False)
            return None
        return Arrival(path, root, identity, complete_at=time.monotonic())

    def _admit(self, arrival: Arrival) -> None:
        self._wait_while_paused()
        self._enqueue(arrival, counted=False)

    def _enqueue(self, arrival: Arrival, counted: bool) -> None:
        if not counted:
            with self._lock:
                self._outstanding += 1
        while not self.should_exit.is_set():
            try:
                self._arrivals.put(arrival, timeout=0.2)
                return
            except queue.Full:
                continue  # back-pressure: intake waits, the file waits in the inbox
        self._finish(arrival)

    def _wait_while_paused(self) -> None:
        while not self.should_exit.is_set():
            with self._lock:
                pause = self._pause
            if pause is None or time.monotonic() >= pause.until:
                return
            time.sleep(min(0.2, pause.until - time.monotonic()))

    def _finish(self, arrival: Arrival, counted: bool = True) -> None:
        """Done with this input (and its companions) for now: placed, or left where it is for
        a later look."""
        if counted:
            with self._lock:
                self._outstanding -= 1
        if self.watching:
            for member in arrival.members:
                self.tracker.finished(member.path)

    def _failed(self, item: Decoded) -> None:
        """An input left where it is by an unexpected error: the daemon's next rescan tries
        it again; `sort` names it and exits 1."""
        if not self.watching:
            self.failed += [item.arrival.path, *(c.arrival.path for c in item.companions)]

    def _retry(self, arrival: Arrival) -> None:
        """Not handled this time (changed while read, library not writable): again later."""
        if self.watching:
            for member in arrival.members:
                self.tracker.finished(member.path)
                self.tracker.touched(member.path)  # its quiet period again, then it comes back
        again = None if self.watching else refreshed(arrival)  # `sort`: as the file is now
        with self._lock:
            if not self.watching:
                self._attempts[arrival.path] += 1
                if again is None:
                    log.warning("gone_or_outside_not_sorted", path=str(arrival.path))
                    self.unfinished.append(arrival.path)
                elif self._attempts[arrival.path] >= MAX_ATTEMPTS and self._pause is None:
                    log.warning("kept_changing_not_sorted", path=str(arrival.path))
                    self.unfinished.append(arrival.path)
                else:
                    self._again.append(again)
            self._outstanding -= 1

    def _handle_alone(self, companion: Arrival) -> None:
        """A RAW file or sidecar whose picture was not classified: it comes back on its own."""
        if self.watching:
            self.tracker.touched(companion.path)
        else:
            with self._lock:
                self._again.append(companion)

    # -- decode, classify, place -------------------------------------------------------------

    def _decode(self, arrival: Arrival) -> Decoded:
        s = self.settings
        spec = self.classifier.manifest.preprocessing
        return read_group(arrival, spec, s.max_pixels, s.max_file_bytes)

    def _decode_loop(self) -> None:
        lower_thread_priority()
        while (arrival := self._arrivals.get()) is not _STOP:
            with self._lock:
                self._decoding += 1
            try:
                self._decoded.put(self._decode(arrival))
            finally:
                with self._lock:
                    self._decoding -= 1

    def _decoding_more(self) -> bool:
        """Pictures on their way to the batch: queued for decoding, or being decoded."""
        return self._decoding > 0 or not self._arrivals.empty()

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
                self._failed(item)
                self._finish(item.arrival)
            return
        self._classified.put(classified)

    def _placer_loop(self) -> None:
        while True:
            try:
                classified = self._classified.get(timeout=_JOURNAL_CHECK_INTERVAL_S)
            except queue.Empty:
                self._look_at_journal()  # idle: a journal deleted now is said now
                continue
            if classified is None:
                return
            self._place(classified)

    def _look_at_journal(self) -> None:
        try:
            self.library.look_at_journal()
        except OSError as exc:  # a full disk: said, and tried again at the next look
            log.error("journal_write_failed", error=str(exc))
        if self.library.journal_loss is not self._loss_published:
            self._publish_state()

    def _place(self, classified: Classified) -> None:
        started = time.monotonic()
        placed = self._place_isolated(classified)
        if placed.failure is not None:
            self._pause_for(placed.failure, placed.failed_writing)
        elif placed.events:
            self._resume()
        for item in placed.retry:
            self._retry(item.arrival)
        retried = {id(item) for item in placed.retry}
        for item in classified.items:
            if id(item) not in retried:
                self._finish(item.arrival)
        for companion in placed.alone:
            self._handle_alone(companion.arrival)
        self._last_progress = time.monotonic()
        if self._unjournaled:
            self._journal_later()
        if self.library.journal_loss is not self._loss_published:
            self._publish_state()  # `status` says at once that the journal lost lines
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
        if self._on_batch is not None:
            handled = [i for i in classified.items if id(i) not in retried]
            members = sum(1 + len(i.companions) for i in handled) - len(placed.alone)
            self._on_batch(placed.events, members)
        if self.watching:
            self._write_metrics()

    def _place_isolated(self, classified: Classified) -> Placed:
        """place_batch, with an unexpected error confined to the file that causes it."""
        try:
            return place_batch(classified, self.library)
        except Exception:
            if len(classified.items) == 1:
                # left in the inbox and logged; a restart or the next rescan tries it again
                log.exception("placement_failed", path=str(classified.items[0].arrival.path))
                self._failed(classified.items[0])
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
        reason = f"{where} {what}"
        with self._lock:
            before = self._pause
            backoff = PAUSE_FIRST_S if before is None else min(before.backoff_s * 2, PAUSE_MAX_S)
            self._pause = Pause(reason, backoff, time.monotonic() + backoff)
        if before is None or before.reason != reason:
            log.error("paused", reason=reason, retry_in_s=backoff, error=str(failure))
            self._publish_state()

    def _resume(self) -> None:
        with self._lock:
            before, self._pause = self._pause, None
        if before is not None:
            log.info("resumed", after=before.reason)
            self._publish_state()

    def status_line(self) -> str:
        pause = self._pause
        prefix = f"paused: {pause.reason}; " if pause is not None else ""
        return prefix + self.metrics.status_line()

    def _publish_state(self) -> None:
        self.notifier.status(self.status_line())
        loss = self._loss_published = self.library.journal_loss
        if self._state is not None:
            pause = self._pause
            state = {
                "state": f"paused: {pause.reason}" if pause else "sorting",
                "model": self.classifier.version,
                "updated": time.time(),
            }
            if loss is not None:
                state["journal_lost"] = dataclasses.asdict(loss)
            self._state.write(state)

    # -- model switching and health ----------------------------------------------------------

    def _maybe_switch_model(self) -> None:
        now = time.monotonic()
        if now < self._next_model_check:
            return
        self._next_model_check = now + _MODEL_CHECK_INTERVAL_S
        version = current_version(self.settings.models_dir)
        if version is None or version == self.classifier.version:
            return
        files = _files_identity(self.settings.models_dir / version)
        if self._refused == (version, files):
            return  # refused as it is now; fixed in place (or SIGHUP), it is looked at again
        try:
            new = load_classifier(
                self.settings.models_dir / version,
                self.settings.inference_threads,
                self.settings.inference_run_size,
                self.settings.target_precision,
            )
        except Exception as exc:
            # whatever shape the breakage takes, the model we have keeps working
            self._refused = (version, files)
            log.error("model_refused", version=version, error=f"{type(exc).__name__}: {exc}")
            return
        self._switch_to(new, f"switched from {self.classifier.version}")

    def _switch_to(self, new: Classifier, reason: str) -> None:
        old = self.classifier.version
        self.classifier = new
        self.metrics.model = new.version
        self._journal_later(ModelLoaded(model=new.version, reason=reason))
        log.info("model_switched", old=old, new=new.version, reason=reason)

    def _journal_later(self, event: Event | None = None) -> None:
        """Journal a model line now if the disk lets us, else with the next batch."""
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

    def _reload(self) -> None:
        """SIGHUP: take the decision settings from config.toml again. Everything else (folders,
        threads, watching) is wired at start-up and needs a restart; the log says which."""
        self._reload_requested = False
        self._refused = None  # "reload re-checks the model": a refused one is tried again
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
            manifest = retarget(self.classifier.manifest, target)
            self._switch_to(
                dataclasses.replace(self.classifier, manifest=manifest),
                f"thresholds re-derived for target precision {target}",
            )

    def _stalled(self) -> bool:
        with self._lock:
            waiting = self._outstanding > 0 and self._pause is None
        return waiting and time.monotonic() - self._last_progress > STALL_LIMIT_S

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self._next_watchdog:
            return
        interval = self.notifier.watchdog_interval_s or 5.0
        self._next_watchdog = now + min(interval, 5.0)
        if not self._outstanding:
            self._last_progress = now  # idle is progress
        if self._stalled():
            log.critical("stalled", waiting=self._outstanding, seconds=STALL_LIMIT_S)
            self._crashed = "stalled"
            self.should_exit.set()
            return
        self.notifier.watchdog()
        self.notifier.status(self.status_line())
        release_free_memory()

    def _write_metrics(self) -> None:
        path = self.settings.metrics_textfile
        if path is None:
            return
        try:
            write_textfile(path, self.metrics.render())
        except OSError as exc:
            log.warning("metrics_not_written", path=str(path), error=str(exc))

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
