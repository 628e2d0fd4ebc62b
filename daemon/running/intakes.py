"""Where the service's inputs come from: the watched inbox (`WatchIntake`, `sortbox run`) or the
files given on the command line (`ListIntake`, `sortbox sort`). Both hand arrivals to the
decoders' queue and hear back, for each, how it ended: placed (`finished`), to be tried again
(`retry`), a companion that must come on its own (`alone`), or stopped by an unexpected error
(`failed`). Each owns its own state; the service never asks which one it has.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

import structlog
from sortbox.daemon.intake.files import (
    Arrival,
    Identity,
    identity_of,
    is_ignored,
    refreshed,
    walk_files,
)
from sortbox.daemon.intake.group import Grouper, group_all
from sortbox.daemon.intake.stability import StabilityTracker
from sortbox.daemon.intake.watch import Notice, OverflowNotice, resolve_watch_mode, start_observer
from sortbox.daemon.running.metrics import Metrics
from sortbox.daemon.running.workload import Workload
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.journal import DAEMON_STARTED, Event, ModelLoaded, Placement
from sortbox.daemon.sorting.library import Library
from sortbox.daemon.sorting.read import Decoded
from sortbox.daemon.sorting.stages import passed_over
from watchdog.observers.api import BaseObserver

log = structlog.get_logger(__name__)

_INBOX_CHECK_INTERVAL_S = 1.0
_OVERFLOW_RESCAN_DELAY_S = 1.0
_OBSERVER_STOP_TIMEOUT_S = 5.0
# A file some program keeps open this long is named in the log (once): it waits, not silently
HELD_OPEN_WARNING_S = 60.0
MAX_ATTEMPTS = 5  # `sort`: a file that keeps changing is left alone after this many tries

StartThread = Callable[[Callable[[], None], str], threading.Thread]
OnBatch = Callable[[list[Placement], int], None]


class Intake(Protocol):
    # the watched inbox runs until stopped, keeps a state file and metrics, and takes the
    # library's lock; `sort`'s list of files does none of that
    long_running: ClassVar[bool]
    # how long the main loop waits for a picture before it looks around: `sort` ends when
    # the placer has placed the last batch, so it looks often
    idle_poll_s: ClassVar[float]
    unfinished: list[Path]  # `sort`: given up on (kept changing, gone, outside their folder)
    failed_paths: list[Path]  # `sort`: stopped by an unexpected error (logged)

    def announce(self, model: str, journal: Callable[[Event], None]) -> None:
        """Say that sorting has started, with this model."""

    def start(self, start_thread: StartThread) -> None: ...

    def finished(self, arrival: Arrival) -> None:
        """Done with this input (and its companions) for now: placed, or left for later."""

    def retry(self, arrival: Arrival, awaiting_rest: bool = False) -> None:
        """Not handled this time (changed while read, library not writable): again later.
        `awaiting_rest`: it could not be decoded and may still grow, so it waits for the rest
        of it (its rest_wait_s)."""

    def alone(self, companion: Arrival) -> None:
        """A RAW file or sidecar whose picture was not classified: it comes on its own."""

    def failed(self, item: Decoded) -> None:
        """Left where it is by an unexpected error (logged where it happened)."""

    def all_done(self) -> bool:
        """Every input handled (`sort`); a watched inbox is never done."""

    def stop(self) -> None:
        """No new arrivals from here on."""


class _Admission:
    """What both intakes do with a file they found: pass over what is done, or outside its
    folder; queue the rest, waiting while placing is paused and while the queue is full."""

    def __init__(
        self,
        settings: Settings,
        library: Library,
        arrivals: queue.Queue[Arrival | None],
        workload: Workload,
        should_exit: threading.Event,
        on_batch: OnBatch | None,
    ) -> None:
        self.settings = settings
        self.library = library
        self.arrivals = arrivals
        self.workload = workload
        self.should_exit = should_exit
        self.on_batch = on_batch

    def consider(
        self,
        path: Path,
        identity: Identity,
        root: Path,
        again: bool = False,
        rest_wait_s: float = 0.0,
    ) -> Arrival | None:
        """The file as an arrival to sort, or None: done before (unless it is to be decided
        `again`: `sort --force`), or outside its folder (stages.passed_over). `rest_wait_s`:
        how long it waits for the rest of it if it cannot be decoded (Arrival.rest_wait_s)."""
        arrival = Arrival(
            path,
            root,
            identity,
            complete_at=time.monotonic(),
            decide_again=again,
            rest_wait_s=rest_wait_s,
        )
        why_not = passed_over(arrival, self.library)
        if why_not is None:
            return arrival
        self.forget(arrival)
        if why_not == "done" and self.on_batch is not None:
            self.on_batch([], 1)  # `sort`: done before, counts towards the progress bar
        return None

    def admit(self, arrival: Arrival) -> None:
        self.workload.wait_while_paused(self.should_exit)
        self.workload.admitted()
        self.enqueue(arrival)

    def enqueue(self, arrival: Arrival) -> None:
        """Onto the decoders' queue; the arrival is already counted as admitted."""
        while not self.should_exit.is_set():
            try:
                self.arrivals.put(arrival, timeout=0.2)
                return
            except queue.Full:
                continue  # back-pressure: intake waits, the file waits in the inbox
        self.workload.settled()
        self.forget(arrival)

    def forget(self, arrival: Arrival) -> None:
        """Not admitted after all (done, outside, stopping): nothing to settle."""


