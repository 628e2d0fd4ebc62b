"""The library as one run of sortbox holds it: its folder, the done-index, the journal, and
the placement lock.

Exactly-once holds across processes, not only threads: a batch is placed while holding an
exclusive lock on the library (`library/.sortbox/lock`, an flock, so kill -9 releases it).
Under the lock the index first takes in what other processes journaled since, so the daemon,
`sortbox sort` and `sortbox undo` never place the same content twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import structlog
from sortbox.daemon.intake.files import (
    Arrival,
    Identity,
    OutsideFolder,
    move_beneath,
    remove_beneath,
)
from sortbox.daemon.intake.group import group_key
from sortbox.daemon.layout import REJECTED_FOLDER, REVIEW_FOLDER, STATE_FOLDER, fsync_dir
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.copies import (
    Scratch,
    portable_folder,
    remove_leftover_temps,
    same_content,
)
from sortbox.daemon.sorting.index import DoneIndex
from sortbox.daemon.sorting.journal import (
    Journal,
    Recovered,
    Review,
    Sorted,
)
from sortbox.daemon.sorting.preprocess import looks_cut_short
from sortbox.daemon.sorting.read import Decoded
from sortbox.daemon.sorting.recovery import unrecorded_after_loss, unrecorded_at_start

log = structlog.get_logger(__name__)

# A RAW file or sidecar that comes after its picture was placed (an editor writing IMG_1.xmp
# later, a copy slower than pair_wait_s) still goes where the picture went, for this long.
LATE_COMPANION_S = 600.0
RECENT_PICTURES = 1_000  # at most this many remembered (about 2 MB), oldest forgotten first


@dataclass(frozen=True)
class Originals:
    """What becomes of an inbox original once its copy is durable and journaled (on_success):
    kept, deleted, or moved to `done_folder` (inside the inbox) under its relative path."""

    action: Literal["keep", "delete", "move"] = "keep"
    done_folder: str = ".done"


@dataclass(frozen=True)
class PlacedPicture:
    """A picture this process placed, for late companions to follow."""

    event: Sorted | Review
    names_in_library: dict[str, str]  # original file name -> its library name, group-wide
    at: float  # time.monotonic()


@dataclass(frozen=True)
class JournalLoss:
    what: str  # "replaced" or "truncated"
    at: float  # time.time()
    recovered: int  # copies recorded again with a `recovered` line


class Library:
    """The library folder, what it holds (the done-index) and the journal of how it got there.

    `journal=None` is a dry run: every decision is made, nothing is written or removed.
    """

    def __init__(
        self,
        root: Path,
        index: DoneIndex,
        journal: Journal | None,
        remove_originals: bool,
        inbox: Path,
        *,
        originals: Originals | None = None,
        keep_subfolders: bool = False,
    ) -> None:
        """`remove_originals` is on_success = "delete"; `originals` says any on_success."""
        self.root = root
        self.index = index
        self.journal = journal
        self.inbox = inbox  # where `undo` puts back a recovered copy (recovery.py)
        # the journal lost lines behind our back: what, when, and how many copies were
        # recorded again (for the daemon's state, so `status` says so)
        self.journal_loss: JournalLoss | None = None
        self.originals = originals or Originals("delete" if remove_originals else "keep")
        # the journal lines say the original leaves the inbox (deleted or moved): a restart
        # finishes what was due (intakes.py), and `undo` brings it back
        self.remove_originals = self.originals.action != "keep" and journal is not None
        self.keep_subfolders = keep_subfolders
        self.scratch = Scratch()  # memory for writing copies around the page cache
        self._unsynced: set[Path] = set()  # folders with new names not yet fsynced
        self._recent: OrderedDict[tuple[Path, str], PlacedPicture] = OrderedDict()
        self._originals_kept: set[Path] = set()  # done, but the inbox would not let them go
        self._cut_short: OrderedDict[tuple[Path, Identity | None], None] = OrderedDict()

    def remove_original(self, arrival: Arrival, identity: Identity) -> None:
        """Delete (or move into the done folder) an inbox original whose copy is durable and
        journaled, if it is still that file, never through a link (intake.remove_beneath,
        intake.move_beneath). If the inbox will not let it go (mounted read-only, a folder
        this user may not write, a file where the done folder should be), it stays, done, and
        the daemon carries on: said once a run, not at every rescan."""
        path = arrival.path
        moving = self.originals.action == "move"
        try:
            if moving:
                target = PurePosixPath(self.originals.done_folder, arrival.relative).as_posix()
                left = move_beneath(arrival.root, arrival.relative, identity, target) is None
            else:
                left = not remove_beneath(arrival.root, arrival.relative, identity)
            if left:
                log.warning("original_changed_not_removed", path=str(path))
        except (FileNotFoundError, OutsideFolder):
            pass  # gone already, or its folder is not the one it was in: nothing to remove
        except OSError as exc:
            if path not in self._originals_kept:
                self._originals_kept.add(path)
                what = "original_not_moved" if moving else "original_not_removed"
                log.warning(what, path=str(path), reason=exc.strerror)

    def folder_for(self, folder: str, arrival: Arrival) -> str:
        """The library folder a copy goes to: the class folder, or with keep_subfolders the
        input's own subfolder beneath it (made portable, place.portable_folder). needs_review
        and rejected stay flat: the review page and the trainer read them as one folder."""
        if not self.keep_subfolders or folder in (REVIEW_FOLDER, REJECTED_FOLDER):
            return folder
        below = portable_folder(PurePosixPath(arrival.relative).parent.as_posix())
        return f"{folder}/{below}" if below else folder

    def sync_later(self, folder: Path) -> None:
        self._unsynced.add(folder)

    def sync_folders(self) -> None:
        """Make this batch's new names durable: one fsync per folder, not one per file."""
        while self._unsynced:
            fsync_dir(self._unsynced.pop())

    @property
    def dry_run(self) -> bool:
        return self.journal is None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the library's placement lock, with the index up to date with every process.

        The lock file is opened anew each time: a library folder deleted and recreated while
        we run gets a fresh lock that every process agrees on."""
        if self.journal is None:
            yield
            return
        with locked(self.root):
            for event in self.journal.take_foreign():
                self.index.record(event)
            lost = self.journal.take_loss()
            if lost is not None:
                self._record_again(lost)
            yield

    def second_look(self, item: Decoded) -> bool:
        """A picture that reads as cut short is looked at once more, after its quiet period,
        before it is rejected: its writer may be paused with the file open, and the notice of
        that open may not have reached intake yet (a busy machine). Rejected only if the very
        same file reads cut short twice. In the watched inbox a file that may be unfinished
        has waited for the rest before it gets here (Arrival.rest_wait_s); this look is what
        `sort` has, and costs the inbox one more read of a file that stays broken."""
        if item.problem is None or not looks_cut_short(item.problem):
            return False
        seen = (item.arrival.path, item.identity)
        if seen in self._cut_short:
            return False
        self._cut_short[seen] = None
        while len(self._cut_short) > RECENT_PICTURES:
            self._cut_short.popitem(last=False)
        return True

    def look_at_journal(self) -> None:
        """While idle: if the journal was deleted, moved or emptied, record again now what it
        lost (see `exclusive`)."""
        if self.journal is not None and self.journal.look():
            with self.exclusive():
                pass

    def record_unjournaled_copies(self) -> None:
        """Start-up: give a `recovered` line to each sortbox copy the journal does not know
        (recovery.py). Under the lock: a process placing right now has copies not yet
        journaled, and they are not lost."""
        if self.journal is None or not self.index.orphans():
            return
        with self.exclusive():
            found = unrecorded_at_start(self.index, self.root, self.inbox)
            if found:
                self._journal_recovered(found)
                log.error(
                    "journal_missed_copies",
                    recovered=len(found),
                    hint="the library holds sortbox copies the journal has no line for; "
                    "each now has a 'recovered' line (not a label for training)",
                )

    def _record_again(self, lost: str) -> None:
        assert self.journal is not None
        found = unrecorded_after_loss(self.index, self.root, self.journal.path, self.inbox)
        self._journal_recovered(found)
        self.journal_loss = JournalLoss(what=lost, at=time.time(), recovered=len(found))
        log.error(
            "journal_lost",
            journal=str(self.journal.path),
            what=lost,
            recovered=len(found),
            hint="something deleted, moved or emptied the journal while sortbox ran; each "
            "copy it knew of has a 'recovered' line in the new journal. Don't rotate it: "
            "see docs on the journal",
        )

    def _journal_recovered(self, lines: list[Recovered]) -> None:
        assert self.journal is not None
        self.journal.append(lines)
        for line in lines:
            self.index.record(line)

    def save_index_snapshot(self) -> None:
        """Leave the done-index for the next start (see index.py). Only when every event this
        process journaled has been recorded: after a clean drain, not after a crash."""
        if self.journal is None:
            return
        try:
            with locked(self.root):
                events, offset = self.journal.take_foreign_and_offset()
                for event in events:
                    self.index.record(event)
                self.index.save_snapshot(self.root, self.journal.path, offset)
        except OSError as exc:  # a full disk: the next start reads the whole journal
            log.warning("index_snapshot_not_saved", error=str(exc))

    def copy_of(self, sha256: str | None) -> str | None:
        """Where the library holds this content now: journaled there, and still that content.
        A copy the user deleted or edited since does not count: the picture is placed again.
        A recovered copy (no decision journaled) does not either: it is adopted (`adoptable`)."""
        if sha256 is None or self.index.is_recovered(sha256):
            return None
        dest = self.index.copy_of(sha256)
        if dest is None or not same_content(self.root / dest, sha256):
            return None
        return dest

    def remember_picture(self, path: Path, placed: PlacedPicture) -> None:
        key = group_key(path)
        self._recent[key] = placed
        self._recent.move_to_end(key)
        while len(self._recent) > RECENT_PICTURES:
            self._recent.popitem(last=False)

    def picture_of(self, companion: Path) -> PlacedPicture | None:
        """The picture of this RAW file's or sidecar's group placed here lately, if its copy
        is still in the library."""
        placed = self._recent.get(group_key(companion))
        if placed is None or time.monotonic() - placed.at > LATE_COMPANION_S:
            return None
        assert placed.event.dest is not None
        return placed if (self.root / placed.event.dest).is_file() else None

    def adoptable(self, sha256: str) -> Path | None:
        """A copy of this content in the library with no decision journaled for it: left by a
        crash between the copy and its line, or recorded only as recovered. The input with
        that content is decided and adopts it, rather than being copied a second time."""
        orphan = self.index.orphan_for(sha256)
        if orphan is None and self.index.is_recovered(sha256):
            dest = self.index.copy_of(sha256)
            orphan = self.root / dest if dest else None
        return orphan

    def probably_has(self, sha256: str | None) -> bool:
        """Cheap check (no hashing) used to skip the model for known content."""
        if self.index.is_recovered(sha256):
            return False  # known, but never decided: decide it
        dest = self.index.copy_of(sha256) if sha256 else None
        return dest is not None and (self.root / dest).is_file()


@contextlib.contextmanager
def locked(library: Path) -> Iterator[None]:
    """The library's placement lock: whoever holds it may add or remove copies and journal it.
    An flock, so a process killed with -9 releases it."""
    folder = library / STATE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def open_library(settings: Settings, *, dry_run: bool = False, watching: bool = False) -> Library:
    """The library as every run of sortbox opens it (the daemon, `sort`, a Ray backfill):
    temporary copies a crash left removed, the index of what the journal records, and a
    `recovered` line for each sortbox copy the journal misses. `watching`: the inbox's
    originals go as on_success says; `sort` keeps what it is given. A dry run writes nothing."""
    if not dry_run:
        removed = remove_crash_leftovers(settings.library)
        if removed:
            log.info("crash_leftovers_removed", temporary_files=removed)
    library = Library(
        settings.library,
        DoneIndex.load(settings.journal, settings.library),
        None if dry_run else Journal(settings.journal),
        remove_originals=False,
        inbox=settings.inbox,
        originals=Originals(settings.on_success if watching else "keep", settings.done_folder),
        keep_subfolders=settings.keep_subfolders,
    )
    if not dry_run:
        library.record_unjournaled_copies()
    return library


def remove_crash_leftovers(library: Path) -> int:
    """Delete the temporary copies a crash left in the library. Under the placement lock: a
    process placing right now (a daemon beside `sortbox sort`) has its temporary files in
    there too, and they are not leftovers."""
    with locked(library):
        return remove_leftover_temps(library)
