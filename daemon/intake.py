"""What enters the pipeline: an input file, where it sits, and its identity on disk; and the
files given to `sortbox sort`."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)  # one per file met in the inbox: keep it small
class Identity:
    """Cheap proof that a file is the one we already handled: no re-hashing at start-up."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


@dataclass(frozen=True)
class Arrival:
    path: Path  # absolute
    root: Path  # the inbox, or the folder given to `sortbox sort`
    identity: Identity
    complete_at: float = field(default=0.0, compare=False)  # monotonic time it became stable
    # files that travel with this picture: its RAW file and sidecars (see group.py)
    companions: tuple[Arrival, ...] = ()

    @property
    def relative(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def members(self) -> tuple[Arrival, ...]:
        return (self, *self.companions)


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
