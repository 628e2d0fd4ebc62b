"""Reviewing: the queue of pictures waiting in `needs_review/`, audits of auto-sorted ones, and
filing a picture into a class folder, as the web page does it (`sortbox web`, web.py).

A filing is exactly what a move in a file manager is: the file moves into `library/<class>/`
under the same name, atomically and never over another file, so the trainer takes it for a
reviewed label (its journal line said "review", and it now sits in a class folder). It is also
journaled (`reviewed`, with where it was done), so undo can put it back, and so the daemon's
index learns where the content went (a picture dropped again is a duplicate, not a new copy).

Paths never come from a request: a picture is named by the content hash in its library name,
and looked up in a listing of the library; a class by its name in the list of classes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sortbox.daemon.layout import RESERVED_FOLDERS, REVIEW_FOLDER
from sortbox.daemon.sorting.copies import LIBRARY_NAME, sha256_of
from sortbox.daemon.sorting.decide import SPOT_CHECK
from sortbox.daemon.sorting.journal import Event, Journal, Review, Reviewed, Sorted, Undone
from sortbox.daemon.sorting.library import locked

RANDOM_EVERY = 10  # one slot in ten is a random pick: measured precision stays unbiased


@dataclass(frozen=True)
class Picture:
    """One file in a library folder, with what the journal says of it."""

    folder: str
    name: str
    hash12: str
    sha256: str | None
    label: str | None  # what the model thought
    confidence: float | None
    top3: list[tuple[str, float]]
    reason: str | None
    model: str | None
    placed: datetime | None
    pick: str = ""  # "spot check" (the daemon's) or "random pick" (the queue's); "" otherwise

    @property
    def relative(self) -> str:
        return f"{self.folder}/{self.name}"

    @property
    def margin(self) -> float:
        """Top-1 minus top-2 probability: small means a label teaches the model most."""
        if len(self.top3) >= 2:
            return self.top3[0][1] - self.top3[1][1]
        return self.top3[0][1] if self.top3 else 1.0


@dataclass
class Decisions:
    """The latest decision for each content, by its 12-hex hash; read from the journal."""

    by_hash: dict[str, Sorted | Review] = field(default_factory=dict)

    @classmethod
    def of(cls, events: list[Event]) -> Decisions:
        decisions = cls()
        for event in events:
            if isinstance(event, Sorted | Review) and event.sha256:
                decisions.by_hash[event.sha256[:12]] = event
            elif isinstance(event, Undone) and event.sha256:
                decisions.by_hash.pop(event.sha256[:12], None)
        return decisions


def listing(library: Path, folder: str) -> dict[str, str]:
    """12-hex hash -> file name, for the regular files with a sortbox name in one folder of
    the library. A link (or anything but a file) is not listed: it is never served or moved."""
    found: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        folder_fd = _open_folder(library, folder)
        try:
            for entry in os.scandir(folder_fd):
                match = LIBRARY_NAME.match(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    found.setdefault(match["hash"], entry.name)
        finally:
            os.close(folder_fd)
    return found


def pictures(library: Path, folder: str, decisions: Decisions) -> list[Picture]:
    pictures = []
    for hash12, name in listing(library, folder).items():
        event = decisions.by_hash.get(hash12)
        pictures.append(
            Picture(
                folder=folder,
                name=name,
                hash12=hash12,
                sha256=event.sha256 if event else None,
                label=event.label if event else None,
                confidence=event.confidence if event else None,
                top3=[(str(c), float(p)) for c, p in (event.top3 or [])] if event else [],
                reason=event.reason if event else None,
                model=event.model if event else None,
                placed=event.ts if event else None,
                pick=SPOT_CHECK if event is not None and event.reason == SPOT_CHECK else "",
            )
        )
    return pictures


def review_queue(library: Path, decisions: Decisions, seed: str) -> list[Picture]:
    """`needs_review/` with the spot checks first, then ordered by how much a label teaches
    the model (smallest margin first), with every tenth slot a random pick (marked), so what
    is reviewed is not only the hard cases. `seed` keeps the order still between two page loads.

    Spot checks measure precision only as a random sample (feedback.py): sorted by margin,
    the least confident were filed first and the measure read low wherever a reviewer
    stopped. In the order of their content hash, which their confidence has no part in,
    whatever prefix is filed is a random sample."""
    everything = pictures(library, REVIEW_FOLDER, decisions)
    spot_checks = sorted((p for p in everything if p.pick == SPOT_CHECK), key=lambda p: p.hash12)
    waiting = sorted(
        (p for p in everything if p.pick != SPOT_CHECK), key=lambda p: (p.margin, p.name)
    )
    rng = random.Random(seed)
    ordered: list[Picture] = list(spot_checks)
    while waiting:
        if (len(ordered) - len(spot_checks)) % RANDOM_EVERY == RANDOM_EVERY - 1:
            chosen = waiting.pop(rng.randrange(len(waiting)))
            if not chosen.pick:
                chosen = _picked(chosen, "random pick")
        else:
            chosen = waiting.pop(0)
        ordered.append(chosen)
    return ordered


def audit_queue(library: Path, folder: str, decisions: Decisions) -> list[Picture]:
    """Auto-sorted pictures still in one class folder, least confident first: where the
    mistakes that were filed are most likely (cleanlab's idea)."""
    auto = [
        p
        for p in pictures(library, folder, decisions)
        if isinstance(decisions.by_hash.get(p.hash12), Sorted)
        and decisions.by_hash[p.hash12].dest == p.relative
    ]
    return sorted(auto, key=lambda p: (p.confidence if p.confidence is not None else 1.0, p.name))


def _picked(picture: Picture, pick: str) -> Picture:
    return Picture(**{**picture.__dict__, "pick": pick})


class FilingError(Exception):
    """Why a filing did not happen, in words for the page; `status` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def class_folders(library: Path, classes: list[str]) -> list[str]:
    """Where a picture may be filed: the model's classes, then class folders the user made."""
    made = []
    with contextlib.suppress(OSError):
        made = sorted(
            entry.name
            for entry in os.scandir(library)
            if entry.is_dir(follow_symlinks=False)
            and not entry.name.startswith(".")
            and entry.name not in RESERVED_FOLDERS
            and entry.name not in classes
        )
    return [*classes, *made]


def file_picture(
    library: Path,
    journal: Path,
    hash12: str,
    from_folder: str,
    to_folder: str,
    allowed: list[str],
    where: str = "web",
) -> Reviewed:
    """Move the picture with this hash from one library folder to another, atomically, never
    over another file; journal it. Under the library's placement lock, so a running daemon or
    `sortbox sort` never takes the moved copy for a missing one."""
    folders = [*allowed, REVIEW_FOLDER]  # back to review: an undo
    if to_folder not in folders or from_folder not in folders:
        raise FilingError(f"no class folder {to_folder!r}", 404)
    if to_folder == from_folder:
        raise FilingError(f"already in {to_folder}", 409)
    with locked(library):
        name = listing(library, from_folder).get(hash12)
        if name is None:
            # filed in another tab, moved in the file manager, or deleted since it was listed
            raise FilingError("this picture is not there any more (filed or moved elsewhere)", 409)
        _move(library, from_folder, to_folder, name)
        with Journal(journal) as record:
            sha256 = _sha256_of(library / to_folder / name, hash12)
            event = Reviewed(
                src=f"{from_folder}/{name}",
                root=str(library),
                sha256=sha256,
                size=None,
                dest=f"{to_folder}/{name}",
                label=to_folder,
                reason=f"filed as {to_folder} in the {where} page",
                by=where,
            )
            record.append([event])
    return event


def confirm_picture(
    library: Path, journal: Path, hash12: str, folder: str, allowed: list[str], where: str = "web"
) -> Reviewed:
    """A person looked at an auto-sorted picture in an audit and found it right where it is:
    journaled as `reviewed` with the same folder before and after: a label for the trainer,
    counted in `status` but not a measure of precision (the audit is no random sample,
    feedback.py); the file is not touched."""
    if folder not in allowed:
        raise FilingError(f"no class folder {folder!r}", 404)
    with locked(library):
        name = listing(library, folder).get(hash12)
        if name is None:
            raise FilingError("this picture is not there any more (filed or moved elsewhere)", 409)
        event = Reviewed(
            src=f"{folder}/{name}",
            root=str(library),
            sha256=_sha256_of(library / folder / name, hash12),
            size=None,
            dest=f"{folder}/{name}",
            label=folder,
            reason=f"confirmed as {folder} in the {where} page",
            by=where,
        )
        with Journal(journal) as record:
            record.append([event])
    return event


def _sha256_of(path: Path, hash12: str) -> str | None:
    try:
        digest = sha256_of(path)
    except OSError:
        return None
    return digest if digest.startswith(hash12) else None


def _open_folder(library: Path, folder: str) -> int:
    """A folder of the library, never through a link."""
    if "/" in folder or folder in ("", ".", ".."):
        raise FileNotFoundError(folder)
    library_fd = os.open(library, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(
            folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=library_fd
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(exc.errno, f"{folder} is not a folder") from None
        raise
    finally:
        os.close(library_fd)


def _move(library: Path, from_folder: str, to_folder: str, name: str) -> None:
    """`from_folder/name` -> `to_folder/name`: a hard link, then the old name removed, so the
    picture is under one name or both, never none, and never over another file. The same
    content already there (the same hash in the same name) is not a conflict."""
    library_fd = os.open(library, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(to_folder, dir_fd=library_fd)
    finally:
        os.close(library_fd)
    source_fd = _open_folder(library, from_folder)
    target_fd = -1
    try:
        target_fd = _open_folder(library, to_folder)
        if not stat.S_ISREG(os.stat(name, dir_fd=source_fd, follow_symlinks=False).st_mode):
            raise FilingError("not a picture file", 404)
        try:
            os.link(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        except FileExistsError:
            if sha256_of(name, source_fd) != sha256_of(name, target_fd):
                raise FilingError(f"{to_folder} already has another {name}", 409) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            _rename_if_free(name, source_fd, target_fd)  # no hard links (exFAT)
            return
        os.fsync(target_fd)  # the new name is durable before the old one goes
        os.unlink(name, dir_fd=source_fd)
        os.fsync(source_fd)
    finally:
        if target_fd >= 0:
            os.close(target_fd)
        os.close(source_fd)


def _rename_if_free(name: str, source_fd: int, target_fd: int) -> None:
    try:
        os.stat(name, dir_fd=target_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        os.fsync(target_fd)
        os.fsync(source_fd)
        return
    raise FilingError(f"the class folder already has a file named {name}", 409)


def backlog_age(queue: list[Picture], now: datetime | None = None) -> float | None:
    """Hours the oldest picture has waited in review; None when nothing (known) waits."""
    placed = [p.placed for p in queue if p.placed is not None]
    if not placed:
        return None
    return ((now or datetime.now(UTC)) - min(placed)).total_seconds() / 3600
