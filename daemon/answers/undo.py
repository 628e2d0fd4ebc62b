"""Reverse placements recorded in the journal, newest first.

A copy is removed only if it is still where the daemon put it, byte for byte; a file the
user has moved or edited since is left alone. Where the original left the inbox, it is put
back first, never over an existing file: moved back from the done folder (on_success = "move"),
or, where it is not there (on_success = "delete"), written again from the library copy.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sortbox.daemon.intake.files import Identity, identity_of, move_beneath
from sortbox.daemon.layout import fsync_dir
from sortbox.daemon.sorting.copies import give_name, same_content, write_verified_temp
from sortbox.daemon.sorting.journal import (
    Duplicate,
    Journal,
    Placement,
    Recovered,
    Rejected,
    Review,
    Sorted,
    Undone,
    read_journal,
)


@dataclass(frozen=True)
class UndoOutcome:
    event: Undoable
    undone: Undone | None  # None: nothing could be done; `message` says why
    message: str


Undoable = Placement | Recovered


def undoable(
    journal: Path, last: int | None, since: datetime | None, model: str | None = None
) -> list[Undoable]:
    """Placements not yet undone, newest first: the last `last`, those since `since`, or every
    copy model version `model` placed. A recovered copy (its decision line lost) is one too:
    undone, it goes back into the inbox."""
    placements: list[Undoable] = []
    undone: set[tuple[str, str, str | None]] = set()
    for event in read_journal(journal):
        if isinstance(event, Undone):
            undone.add((event.root, event.src, event.sha256))
        elif isinstance(event, Sorted | Review | Rejected | Duplicate | Recovered):
            placements.append(event)
    candidates = [
        e
        for e in placements
        if (e.root, e.src, e.sha256) not in undone and (e.original_removed or _made_copy(e))
    ]
    if since is not None:
        candidates = [e for e in candidates if e.ts >= since]
    if model is not None:
        candidates = [e for e in candidates if isinstance(e, Sorted | Review) and e.model == model]
    if last is not None:
        candidates = candidates[-last:] if last > 0 else []
    return list(reversed(candidates))


def placing_versions(journal: Path) -> list[str]:
    """The model versions that placed something, in the order they first did."""
    versions: dict[str, None] = {}
    for event in read_journal(journal):
        if isinstance(event, Sorted | Review) and event.model:
            versions.setdefault(event.model)
    return list(versions)


def where_now(library: Path, dest: str) -> str:
    """Where a library copy the user moved or edited is now, in words: a file manager's move
    keeps the name, so a file of that name in another class folder is the one (#32)."""
    copy = below(library, dest)
    if copy is None:
        return f"{dest} is outside the library"
    if copy.is_file():
        return f"{dest} was edited since; it is still there"
    if library.is_dir():
        # every level: with keep_subfolders a class folder has folders of its own
        for folder, subfolders, files in os.walk(library):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            moved = Path(folder) / copy.name
            if copy.name in files and moved != copy and moved.is_file():
                return f"{dest} was moved since; it is now {moved.relative_to(library)}"
    return f"{dest} is no longer in the library (deleted or renamed since)"


def _made_copy(event: Undoable) -> bool:
    return event.dest is not None and not isinstance(event, Duplicate)


def below(base: Path, relative: str) -> Path | None:
    """`base/relative` if it stays inside `base`: journal lines are data, not trusted paths."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or not relative:
        return None
    return base / candidate


class _Refused(Exception):
    """Nothing of this placement could be undone; the message says why."""


def undo_one(
    event: Undoable, library: Path, journal: Journal | None, done_folder: str = ".done"
) -> UndoOutcome:
    """`journal=None` is a dry run. `done_folder`: where on_success = "move" put originals.
    The original is put back before the copy is removed: a refusal on the way leaves both."""
    original = below(Path(event.root), event.src)
    copy = below(library, event.dest) if event.dest else None
    if original is None or (event.dest and copy is None):
        return UndoOutcome(event, None, "refused: the journal line names a path outside its folder")
    # only a copy still byte for byte what was placed is removed, or restored from
    intact = copy if copy is not None and _holds(copy, event.sha256) else None
    try:
        restored = _put_original_back(event, original, intact, journal, done_folder)
        removed = _remove_copy(event, library, intact, restored, journal)
    except _Refused as exc:
        return UndoOutcome(event, None, str(exc))
    identity = identity_of(original) if restored and journal is not None else None
    undone = _undone(event, restored, identity)
    if journal is not None:
        journal.append([undone])
    did = ("would remove", "would restore") if journal is None else ("removed", "restored")
    parts = [
        f"{did[0]} {event.dest}" if removed else "",
        f"{did[1]} {original}" if restored else "",
    ]
    return UndoOutcome(event, undone, "; ".join(p for p in parts if p))


def _holds(copy: Path, sha256: str | None) -> bool:
    return sha256 is not None and same_content(copy, sha256)


def _put_original_back(
    event: Undoable,
    original: Path,
    intact: Path | None,
    journal: Journal | None,
    done_folder: str,
) -> bool:
    """Where the original left the inbox: the very file moved back from the done folder
    (on_success = "move"), else written again from the intact library copy. True if it is
    (or, in a dry run, would be) back."""
    if not event.original_removed:
        return False
    moved = moved_original(event, done_folder)
    if moved is not None:
        _move_back(event, original, moved, journal)
        return True
    if intact is None:
        raise _Refused(f"cannot restore {original}: the library copy was moved or edited")
    if original.exists():
        raise _Refused(f"cannot restore {original}: something is already there")
    if journal is not None:
        assert event.sha256 is not None  # an intact copy was checked against it
        _restore(intact, original, event.sha256)
    return True


def _move_back(
    event: Undoable, original: Path, moved: tuple[str, Identity], journal: Journal | None
) -> None:
    """on_success = "move": the very original, moved back where it came from."""
    if original.exists() or original.is_symlink():
        raise _Refused(f"cannot restore {original}: something is already there")
    if journal is None:
        return
    try:
        back = move_beneath(Path(event.root), moved[0], moved[1], event.src, False)
    except FileExistsError:
        back, why = None, "something is already there"
    except OSError as exc:  # a link on the way (never followed), a read-only inbox
        back, why = None, exc.strerror or str(exc)
    else:
        why = "it changed in the done folder"
    if back is None:
        raise _Refused(f"cannot restore {original}: {why}")


def _remove_copy(
    event: Undoable,
    library: Path,
    intact: Path | None,
    restored: bool,
    journal: Journal | None,
) -> bool:
    """The library copy, if it is still as placed: True if it is (or would be) removed. One
    the user moved or edited is left alone; with nothing restored either, that is a refusal."""
    if not _made_copy(event):
        return False
    if intact is not None:
        if journal is not None:
            intact.unlink()
            fsync_dir(intact.parent)
        return True
    if not restored:
        assert event.dest is not None  # a copy was made
        raise _Refused(f"left alone: {where_now(library, event.dest)}")
    return False


def _undone(event: Undoable, restored: bool, identity: Identity | None) -> Undone:
    """The journal line: with the identity of the original as put back, where it was (a new
    inode and mtime when it was written again), else as the placement journaled it."""
    return Undone(
        src=event.src,
        root=event.root,
        sha256=event.sha256,
        size=identity.size if identity else event.size,
        mtime_ns=identity.mtime_ns if identity else event.mtime_ns,
        inode=identity.inode if identity else event.inode,
        dest=event.dest,
        label=event.label,
        reason=f"undo of {event.event}",
        restored=restored,
    )


def moved_original(event: Undoable, done_folder: str) -> tuple[str, Identity] | None:
    """Where on_success = "move" put this event's original, relative to its root, if it is
    still there: the file in the done folder's copy of its folder that is the same file (size,
    mtime and inode: a move keeps them), under its own name or a numbered one."""
    if event.size is None or event.mtime_ns is None or event.inode is None:
        return None
    identity = Identity(event.size, event.mtime_ns, event.inode)
    relative = below(Path(event.root), f"{done_folder}/{event.src}")
    if relative is None:
        return None
    folder = relative.parent
    names = [relative.name]
    with contextlib.suppress(OSError):
        names += sorted(entry.name for entry in os.scandir(folder) if entry.name != names[0])
    for name in names:
        found = identity_of(folder / name)
        if found == identity:
            return (folder / name).relative_to(event.root).as_posix(), identity
    return None


def _restore(copy: Path, original: Path, sha256: str) -> None:
    """Put the library copy back under the original's exact name, never overwriting."""
    original.parent.mkdir(parents=True, exist_ok=True)
    folder_fd = os.open(original.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # hidden while written: the daemon ignores it
        temporary = write_verified_temp(copy, original.parent, folder_fd, sha256)
        try:
            # exclusive: fails if a file appeared there meanwhile
            give_name(temporary, original.name, folder_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):  # renamed, where there are no links
                os.unlink(temporary, dir_fd=folder_fd)
            os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
