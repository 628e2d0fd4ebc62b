"""The append-only JSONL journal: one line per decision, fsynced per batch.

One pydantic model per event type; `v` is the schema version. Readers skip lines they cannot
parse (a torn last line after a crash, or a newer schema) instead of failing.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError
from sortbox.daemon.layout import fsync_dir

SCHEMA_VERSION = 1
log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


Timestamp = Annotated[
    datetime,
    PlainSerializer(
        lambda ts: ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ),
]


class _Event(BaseModel):
    # the docstring under each field is its description, in docs/reference/journal-events.md
    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    v: int = SCHEMA_VERSION
    """Schema version."""
    ts: Timestamp = Field(default_factory=utc_now)
    """When it was written: UTC, RFC 3339, e.g. `2026-11-22T12:46:37.843Z`."""
    event: str  # each event type narrows this to its own literal name
    """What happened: one of the event names below."""


class _FileEvent(_Event):
    src: str
    """The input's path, relative to `root`."""
    root: str
    """The inbox, or the folder given to `sortbox sort` (the library, for `reviewed`)."""
    sha256: str | None
    """The content's SHA-256 (null if it could not be read)."""
    size: int | None
    """The input's size when it was read (with `mtime_ns` and `inode`: its identity)."""
    mtime_ns: int | None = None
    """The input's mtime when it was read, in nanoseconds."""
    inode: int | None = None
    """The input's inode when it was read."""
    dest: str | None = None
    """Where the copy is, relative to the library (null if nothing was copied)."""
    label: str | None = None
    """The model's best guess (also for a picture sent to review)."""
    confidence: float | None = None
    """The calibrated probability of `label`."""
    top3: list[tuple[str, float]] | None = None
    """The three likeliest classes with their probabilities."""
    model: str | None = None
    """The model version that decided."""
    reason: str | None = None
    """Why, where there is a why: rejected, duplicate, undone, sent to review (`spot check`,
    `0.52 < 0.60 for shirt`, `unlike any class (...)`), `with <picture>` for a RAW file or
    sidecar that went with its picture."""
    original_removed: bool = False
    """The inbox original was (or is due to be) removed or moved away: `on_success` is
    `"delete"` or `"move"`."""


class _Classified(_FileEvent):
    label: str
    """The model's best guess (also for a picture sent to review)."""
    confidence: float
    """The calibrated probability of `label`."""
    quality: dict[str, float] | None = None
    """How judgeable the picture is: `sharpness`, `brightness` (0-255), `contrast`, measured
    on what the model saw (issue #33); absent in lines written before sortbox measured it."""


class _Explained(_FileEvent):
    reason: str
    """Why, in plain words."""


class Sorted(_Classified):
    """A picture sure enough for its class, copied into `library/<label>/`."""

    event: Literal["sorted"] = "sorted"
    unknown: float | None = None
    """How unlike every known class the picture is (issue #33), where the model says."""


class Review(_Classified):
    """A picture copied into `needs_review/`: not sure enough, unlike any class, or a spot
    check."""

    event: Literal["review"] = "review"
    unknown: float | None = None
    """How unlike every known class the picture is (issue #33), where the model says."""


class Duplicate(_Explained):
    """Content the library already holds (at `dest`): nothing copied."""

    event: Literal["duplicate"] = "duplicate"


class Rejected(_Explained):
    """Not a picture sortbox sorts, or one it cannot read; kept in `rejected/` when it could
    be read, and `reason` says why."""

    event: Literal["rejected"] = "rejected"


class Undone(_Explained):
    """`sortbox undo` reversed a placement: the copy removed, the original put back where it
    had been removed."""

    event: Literal["undone"] = "undone"
    restored: bool = False
    """The original was put back (it had been removed or moved away)."""


class Recovered(_Explained):
    """A library copy whose decision line is missing from the journal (the journal was
    deleted, truncated or rotated away, or a crash came between the copy and its line),
    recorded from what the library itself shows: the folder it is in and the content its
    name promises. It is not a decision: the trainer treats it like an untouched
    auto-sorted picture (not a label), and `undo` puts it back into the inbox under its
    library name (`root`/`src`), because whether its original still exists is not known."""

    event: Literal["recovered"] = "recovered"
    original_removed: bool = True
    """Always true: whether the original still exists is not known, so undo restores it."""


class Reviewed(_FileEvent):
    """A person filed a picture from one library folder into another in sortbox's own page
    (`src` and `dest` are both in the library, `root`), or confirmed it where it is (`src`
    equals `dest`). A move in a file manager is the same label, seen by where the file is;
    this line also lets undo put it back."""

    event: Literal["reviewed"] = "reviewed"
    label: str
    """The folder it was filed into (or confirmed in)."""
    by: str = "web"
    """Where it was done."""


DAEMON_STARTED = "daemon started"  # ModelLoaded's reason when the daemon starts


class ModelLoaded(_Event):
    """The daemon started, switched to another model version, or re-derived its thresholds."""

    event: Literal["model"] = "model"
    model: str
    """The model version now in use."""
    reason: str
    """What happened, in words."""
    target_precision: float | None = None
    """The target its thresholds were derived for (config.toml's); absent in lines written
    before sortbox journaled it."""


class TrainingRun(_Event):
    """One `sortbox train` run and how it ended."""

    event: Literal["train"] = "train"
    outcome: Literal["published", "rejected", "skipped", "paused", "failed"]
    """`published`, `rejected` by the gate, `skipped` (nothing new), `paused` (out of
    budget, resumes next run) or `failed`."""
    model: str | None = None
    """The candidate's version, where one was made."""
    reason: str
    """Why, in words."""


