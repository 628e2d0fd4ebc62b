"""The batch stages after decoding, as plain functions: classify (+ decide), then place + journal.

The daemon and `sortbox sort` run exactly these, driven by `Service`. The order of
`place_batch` is what makes "nothing is ever lost" hold: copies are durable before their
journal lines are written, journal lines are durable before any original is removed or moved
(on_success = "delete" or "move").

Exactly-once holds across processes, not only threads: a batch is placed while holding an
exclusive lock on the library (`library/.sortbox/lock`, an flock, so kill -9 releases it).
Under the lock the index first takes in what other processes journaled since, so the daemon,
`sortbox sort` and `sortbox undo` never place the same content twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import structlog
from sortbox.daemon.classify import Classifier
from sortbox.daemon.decide import Decision, decide
from sortbox.daemon.decode import Decoded, reopen_as_read
from sortbox.daemon.group import COMPANION_OF, group_key, role_of, sidecar_name
from sortbox.daemon.index import DoneIndex
from sortbox.daemon.intake import (
    Arrival,
    Identity,
    OutsideFolder,
    move_beneath,
    remove_beneath,
)
from sortbox.daemon.journal import (
    Duplicate,
    Journal,
    Placement,
    Recovered,
    Rejected,
    Review,
    Sorted,
)
from sortbox.daemon.manifest import REJECTED_FOLDER, REVIEW_FOLDER, Manifest, fsync_dir
from sortbox.daemon.place import (
    STATE_FOLDER,
    SourceChanged,
    UnusableFolder,
    copy_into,
    library_name,
    portable_folder,
    remove_leftover_temps,
    same_content,
)
from sortbox.daemon.preprocess import is_raw, looks_cut_short
from sortbox.daemon.recovery import unrecorded_after_loss, unrecorded_at_start
from sortbox.daemon.settings import Settings

log = structlog.get_logger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)
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


@dataclass(frozen=True)
class Classified:
    items: list[Decoded]
    decisions: list[Decision | None]  # None: bad input, or content the library already has
    model: str


@dataclass
class Placed:
    events: list[Placement] = field(default_factory=list)
    retry: list[Decoded] = field(default_factory=list)  # not handled this time; try again later
    # companions of a picture that was not classified (rejected, duplicate): each on its own
    alone: list[Decoded] = field(default_factory=list)
    failure: OSError | None = None  # the library or journal could not be written: pause
    failed_writing: str = ""  # "library" or "journal"


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
        same file reads cut short twice."""
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


def classify_batch(
    batch: list[Decoded], classifier: Classifier, library: Library, audit_rate: float = 0.0
) -> Classified:
    """The compute half: no writes, so it runs while the previous batch is being placed.

    Pictures whose content the library already holds are not run through the model (unless
    `sort --force` asks for them to be decided again); `place_batch` makes the final
    duplicate check under the lock, so this is only a saving."""
    wanted = [
        n
        for n, item in enumerate(batch)
        if item.problem is None
        and not item.changed
        and (item.arrival.decide_again or not library.probably_has(item.sha256))
    ]
    rows: list[np.ndarray | None] = [None] * len(batch)
    if wanted:
        logits = classifier.logits(np.stack([batch[n].pixels for n in wanted]))
        for n, row in zip(wanted, logits, strict=True):
            rows[n] = row
    return decide_batch(batch, rows, classifier.manifest, audit_rate)


def decide_batch(
    batch: list[Decoded], rows: list[np.ndarray | None], manifest: Manifest, audit_rate: float
) -> Classified:
    """Each picture's model outputs (None: not classified) -> its decision: the one place
    every driver decides (the daemon, `sort`, a Ray backfill)."""
    decisions = [
        decide(row, manifest, item.sha256, audit_rate) if row is not None else None
        for item, row in zip(batch, rows, strict=True)
    ]
    return Classified(batch, decisions, manifest.version)


