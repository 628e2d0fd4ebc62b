"""What enters the pipeline: an input file, where it sits, and its identity on disk; and the
files given to `sortbox sort`."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass(frozen=True, slots=True)  # one per file met in the inbox: keep it small
class Identity:
    """Cheap proof that a file is the one we already handled: no re-hashing at start-up."""

    size: int
    mtime_ns: int
    inode: int
    # Not part of "the same file" for the done-index (the journal does not keep them), but
    # checked before and after an input is read: a file swapped for another (device) or
    # rewritten in place with its mtime set back (ctime, which no writer can set) since
    # it was admitted is not the file that was admitted.
    ctime_ns: int = field(default=0, compare=False)
    device: int = field(default=0, compare=False)

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            ctime_ns=st.st_ctime_ns,
            device=st.st_dev,
        )

    def unchanged_in(self, st: os.stat_result) -> bool:
        """`st` (an fstat of the open file) is this very file, as it was when this was taken."""
        now = Identity.of(st)
        return now == self and (now.ctime_ns, now.device) == (self.ctime_ns, self.device)


@dataclass(frozen=True)
class Arrival:
    path: Path  # absolute
    root: Path  # the inbox, or the folder given to `sortbox sort`
    identity: Identity
    complete_at: float = field(default=0.0, compare=False)  # monotonic time it became stable
    # files that travel with this picture: its RAW file and sidecars (see group.py)
    companions: tuple[Arrival, ...] = ()
    # `sortbox sort --force`: decided again though the journal has it done (#32)
    decide_again: bool = field(default=False, compare=False)
    # It may still grow (the watched inbox: not renamed into place, not back unchanged from a
    # wait): if it cannot be decoded it waits this long for the rest of it rather than being
    # rejected (`unfinished_wait_s`). 0: rejected at once (`sort`, `explain`, a file renamed in).
    rest_wait_s: float = field(default=0.0, compare=False)

    @property
    def relative(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def members(self) -> tuple[Arrival, ...]:
        return (self, *self.companions)


class SourceChanged(Exception):
    """The input changed between reading and copying it; it will be picked up again."""


class OutsideFolder(OSError):
    """A folder on the way to an input is a symbolic link now: whatever it leads to is not in
    the folder being sorted, and is never opened."""


def open_input(path: Path | str, dir_fd: int | None = None) -> int:
    """Open a file for reading without following a symlink and without blocking on FIFOs;
    `path` relative to the open folder `dir_fd` if given."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    return os.open(path, flags, dir_fd=dir_fd)


def open_beneath(root: Path, relative: str) -> int:
    """Open the input `root/relative` for reading, one folder at a time from `root`, never
    through a symbolic link: a folder swapped for a link after its file was admitted leads
    nowhere (OutsideFolder), and nothing outside `root` is ever read (issue 34).

    `root` itself (the inbox, or a folder named to `sortbox sort`) may be a link its admin
    made; below it, nothing is followed."""
    folder_fd, name = _folder_beneath(root, relative)
    try:
        return open_input(name, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)


def remove_beneath(root: Path, relative: str, identity: Identity) -> bool:
    """Delete the input `root/relative` if it is still the file `identity` describes, reaching
    it as `open_beneath` does: never through a link. False if it is not (left alone)."""
    folder_fd, name = _folder_beneath(root, relative)
    try:
        st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        if Identity.of(st) != identity:
            return False
        os.unlink(name, dir_fd=folder_fd)
        return True
    finally:
        os.close(folder_fd)


def move_beneath(
    root: Path, relative: str, identity: Identity, target: str, numbered: bool = True
) -> str | None:
    """Move the input `root/relative`, if it is still the file `identity` describes, to
    `root/target` (its folders made as needed), reaching both as `open_beneath` does: never
    through a link. Nothing is overwritten: a target name that is taken becomes `x (2).jpg`,
    `x (3).jpg` ... (`numbered`), or FileExistsError. Returns where the file is now, relative
    to `root`; None if it is not that file (left alone).

    A hard link to the new name, made durable, then the old name removed: a crash between the
    two leaves both names on the one file, and moving it again finds its own link and only
    removes the old name. Where there are no hard links (exFAT) the name is checked, then the
    file renamed, as place.give_name does."""
    folder_fd, name = _folder_beneath(root, relative)
    try:
        st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        if Identity.of(st) != identity:
            return None
        wanted = PurePosixPath(target)
        target_fd = _folder_made_beneath(root, wanted.parent)
        try:
            for candidate in _free_names(wanted.name, numbered):
                try:
                    os.link(
                        name,
                        candidate,
                        src_dir_fd=folder_fd,
                        dst_dir_fd=target_fd,
                        follow_symlinks=False,
                    )
                except FileExistsError:
                    there = os.stat(candidate, dir_fd=target_fd, follow_symlinks=False)
                    if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
                        continue  # another file: the next name
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    try:
                        os.stat(candidate, dir_fd=target_fd, follow_symlinks=False)
                        continue
                    except FileNotFoundError:
                        os.rename(name, candidate, src_dir_fd=folder_fd, dst_dir_fd=target_fd)
                        os.fsync(target_fd)
                        return (wanted.parent / candidate).as_posix()
                os.fsync(target_fd)  # the new name is durable before the old one goes
                os.unlink(name, dir_fd=folder_fd)
                return (wanted.parent / candidate).as_posix()
            raise FileExistsError(errno.EEXIST, f"{target} is taken", target)
        finally:
            os.close(target_fd)
    finally:
        os.close(folder_fd)