class Imported(_Event):
    """`sortbox import`: the history before this line was made under other folders. Inputs
    journaled under an old root are the same files under the new one (matched by size and
    mtime, since a copy to another disk changes inodes)."""

    event: Literal["imported"] = "imported"
    archive: str
    """The archive imported."""
    roots: dict[str, str]
    """Old absolute folder -> new absolute folder."""


Placement = Sorted | Review | Duplicate | Rejected
Event = Annotated[
    Sorted
    | Review
    | Duplicate
    | Rejected
    | Recovered
    | Reviewed
    | Undone
    | ModelLoaded
    | TrainingRun
    | Imported,
    Field(discriminator="event"),
]
_EVENT = TypeAdapter(Event)


def to_line(event: BaseModel) -> bytes:
    try:
        return (event.model_dump_json() + "\n").encode("utf-8")
    except (PydanticSerializationError, UnicodeEncodeError):
        # A file name that is not valid UTF-8 (Python keeps its bytes as lone surrogates):
        # escape them, so the line is valid JSON and reads back to the very same name.
        return (json.dumps(event.model_dump(mode="json"), ensure_ascii=True) + "\n").encode()


class Journal:
    """Appends events; every `append` is durable (fsync) when it returns.

    Other processes (`sortbox sort`, `sortbox undo`) may append to the same file while the
    daemon runs: appends hold an exclusive flock, and `take_foreign` returns what they wrote.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._torn = False  # a failed write (disk full) may have left half a line
        self._terminate_torn_line()
        self._end = os.fstat(self._fd).st_size  # everything before this has been seen
        self._foreign: list[Event] = []
        # what happened to the journal behind our back since the owner last asked (take_loss)
        self._lost: str | None = None
        # flock excludes other processes; this excludes our own threads (placer, model switch)
        self._thread_lock = threading.Lock()

    def _terminate_torn_line(self) -> None:
        # A crash mid-write can leave a line without its newline; end it so the next
        # event starts on a line of its own (readers skip the torn one).
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with self.path.open("rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                os.write(self._fd, b"\n")
                os.fsync(self._fd)

    def append(self, events: Iterable[BaseModel]) -> None:
        payload = b"".join(to_line(event) for event in events)
        if not payload:
            return
        with self._locked():
            self._foreign.extend(self._read_since_end())
            view = memoryview(b"\n" + payload if self._torn else payload)
            before = os.fstat(self._fd).st_size
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
                os.fsync(self._fd)
            except OSError:
                # Disk full half-way: take back what was written (we hold the lock, nobody
                # wrote after us), so a retry does not journal the first events twice.
                try:
                    os.ftruncate(self._fd, before)
                except OSError:
                    self._torn = True
                raise
            finally:
                self._end = os.fstat(self._fd).st_size
            self._torn = False

    def take_foreign_and_offset(self) -> tuple[list[Event], int]:
        """`take_foreign`, and the offset up to which every line has now been either written
        by us or returned: where a reader that has recorded both may resume."""
        with self._locked():
            events = self._foreign + self._read_since_end()
            self._foreign = []
            self._end = os.fstat(self._fd).st_size
            return events, self._end

    def take_foreign(self) -> list[Event]:
        """Events other processes appended since we last looked."""
        return self.take_foreign_and_offset()[0]

    def look(self) -> bool:
        """Check the journal at our path is still ours and whole (when idle: a deletion is
        noticed at once, not at the next picture); True if it lost lines since the last
        `take_loss`."""
        with self._locked():
            pass
        return self._lost is not None

    def take_loss(self) -> str | None:
        """"replaced" or "truncated" if the journal lost lines behind our back since the last
        call (deleted, moved away, emptied): the caller records again what they held."""
        with self._thread_lock:
            lost, self._lost = self._lost, None
            return lost

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self._follow_path()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._notice_truncation()
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _notice_truncation(self) -> None:
        """Shorter than what we have seen (`: > journal.jsonl`, an emptied file after a full
        disk): the lines before are gone. Appends go on at the new end."""
        if os.fstat(self._fd).st_size < self._end:
            log.error("journal_truncated", path=str(self.path), lost_bytes=self._end)
            self._lost = "truncated"
            self._torn = False
            self._terminate_torn_line()
            self._end = 0  # whatever is there now was written by others: news to us

    def _follow_path(self) -> None:
        """Go on in the file at our path if ours was deleted or moved away (a tidy-up, a log
        rotation): lines written to a file nobody can find would be decisions made silently."""
        mine = os.fstat(self._fd)
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            return
        log.error("journal_replaced", path=str(self.path))
        self._lost = "replaced"
        replaced = self._fd
        self.path.parent.mkdir(parents=True, exist_ok=True)  # its folder may have gone too
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.close(replaced)
        fsync_dir(self.path.parent)
        self._torn = False
        self._terminate_torn_line()
        self._end = 0  # lines another process wrote there already are news to us

    def _read_since_end(self) -> list[Event]:
        size = os.fstat(self._fd).st_size
        if size <= self._end:
            return []
        with self.path.open("rb") as fh:
            fh.seek(self._end)
            return list(parse_lines(fh.read(size - self._end).splitlines()))

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_journal(path: Path) -> Iterator[Event]:
    """Every readable event, in order. Unparseable lines are counted and logged, not fatal."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        yield from parse_lines(fh, str(path))


def parse_lines(lines: Iterable[bytes], source: str = "journal") -> Iterator[Event]:
    skipped = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            yield _EVENT.validate_python(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError):
            skipped += 1
    if skipped:
        log.warning("journal_lines_skipped", source=source, count=skipped)