def place_batch(classified: Classified, library: Library) -> Placed:
    """The I/O half, strictly in order: duplicates, rejections, copies, one fsync per folder,
    then the journal (one write, one fsync), then (on_success = "delete" or "move") the
    originals.

    A write that fails (disk full, read-only library) stops the batch: the rest stays in the
    inbox for later, and `failure` tells the caller to pause."""
    placed = Placed()
    with library.exclusive():
        placed_now: dict[str, str] = {}  # sha256 -> dest, for repeats within this batch
        for item, decision in zip(classified.items, classified.decisions, strict=True):
            if placed.failure is not None or item.changed or library.second_look(item):
                placed.retry.append(item)
                continue
            earlier = (item.sha256 and placed_now.get(item.sha256)) or library.copy_of(item.sha256)
            if earlier:
                placed.events.append(_duplicate(item, earlier, library, decision))
                continue
            if item.problem is None and decision is None:
                # skipped as known content, but that copy is gone: classify it next time
                placed.retry.append(item)
                continue
            picture = None
            if item.sha256 is not None and role_of(item.arrival.path) != "picture":
                picture = library.picture_of(item.arrival.path)
            try:
                if picture is not None:  # came late: follows its picture, decided or not
                    placed.events += _place_companions([item], picture, library, placed_now)
                    continue
                if item.problem is not None:
                    event: Placement = _reject(item, library)
                else:
                    assert decision is not None
                    event = _place(item, decision, classified.model, library)
            except SourceChanged:
                log.info("changed_while_sorting", path=str(item.arrival.path))
                placed.retry.append(item)
                continue
            except OSError as exc:
                placed.failure, placed.failed_writing = exc, "library"
                placed.retry.append(item)
                continue
            placed.events.append(event)
            if event.dest and item.sha256:
                placed_now[item.sha256] = event.dest
            if isinstance(event, Sorted | Review):
                assert event.dest is not None
                picture = PlacedPicture(
                    event, {item.arrival.path.name: event.dest.rsplit("/", 1)[-1]}, time.monotonic()
                )
                library.remember_picture(item.arrival.path, picture)
                try:
                    placed.events += _place_companions(
                        item.companions, picture, library, placed_now
                    )
                except SourceChanged:
                    placed.alone += item.companions  # the picture stays placed; they come again
                except OSError as exc:
                    placed.failure, placed.failed_writing = exc, "library"
                    placed.alone += item.companions
            else:
                placed.alone += item.companions
        try:
            library.sync_folders()  # the copies are durable before their journal lines
            _journal(placed.events, library)
        except OSError as exc:
            # The copies made have no journal line yet: the next attempt finds them under
            # their names and adopts them. Their inputs stay in the inbox.
            placed.failure, placed.failed_writing = exc, "journal"
            placed.retry = list(classified.items)
            placed.events, placed.alone = [], []
            return placed
    if library.remove_originals:
        _remove_originals(placed.events, classified.items, library)
    return placed


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in _FULL


def _journal(events: list[Placement], library: Library) -> None:
    if library.journal is not None:
        library.journal.append(events)
    for event in events:
        library.index.record(event)


def _fields(item: Decoded) -> dict[str, Any]:
    identity = item.identity or item.arrival.identity
    return {
        "src": item.arrival.relative,
        "root": str(item.arrival.root),
        "sha256": item.sha256,
        "size": identity.size,
        "mtime_ns": identity.mtime_ns,
        "inode": identity.inode,
    }


def _copy(item: Decoded, folder: str, library: Library, preferred: str | None = None) -> str:
    assert item.sha256 is not None
    if library.dry_run:
        return f"{folder}/{preferred or library_name(item.arrival.path.name, item.sha256)}"
    final = copy_into(
        functools.partial(reopen_as_read, item),
        library.root / folder,
        item.arrival.path.name,
        item.sha256,
        item.content,
        preferred,
        sync_folder=library.sync_later,
        beneath=library.root,
    )
    if item.identity is not None:
        # keep the capture time photo tools sort by; best effort
        with contextlib.suppress(OSError):
            os.utime(final, ns=(item.identity.mtime_ns, item.identity.mtime_ns))
    return final.relative_to(library.root).as_posix()


def _place(item: Decoded, decision: Decision, model: str, library: Library) -> Sorted | Review:
    assert item.sha256 is not None
    orphan = library.adoptable(item.sha256)
    if orphan is not None and same_content(orphan, item.sha256):
        # copied before a crash, journal line never written: adopt it, don't copy again
        dest = orphan.relative_to(library.root).as_posix()
        needs_review = dest.split("/", 1)[0] == REVIEW_FOLDER
        reason = None
    else:
        dest, needs_review, reason = _copy_as_decided(item, decision, library)
    event_type = Review if needs_review else Sorted
    return event_type(
        **_fields(item),
        dest=dest,
        label=decision.label,
        confidence=round(decision.confidence, 6),
        top3=decision.top3,
        model=model,
        reason=reason,
        original_removed=library.remove_originals,
        unknown=decision.unknown,
    )


def _copy_as_decided(
    item: Decoded, decision: Decision, library: Library
) -> tuple[str, bool, str | None]:
    """(dest, needs review, reason)."""
    dest, problem = _copy_or_review(
        item, library.folder_for(decision.folder, item.arrival), library
    )
    if problem:
        return dest, True, f"{problem}; placed for review"
    return dest, decision.needs_review, review_reason(decision)


def review_reason(decision: Decision) -> str | None:
    """Why a picture goes to review, in the journal's words: unlike any class, a spot check,
    or not sure enough (`0.52 < 0.60 for shirt`); None for a sorted one."""
    if decision.reason is not None or not decision.needs_review:
        return decision.reason
    if decision.threshold > 1.0:
        return f"too little calibration evidence to sort {decision.label} automatically"
    return f"{decision.confidence:.2f} < {decision.threshold:.2f} for {decision.label}"