class WatchIntake(_Admission):
    """The inbox, watched: notices → stability → grouping → arrivals. Also rescans, names files
    held open, and watches a vanished inbox again. Its thread owns the tracker and grouper."""

    long_running: ClassVar[bool] = True
    idle_poll_s: ClassVar[float] = 0.2

    def __init__(
        self,
        settings: Settings,
        library: Library,
        arrivals: queue.Queue[Arrival | None],
        workload: Workload,
        should_exit: threading.Event,
        metrics: Metrics,
    ) -> None:
        super().__init__(settings, library, arrivals, workload, should_exit, on_batch=None)
        # where on_success = "move" puts done originals: never sorted, whatever its name
        self._done_folder = settings.done_folder + "/"
        self.metrics = metrics
        self.mode = resolve_watch_mode(settings.watch_mode, settings.inbox)
        # Polling only sees what changed between two polls: a shorter quiet period means
        # nothing there, and a file must look the same at two checks, not one.
        poll = self.mode == "poll"
        quiet = max(settings.quiet_period_s, settings.poll_interval_s) if poll else None
        self.tracker = StabilityTracker(
            quiet or settings.quiet_period_s, confirmations=2 if poll else 1
        )
        self.grouper = Grouper(settings.pair_wait_s)
        self.unfinished: list[Path] = []  # never: the watched inbox tries again
        self.failed_paths: list[Path] = []  # never: left in the inbox for the next rescan
        self._notices: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        self._watched_inbox: tuple[int, int] | None = None
        self._inbox_gone = False  # the observer saw the inbox folder itself go
        self._overflow_notice: OverflowNotice | None = None
        self._rescan_soon = False  # the kernel dropped events: rescan the inbox now

    # -- the lifecycle the service drives ----------------------------------------------------

    def announce(self, model: str, journal: Callable[[Event], None]) -> None:
        target = self.settings.target_precision
        journal(ModelLoaded(model=model, reason=DAEMON_STARTED, target_precision=target))
        log.info(
            "started",
            inbox=str(self.settings.inbox),
            library=str(self.settings.library),
            model=model,
            watch_mode=self.mode,
            known_contents=self.library.index.contents,
        )

    def start(self, start_thread: StartThread) -> None:
        self.settings.inbox.mkdir(parents=True, exist_ok=True)
        self._watch_inbox()
        start_thread(self._loop, "intake")

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=_OBSERVER_STOP_TIMEOUT_S)
        if self._overflow_notice is not None:
            self._overflow_notice.detach()

    def all_done(self) -> bool:
        return False

    # -- how each input ended ----------------------------------------------------------------

    def finished(self, arrival: Arrival) -> None:
        self.workload.settled()
        self.forget(arrival)

    def forget(self, arrival: Arrival) -> None:
        for member in arrival.members:
            self.tracker.finished(member.path)

    def retry(self, arrival: Arrival, awaiting_rest: bool = False) -> None:
        hold_s = arrival.rest_wait_s if awaiting_rest else 0.0
        if awaiting_rest:
            log.info("waiting_for_the_rest", path=str(arrival.path), seconds=hold_s)
        for member in arrival.members:
            self.tracker.finished(member.path)
            # as it was read, it is complete: known so when it came (rest_wait_s 0), or once
            # the wait for the rest is over; changed since, it is looked at afresh
            known = awaiting_rest or not member.rest_wait_s
            self.tracker.touched(member.path, hold_s, member.identity if known else None)
        self.workload.settled()

    def alone(self, companion: Arrival) -> None:
        self.tracker.touched(companion.path)

    def failed(self, item: Decoded) -> None:
        pass  # left in the inbox: the next rescan (or a restart) tries it again

    # -- the intake thread -------------------------------------------------------------------

    def _loop(self) -> None:
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
            for path, identity, may_be_unfinished in self.tracker.take_stable():
                rest_wait_s = self.settings.unfinished_wait_s if may_be_unfinished else 0.0
                arrival = self.consider(path, identity, self.settings.inbox, False, rest_wait_s)
                if arrival is not None:
                    self.grouper.add(arrival)
                else:
                    self.grouper.forget(path)  # nothing to wait for
            for arrival in self.grouper.take_ready():
                self.admit(arrival)
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
            self._observer.join(timeout=_OBSERVER_STOP_TIMEOUT_S)
            log.warning("inbox_rewatched", inbox=str(inbox))
        inbox.mkdir(parents=True, exist_ok=True)
        st = os.stat(inbox)
        self._watched_inbox = (st.st_dev, st.st_ino)
        self._observer = start_observer(
            inbox, self.mode, self.settings.poll_interval_s, self._notices
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
        relative = path.relative_to(inbox).as_posix()
        return not is_ignored(relative, self.settings.ignore) and not self._in_done_folder(relative)

    def _in_done_folder(self, relative: str) -> bool:
        return (relative + "/").startswith(self._done_folder)

    def _rescan(self) -> None:
        """Find what no event told us about. A file the journal already has, unchanged, is
        passed over here: an inbox kept full (on_success = "keep") is not queued again and
        again, so memory and CPU stay flat however many files it holds."""
        index = self.library.index
        inbox = self.settings.inbox
        for path in walk_files(inbox, self.settings.ignore):
            if self.tracker.is_tracked(path) or self._in_done_folder(
                path.relative_to(inbox).as_posix()
            ):
                continue
            identity = identity_of(path)
            if identity is None:
                continue
            done = index.source(path, identity)
            if done is not None and not (done.original_removed and self.library.remove_originals):
                continue  # (an original still due for removal goes on, to consider)
            self.grouper.noticed(path)
            self.tracker.touched(path)


class ListIntake(_Admission):
    """The files given to `sortbox sort`: each admitted once, and again (as it is then) while
    it keeps changing, at most MAX_ATTEMPTS times; done when every one is handled."""

    long_running: ClassVar[bool] = False
    idle_poll_s: ClassVar[float] = 0.01

    def __init__(
        self,
        inputs: list[Arrival],
        settings: Settings,
        library: Library,
        arrivals: queue.Queue[Arrival | None],
        workload: Workload,
        should_exit: threading.Event,
        on_batch: OnBatch | None,
    ) -> None:
        super().__init__(settings, library, arrivals, workload, should_exit, on_batch)
        self.inputs = inputs
        self.unfinished: list[Path] = []  # given up on (kept changing, gone, outside)
        self.failed_paths: list[Path] = []  # stopped by an unexpected error (logged)
        self._lock = threading.Lock()  # guards the three below, with the workload's count
        self._again: deque[Arrival] = deque()
        self._attempts: Counter[Path] = Counter()
        self._listed = False  # every given input was admitted once

    def announce(self, model: str, journal: Callable[[Event], None]) -> None:
        pass  # `sort` says what it does file by file

    def start(self, start_thread: StartThread) -> None:
        start_thread(self._loop, "intake")

    def stop(self) -> None:
        pass

    def all_done(self) -> bool:
        with self._lock:
            return self._listed and self.workload.outstanding == 0 and not self._again

    def finished(self, arrival: Arrival) -> None:
        self.workload.settled()

    def retry(self, arrival: Arrival, awaiting_rest: bool = False) -> None:
        again = refreshed(arrival)  # as the file is now
        with self._lock:
            self._attempts[arrival.path] += 1
            if again is None:
                log.warning("gone_or_outside_not_sorted", path=str(arrival.path))
                self.unfinished.append(arrival.path)
            elif self._attempts[arrival.path] >= MAX_ATTEMPTS and self.workload.pause is None:
                log.warning("kept_changing_not_sorted", path=str(arrival.path))
                self.unfinished.append(arrival.path)
            else:
                self._again.append(again)
            self.workload.settled()

    def alone(self, companion: Arrival) -> None:
        with self._lock:
            self._again.append(companion)

    def failed(self, item: Decoded) -> None:
        with self._lock:
            self.failed_paths += [item.arrival.path, *(c.arrival.path for c in item.companions)]

    def _loop(self) -> None:
        fresh = [self.consider(a.path, a.identity, a.root, a.decide_again) for a in self.inputs]
        for arrival in group_all([a for a in fresh if a is not None]):
            if self.should_exit.is_set():
                return
            self.admit(arrival)
        with self._lock:
            self._listed = True
        while not self.should_exit.is_set():
            with self._lock:
                arrival = self._again.popleft() if self._again else None
                if arrival is not None:
                    self.workload.admitted()  # before the queue: never "all done" in between
            if arrival is None:
                time.sleep(0.05)
                continue
            self.workload.wait_while_paused(self.should_exit)
            self.enqueue(arrival)
