"""Watch the inbox: a watchdog observer whose handler only enqueues (kind, path).

inotify where it works; a polling observer on network and FUSE filesystems, where inotify
never hears about files written by other machines.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path
from typing import Any, Literal

from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingEmitter

EventKind = Literal["created", "touched", "renamed", "opened", "written", "closed", "gone"]
Notice = tuple[EventKind, Path]

# Polling may take this share of one CPU at most: a snapshot of a large inbox (60,000 files
# took 0.5 s of CPU here) stretches the wait before the next one beyond poll_interval_s.
POLL_CPU_SHARE = 0.05

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre", "davfs"}
)


class EnqueueHandler(FileSystemEventHandler):
    """Runs on the observer thread: no stat, no I/O, just hand the path over.

    `watched` is the folder the observer watches: `root` itself, or, when `root` is a link
    its admin made, the folder it leads to; paths are handed over as under `root`.
    """

    def __init__(
        self, root: Path, notices: queue.SimpleQueue[Notice], watched: Path | None = None
    ) -> None:
        self._root = root
        self._watched = watched or root
        self._notices = notices

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if (
                event.event_type in ("deleted", "moved")
                and Path(os.fsdecode(event.src_path)) == self._watched
            ):
                self._notices.put(("gone", self._root))  # the watch died with the folder
            return
        if isinstance(event, FileMovedEvent):
            # dest "": moved out of the inbox; src "": moved in from a folder we don't watch
            if event.dest_path:
                self._notices.put(("renamed", self._as_under_root(event.dest_path)))
            return
        path = self._as_under_root(event.src_path)
        if isinstance(event, FileOpenedEvent):
            self._notices.put(("opened", path))
        elif isinstance(event, FileClosedEvent):  # closed after writing (IN_CLOSE_WRITE)
            self._notices.put(("written", path))
        elif isinstance(event, FileClosedNoWriteEvent):
            self._notices.put(("closed", path))
        elif isinstance(event, FileCreatedEvent):
            self._notices.put(("created", path))
        elif isinstance(event, FileModifiedEvent):
            self._notices.put(("touched", path))

    def _as_under_root(self, event_path: bytes | str) -> Path:
        path = Path(os.fsdecode(event_path))
        if self._watched == self._root or not path.is_relative_to(self._watched):
            return path
        return self._root / path.relative_to(self._watched)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` lives on, from the mount table ('' if unknown)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, fields[2]
    except OSError:
        return ""
    return fstype


def needs_polling(path: Path) -> bool:
    fstype = filesystem_type(path)
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")


def resolve_watch_mode(mode: Literal["auto", "inotify", "poll"], inbox: Path) -> str:
    if mode == "auto":
        return "poll" if needs_polling(inbox) else "inotify"
    return mode


class OverflowNotice(logging.Handler):
    """When events come faster than they are read, the kernel drops them (its queue holds
    fs.inotify.max_queued_events). watchdog then rebuilds its watches but says so only in its
    log; this hands that on as a notice, so the inbox is rescanned within a second rather than
    at the next periodic rescan (rescan_interval_s, 5 minutes)."""

    LOGGER = "watchdog.observers"

    def __init__(self, inbox: Path, notices: queue.SimpleQueue[Notice]) -> None:
        super().__init__(logging.WARNING)
        self._inbox = inbox
        self._notices = notices

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._notices.put(("overflowed", self._inbox))

    def attach(self) -> None:
        logging.getLogger(self.LOGGER).addHandler(self)

    def detach(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


class PacedPollingEmitter(PollingEmitter):
    """watchdog's polling, waiting `poll_interval_s` between snapshots or, when snapshots get
    long, long enough that polling stays under POLL_CPU_SHARE of one CPU. An inbox kept full
    (on_success = "keep") on a network share must not cost a core, or the server a storm of
    stat calls, for ever."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paced_wait = 0.0

    def queue_events(self, timeout: float) -> None:
        wait = max(timeout, self._paced_wait)
        started = time.monotonic()
        super().queue_events(wait)
        snapshot_s = max(0.0, time.monotonic() - started - wait)
        self._paced_wait = snapshot_s * (1 - POLL_CPU_SHARE) / POLL_CPU_SHARE


def start_observer(
    inbox: Path, mode: str, poll_interval_s: float, notices: queue.SimpleQueue[Notice]
) -> BaseObserver:
    observer: BaseObserver
    if mode == "poll":
        observer = BaseObserver(PacedPollingEmitter, timeout=poll_interval_s)
    else:
        from watchdog.observers.inotify import InotifyObserver  # Linux only: imported here

        # Full events: a file moved in from a folder we don't watch (`mv x.jpg inbox/`) is
        # reported as the rename it is, not as a file created, so it is taken at once rather
        # than after the quiet period (no close-after-write ever follows such a "create").
        observer = InotifyObserver(generate_full_events=True)
    # inotify does not look through a link: an inbox that is one (`inbox -> /mnt/scans`, made
    # by its admin, as the library may be) is watched where it leads
    watched = inbox.resolve()
    observer.schedule(EnqueueHandler(inbox, notices, watched), str(watched), recursive=True)
    observer.start()
    return observer