def _copy_or_review(
    item: Decoded, folder: str, library: Library, preferred: str | None = None
) -> tuple[str, str | None]:
    """(dest, why not `folder`). A class folder that cannot take the copy (a symlink or a
    file put in its place, or one not writable) sends it to review instead; the rest of the
    library goes on. If needs_review cannot take it either, the error stops the batch like a
    read-only library does."""
    try:
        return _copy(item, folder, library, preferred), None
    except UnusableFolder as exc:
        if folder == REVIEW_FOLDER:
            raise
        log.warning("folder_unusable", folder=folder, problem=exc.strerror)
        return _copy(item, REVIEW_FOLDER, library, preferred), exc.strerror


def _place_companions(
    companions: Iterable[Decoded],
    picture: PlacedPicture,
    library: Library,
    placed_now: dict[str, str],
) -> list[Placement]:
    """A picture's RAW files and sidecars, into the folder the picture went to, journaled
    with its decision. A sidecar is named after the picture it describes (group.py)."""
    placed = picture.event
    assert placed.dest is not None
    folder = placed.dest.rsplit("/", 1)[0]  # with keep_subfolders, the picture's subfolder
    names_in_library = picture.names_in_library  # grows: a late sidecar finds the RAW's name
    events: list[Placement] = []
    # RAW files first: a sidecar then pairs with the RAW copy it was written for
    ordered = sorted(companions, key=lambda c: role_of(c.arrival.path) == "sidecar")
    for companion in ordered:
        assert companion.sha256 is not None
        earlier = placed_now.get(companion.sha256) or library.copy_of(companion.sha256)
        if earlier:
            events.append(_duplicate(companion, earlier, library))
            continue
        name = companion.arrival.path.name
        preferred = None
        if role_of(companion.arrival.path) == "sidecar":
            original, in_library = _described_by(name, names_in_library)
            preferred = sidecar_name(name, original, in_library)
        # a late companion's picture folder may have gone bad since the picture was placed
        dest, problem = _copy_or_review(companion, folder, library, preferred)
        event_type: type[Sorted | Review] = Review if problem else type(placed)
        reason = f"{COMPANION_OF}{placed.src}" + (
            f"; {problem}; placed for review" if problem else ""
        )
        names_in_library[name] = dest.rsplit("/", 1)[-1]
        placed_now[companion.sha256] = dest
        fields = placed.model_dump(include={"label", "confidence", "top3", "model"})
        events.append(
            event_type(
                **_fields(companion),
                **fields,
                dest=dest,
                reason=reason,
                original_removed=library.remove_originals,
            )
        )
    return events


def _described_by(sidecar: str, names_in_library: dict[str, str]) -> tuple[str, str]:
    """The picture a sidecar belongs to: the one its name extends (`IMG_1.CR2.xmp`), else a
    RAW file (what editors write `IMG_1.xmp` for), else the group's picture."""
    for original, in_library in names_in_library.items():
        if sidecar.lower().startswith(original.lower() + "."):
            return original, in_library
    raws = [(o, n) for o, n in names_in_library.items() if is_raw(o)]
    return raws[0] if raws else next(iter(names_in_library.items()))


def _reject(item: Decoded, library: Library) -> Rejected:
    reason = item.problem or "unknown problem"
    dest = None
    if item.sha256 is not None:
        try:
            dest = _copy(item, REJECTED_FOLDER, library)
        except FileNotFoundError:
            reason = f"{reason}; vanished before it could be copied"
    log.warning("rejected", path=str(item.arrival.path), reason=reason)
    return Rejected(
        **_fields(item),
        dest=dest,
        reason=reason,
        original_removed=library.remove_originals and dest is not None,
    )


def _duplicate(
    item: Decoded, earlier: str, library: Library, decision: Decision | None = None
) -> Duplicate:
    """Content the library holds already: journaled, not copied. A picture `sort --force`
    decided again says what the model says of it now."""
    reason = f"same content as {earlier}"
    decided: dict[str, Any] = {}
    if decision is not None and item.arrival.decide_again:
        reason += f"; decided again: {decision.folder} ({decision.confidence:.2f})"
        decided = {
            "label": decision.label,
            "confidence": round(decision.confidence, 6),
            "top3": decision.top3,
        }
    return Duplicate(
        **_fields(item),
        **decided,
        dest=earlier,
        reason=reason,
        # the earlier copy was just checked to be there, byte for byte
        original_removed=library.remove_originals,
    )


def _remove_originals(events: list[Placement], batch: list[Decoded], library: Library) -> None:
    by_source = {
        (str(member.arrival.root), member.arrival.relative): member
        for item in batch
        for member in (item, *item.companions)
    }
    for event in events:
        if not event.original_removed:
            continue
        item = by_source[(event.root, event.src)]
        library.remove_original(item.arrival, item.identity or item.arrival.identity)
