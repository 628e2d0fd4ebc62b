"""Stability and batching, with an injected clock: when a file is complete, when a batch goes."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import threading
import time
from pathlib import Path

import pytest
from sortbox.daemon.intake.files import is_ignored
from sortbox.daemon.intake.stability import StabilityTracker
from sortbox.daemon.intake.watch import EnqueueHandler, PacedPollingEmitter
from sortbox.daemon.running.batch import next_batch
from watchdog.observers.api import BaseObserver

# -- stability, with an injected clock ----------------------------------------------------------


def test_stability_waits_for_writers_and_quiet(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    path = tmp_path / "x.jpg"
    path.write_bytes(b"1")
    tracker.opened(path)
    tracker.touched(path)
    now[0] = 5.0
    assert tracker.take_stable() == []  # still open for writing
    tracker.closed(path)
    assert tracker.take_stable() == []  # quiet period not over
    now[0] = 5.5
    path.write_bytes(b"12")  # changed during the quiet period
    now[0] = 6.1
    assert tracker.take_stable() == []
    now[0] = 7.2
    taken = tracker.take_stable()
    assert [p for p, *_ in taken] == [path]
    tracker.touched(path)
    now[0] = 20.0
    assert tracker.take_stable() == []  # queued until finished
    tracker.finished(path)
    assert [p for p, *_ in tracker.take_stable()] == [path]


def test_a_hold_waits_longer_than_the_quiet_period_until_the_file_changes(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    held, changed = tmp_path / "held.jpg", tmp_path / "changed.jpg"
    for path in (held, changed):
        path.write_bytes(b"half a picture")
        tracker.touched(path, hold_s=10.0)
    now[0] = 2.0
    assert tracker.take_stable() == []  # the quiet period is over, the hold is not
    tracker.opened(held)  # a reader (sortbox itself, a thumbnailer) does not end the hold
    tracker.closed(held)
    changed.write_bytes(b"half a picture, and the rest")
    tracker.opened(changed)
    tracker.closed(changed, wrote=True)  # more came: the usual quiet period from now
    now[0] = 3.1
    assert [(s.path, s.may_be_unfinished) for s in tracker.take_stable()] == [(changed, True)]
    now[0] = 9.9
    assert tracker.take_stable() == []
    now[0] = 10.1
    # back as it was: as it will be, so a picture still broken now is rejected
    assert [(s.path, s.may_be_unfinished) for s in tracker.take_stable()] == [(held, False)]


def test_a_file_renamed_into_place_is_finished_and_one_written_here_may_not_be(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    renamed, written = tmp_path / "renamed.jpg", tmp_path / "written.jpg"
    for path in (renamed, written):
        path.write_bytes(b"1")
    tracker.renamed(renamed)
    tracker.created(written)
    tracker.opened(written)
    tracker.closed(written, wrote=True)
    taken = {s.path: s.may_be_unfinished for s in tracker.take_stable()}
    assert taken == {renamed: False, written: True}


def test_a_file_created_while_watched_is_complete_when_its_last_writer_closes_it(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    created, two_writers, older = (tmp_path / n for n in ("new.jpg", "two.jpg", "old.jpg"))
    for path in (created, two_writers, older):
        path.write_bytes(b"1")
    for path in (created, two_writers):
        tracker.created(path)
        tracker.opened(path)
    tracker.opened(two_writers)  # a second writer
    tracker.opened(older)  # existed before: a writer may have opened it before we looked
    for path in (created, two_writers, older):
        tracker.closed(path, wrote=True)
    assert [p for p, *_ in tracker.take_stable()] == [created]  # at once: no quiet period
    tracker.closed(two_writers, wrote=False)  # a reader: not the end of the writing
    now[0] = 0.5
    assert tracker.take_stable() == []
    now[0] = 1.1
    assert sorted(p for p, *_ in tracker.take_stable()) == [older, two_writers]


def test_a_close_the_kernel_dropped_does_not_keep_a_file_waiting_for_ever(tmp_path: Path) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    path = tmp_path / "a.jpg"
    path.write_bytes(b"1")
    tracker.created(path)
    tracker.opened(path)  # ... and its close was among the events inotify's overflow dropped
    now[0] = 60.0
    assert tracker.take_stable() == []
    tracker.events_lost()
    now[0] = 60.5
    assert tracker.take_stable() == [], "unknown writers: the quiet period is waited out"
    now[0] = 61.1
    assert [p for p, *_ in tracker.take_stable()] == [path]


def test_a_file_some_program_keeps_open_is_named_once_not_waited_for_silently(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    path = tmp_path / "a.jpg"
    path.write_bytes(b"1")
    tracker.created(path)
    tracker.opened(path)  # a copy that stalled, or a program that holds the file
    now[0] = 59.0
    assert tracker.held_open(60.0) == []
    now[0] = 61.0
    assert tracker.held_open(60.0) == [path]
    now[0] = 500.0
    assert tracker.held_open(60.0) == [] and tracker.take_stable() == []  # said once, waits
    tracker.closed(path)
    now[0] = 501.1
    assert [p for p, *_ in tracker.take_stable()] == [path]


def test_polling_needs_two_unchanged_checks_and_a_rename_needs_no_quiet_period(
    tmp_path: Path,
) -> None:
    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, confirmations=2, clock=lambda: now[0])
    polled, renamed = tmp_path / "polled.jpg", tmp_path / "renamed.jpg"
    polled.write_bytes(b"1")
    renamed.write_bytes(b"1")
    tracker.touched(polled)
    tracker.renamed(renamed)
    assert [p for p, *_ in tracker.take_stable()] == [renamed]  # at once
    now[0] = 1.1
    assert tracker.take_stable() == []  # one unchanged check is not enough when polling
    polled.write_bytes(b"12")  # the writer was only pausing
    now[0] = 2.2
    assert tracker.take_stable() == []
    now[0] = 3.3
    assert tracker.take_stable() == []
    now[0] = 4.4
    assert [p for p, *_ in tracker.take_stable()] == [polled]


def test_polling_a_slow_inbox_waits_longer_between_snapshots_and_still_sees_files(
    tmp_path: Path,
) -> None:
    """An inbox whose snapshot is slow (many files, a network share: here stat() sleeps) is
    polled less often, so that polling stays a small share of a CPU; files are still seen."""
    for n in range(5):
        (tmp_path / f"{n}.jpg").write_bytes(b"x")
    stats: list[float] = []

    def slow_stat(path: str) -> os.stat_result:
        stats.append(time.monotonic())
        time.sleep(0.02)
        return os.stat(path)

    notices: queue.SimpleQueue = queue.SimpleQueue()
    emitter = functools.partial(PacedPollingEmitter, stat=slow_stat)
    observer = BaseObserver(emitter, timeout=0.05)  # type: ignore[arg-type]
    observer.schedule(EnqueueHandler(tmp_path, notices), str(tmp_path), recursive=True)
    observer.start()
    try:
        time.sleep(0.5)  # the first snapshot and the first compared one, 0.05 s apart
        (tmp_path / "new.jpg").write_bytes(b"y")
        seen = []
        deadline = time.monotonic() + 15
        while not seen and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(notices.get(timeout=0.1))
    finally:
        observer.stop()
        observer.join()
    gaps = [later - earlier for earlier, later in itertools.pairwise(stats)]
    assert max(gaps) > 1.0, "a snapshot of 0.1 s is followed by about 1.9 s of rest, not 0.05"
    assert seen == [("created", tmp_path / "new.jpg")]


def test_a_lone_picture_does_not_wait_out_max_wait() -> None:
    source: queue.Queue[int] = queue.Queue()
    source.put(1)
    started = time.monotonic()
    batch = next_batch(source, 8, 30.0, threading.Event(), more_coming=lambda: False)
    assert batch == [1] and time.monotonic() - started < 10  # not the 30 s max_wait
    for n in range(3):
        source.put(n)
    assert next_batch(source, 2, 30.0, threading.Event()) == [0, 1]  # full: goes at once


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("a.jpg", False),
        ("x.jpg.part", True),
        ("dl.crdownload", True),
        (".DS_Store", True),
        ("@eaDir/a.jpg", True),
        ("sub/.syncthing.a.jpg.tmp", True),
        ("~$report.docx", True),
        ("Thumbs.db", True),
    ],
)
def test_ignore_patterns(path: str, ignored: bool) -> None:
    from sortbox.daemon.settings import DEFAULT_IGNORE

    assert is_ignored(path, DEFAULT_IGNORE) is ignored


def test_a_file_handed_back_as_complete_comes_back_complete_unless_it_changed(
    tmp_path: Path,
) -> None:
    """A second look at a file renamed into place: it is still the finished file, unless a
    writer has been at it since."""
    from sortbox.daemon.intake.files import identity_of

    now = [0.0]
    tracker = StabilityTracker(quiet_period_s=1.0, clock=lambda: now[0])
    same, rewritten = tmp_path / "same.jpg", tmp_path / "rewritten.jpg"
    for path in (same, rewritten):
        path.write_bytes(b"1")
    was = {path: identity_of(path) for path in (same, rewritten)}
    rewritten.write_bytes(b"12")  # changed between the read and the second look
    for path in (same, rewritten):
        tracker.touched(path, complete_as=was[path])
    now[0] = 1.1
    taken = {s.path: s.may_be_unfinished for s in tracker.take_stable()}
    assert taken == {same: False, rewritten: True}