def _free_names(name: str, numbered: bool) -> Iterator[str]:
    """`name`, then (if `numbered`) `stem (2).ext`, `stem (3).ext` ..., as file managers do."""
    yield name
    if not numbered:
        return
    stem, dot, extension = name.rpartition(".")
    if not stem:
        stem, dot, extension = name, "", ""
    for n in range(2, 10_000):
        yield f"{stem} ({n}){dot}{extension}"


def enter(folder_fd: int, name: str, make: bool = False) -> int:
    """The folder `name` in the open folder `folder_fd`, made first if `make` and missing,
    opened without following a link: ELOOP or ENOTDIR when a link or a file is there."""
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=folder_fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, dir_fd=folder_fd)


def _folder_made_beneath(root: Path, folder: PurePosixPath) -> int:
    """The open folder `root/folder`, each folder on the way made if missing and entered
    without following a link. A link or a file in the way is an error that says so."""
    if folder.is_absolute() or ".." in folder.parts:
        raise OutsideFolder(errno.EXDEV, f"{folder} is not a path inside {root}")
    folder_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in folder.parts:
            try:
                below = enter(folder_fd, part, make=True)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotADirectoryError(
                        exc.errno, f"{root / folder} has a link or a file in the way"
                    ) from None
                raise
            os.close(folder_fd)
            folder_fd = below
    except BaseException:
        os.close(folder_fd)
        raise
    return folder_fd


def _folder_beneath(root: Path, relative: str) -> tuple[int, str]:
    """The open folder holding `root/relative`, reached without following a link below
    `root`, and the file's name in it."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise OutsideFolder(errno.EXDEV, f"{relative} is not a path inside {root}")
    folder_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            below = enter(folder_fd, part)
            os.close(folder_fd)
            folder_fd = below
    except OSError as exc:
        os.close(folder_fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            why = f"a folder on the way to {relative} is not a folder any more"
            raise OutsideFolder(exc.errno, why) from None
        raise
    return folder_fd, parts[-1]


def open_admitted(arrival: Arrival) -> int:
    """`open_beneath` for an arrival."""
    return open_beneath(arrival.root, arrival.relative)


def is_ignored(relative: str, patterns: list[str]) -> bool:
    """True if any component of the path matches an ignore pattern (so `@eaDir/x.jpg` too)."""
    return any(
        fnmatch.fnmatchcase(part, pattern) for part in relative.split("/") for pattern in patterns
    )


def inside(path: Path, root: Path) -> bool:
    """The real location of `path`'s folder is inside `root`: no symlinked folder leads out."""
    try:
        return Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(root))
    except OSError:
        return False


def walk_files(root: Path, patterns: list[str]) -> Iterator[Path]:
    """Every non-ignored non-folder entry below `root`, in no particular order; symlinked
    folders are neither entered nor listed. It streams: the daemon rescans an inbox of
    100,000 files every few minutes, and a list of every name each time left the process
    bigger after each rescan (benchmarks/bench_daemon.py, scale)."""
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_ignored(entry.name, patterns):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif not _links_to_folder(entry):
                        yield Path(entry.path)
        except OSError:  # gone or unreadable since it was listed: as os.walk, pass over it
            continue


def _links_to_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:  # a link to itself (ELOOP), or into a folder we may not read: a file to us
        return False


def identity_of(path: Path) -> Identity | None:
    """lstat-based identity of a regular file or symlink; None if it is gone or a folder."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return Identity.of(st)


def collect(paths: list[Path], library: Path, ignore: list[str]) -> list[Arrival]:
    """The files given to `sortbox sort` (folders walked), as arrivals. Raises ValueError
    with a message for the user when a path is inside the library or does not exist."""
    arrivals = []
    for given in paths:
        path = given.absolute()
        if path.is_symlink():
            # named by the user, so followed (as `find -H` does); links inside never are
            path = path.resolve()
        if path.is_relative_to(library) or path.resolve().is_relative_to(library.resolve()):
            raise ValueError(f"{given} is inside the library; sortbox sorts into it, not from it")
        if path.is_dir():
            files: Iterator[Path] = walk_files(path, ignore)
            root = path
        elif path.exists():
            files, root = iter([path]), path.parent
        else:
            raise ValueError(f"{given}: no such file or folder")
        for file in sorted(files):  # a camera's card in name order
            identity = identity_of(file)
            if identity is not None:
                arrivals.append(Arrival(file, root, identity))
    return arrivals


def refreshed(arrival: Arrival) -> Arrival | None:
    """The arrival (and its companions) with the identities its files have now, to be tried
    again; None if the picture is gone or no longer inside its folder."""
    identity = identity_of(arrival.path)
    if identity is None or not inside(arrival.path, arrival.root):
        return None
    companions = []
    for companion in arrival.companions:
        now = identity_of(companion.path)
        if now is not None and inside(companion.path, companion.root):
            companions.append(dataclasses.replace(companion, identity=now))
    return dataclasses.replace(arrival, identity=identity, companions=tuple(companions))
